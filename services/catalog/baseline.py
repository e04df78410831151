"""Colour-histogram embeddings: the retrieval baseline a trained model has to beat.

In the generated catalog all brands of a category share its palette, so colour alone confuses
the ~12 products of a category; a trained model should do clearly better than this on Recall@1.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image


def colour_histogram_embeddings(
    images: Iterable[Image.Image | np.ndarray], bins: int = 8
) -> np.ndarray:
    """One L2-normalised joint RGB histogram (`bins`**3 values) per image, float32 (N, bins**3).

    Images are PIL images (any mode, converted to RGB) or HxWx3 uint8 arrays.
    """
    if not 1 <= bins <= 256 or 256 % bins:
        raise ValueError(f"bins must divide 256, got {bins}")
    width = 256 // bins
    rows = []
    for image in images:
        rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        q = rgb.reshape(-1, 3).astype(np.int64) // width
        codes = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
        rows.append(np.bincount(codes, minlength=bins**3).astype(np.float32))
    if not rows:
        return np.zeros((0, bins**3), np.float32)
    hist = np.stack(rows)
    return hist / np.maximum(np.linalg.norm(hist, axis=1, keepdims=True), 1e-12)


def colour_baseline_metrics(
    paths: Iterable[str | Path],
    labels: Iterable[str],
    k_values=(1, 5, 10),
    sources: Iterable[str] | None = None,
) -> dict:
    """Retrieval metrics of the colour-histogram baseline, leave-one-out among the given images.

    Pass the images' `sources` (services.trainer.data.dataset.image_source) to use the same
    protocol as the trained model's test evaluation: an item of the query's own source (a copy
    of the same photo, a frame of the same turntable video) is never retrieved."""
    import torch

    from services.trainer.metrics import evaluate_embeddings

    with_images = [Image.open(p) for p in paths]
    embeddings = torch.from_numpy(colour_histogram_embeddings(with_images))
    result = evaluate_embeddings(embeddings, list(labels), k_values=k_values,
                                 sources=None if sources is None else list(sources),
                                 with_cross_domain=False, with_per_category=False, hard_cases=0)
    return {k.replace("@", "_at_"): v for k, v in result["overall"].items()}
