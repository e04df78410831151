"""What comes after training: the model registry, on-demand evaluation, extraction into Qdrant,
search, metrics history and model comparison."""
