"""A generated product catalog (packages, turntable frames, shelf photos) and its baselines."""
