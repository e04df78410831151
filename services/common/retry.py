"""Retry timing shared by every client that retries (downloads, the event writer)."""
from __future__ import annotations


def backoff_delay(retry: int, base: float, cap: float, jitter: float) -> float:
    """Seconds before retry number `retry` (0 = the first retry), with "equal jitter".

    The ceiling doubles each retry, ``min(cap, base * 2**retry)``; the wait is half the ceiling
    plus `jitter` (a number in [0, 1]) times the other half, so parallel workers that failed
    together spread out but never retry at once.
    """
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be in [0, 1], got {jitter}")
    ceiling = min(cap, base * 2.0**retry)
    return ceiling / 2 + jitter * ceiling / 2
