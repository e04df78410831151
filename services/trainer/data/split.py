"""Split records by label into train / val / test, and check a run has enough data.

Splitting by label (not by image) keeps every label in exactly one split, so validation and
test products are unseen during training: open-set retrieval, the way the model is used.

Decisions:
- Sizes are counted in labels, by largest remainder: each split gets the floor of its quota
  `n_labels * ratio`, and the labels left over go to the largest fractional parts (ties: train,
  val, test). So each size is within 1 of its quota.
- With at least 3 labels no split whose ratio is positive is left empty: an empty split takes
  one label from the largest split. Only then can a size move further than 1 from its quota
  (with few labels, e.g. 4 categories at 70/15/15 give 2/1/1 instead of 3/1/0).
- Labels are sorted before a seeded shuffle, and records come out in a canonical order, so
  the result depends on the seed and the records only, never on their input order.
- The min-samples filter runs before the split (`split_for_run` does filter, check, split in
  that order): a label with too few images is dropped from every split, and the minimums
  count what is left.
"""
from __future__ import annotations

import math
import random
import statistics
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Iterable, Sequence

from services.common.errors import InsufficientImages, InsufficientLabels, InsufficientProducts

if TYPE_CHECKING:
    from services.trainer.config import RunConfig
    from services.trainer.data.manifest import ImageRecord

SPLITS = ("train", "val", "test")


def filter_min_samples(records: Iterable[ImageRecord], min_samples: int) -> list[ImageRecord]:
    """Drop every record whose label has fewer than `min_samples` records."""
    records = list(records)
    counts = Counter(r.label for r in records)
    return [r for r in records if counts[r.label] >= min_samples]


def split_sizes(n_labels: int, ratios: Sequence[float]) -> list[int]:
    """Labels per split: largest remainder, then no empty split once there are enough labels."""
    total = sum(ratios)
    quotas = [n_labels * r / total for r in ratios]
    sizes = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(ratios)), key=lambda i: (sizes[i] - quotas[i], i))
    for i in by_remainder[: n_labels - sum(sizes)]:
        sizes[i] += 1
    if n_labels >= len(ratios):
        for i, ratio in enumerate(ratios):
            if ratio > 0 and sizes[i] == 0:
                donor = max(range(len(sizes)), key=lambda j: (sizes[j], -j))
                sizes[donor] -= 1
                sizes[i] += 1
    return sizes


def _record_order(r: ImageRecord) -> tuple:
    return (r.label, r.product_id, r.domain, -1 if r.frame_index is None else r.frame_index, r.url)


def split_by_label(
    records: Iterable[ImageRecord],
    *,
    train_ratio: float = 0.70,
    val_ratio: float = 0.15,
    test_ratio: float = 0.15,
    seed: int = 42,
) -> dict[str, list[ImageRecord]]:
    """{"train": [...], "val": [...], "test": [...]}; no label is in two splits."""
    by_label: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in records:
        by_label[r.label].append(r)
    labels = sorted(by_label)
    random.Random(seed).shuffle(labels)
    sizes = split_sizes(len(labels), (train_ratio, val_ratio, test_ratio))

    splits: dict[str, list[ImageRecord]] = {}
    start = 0
    for name, size in zip(SPLITS, sizes):
        chosen = labels[start : start + size]
        start += size
        splits[name] = sorted((r for label in chosen for r in by_label[label]), key=_record_order)
    return splits


MIN_PRODUCTS = 10
MIN_IMAGES = 100


def check_counts(n_products: int, n_images: int, min_products: int = MIN_PRODUCTS,
                 min_images: int = MIN_IMAGES) -> None:
    """Raise InsufficientProducts / InsufficientImages when a run has too little to train on.

    Used twice: by the dispatcher's preflight on the manifest's promise, and by the trainer on
    the images that really downloaded."""
    details = {
        "products": n_products,
        "images": n_images,
        "min_products": min_products,
        "min_images": min_images,
    }
    if n_products < min_products:
        raise InsufficientProducts(
            f"only {n_products} products have usable images, at least {min_products} are "
            "needed: choose a data source with more products, add images, include more "
            "image types or lower label_config.min_samples_per_class",
            details=details,
        )
    if n_images < min_images:
        raise InsufficientImages(
            f"only {n_images} usable images across {n_products} products, at least "
            f"{min_images} are needed: include more image types or frames (frame_selection "
            "'interval' or 'all', a higher max_frames_per_type), or add images",
            details=details,
        )


def check_minimums(
    records: Sequence[ImageRecord], min_products: int = MIN_PRODUCTS, min_images: int = MIN_IMAGES
) -> None:
    """check_counts over records: distinct products and images."""
    check_counts(len({r.product_id for r in records}), len(records), min_products, min_images)


def check_train_labels(config: RunConfig, train_labels: int, context: str) -> None:
    """The P-K sampler draws p distinct labels per batch from the training split; fewer is a
    data problem with its own code (checked by preflight on counts, by the trainer on images)."""
    if config.sampler.type != "pk" or train_labels >= config.sampler.p:
        return
    raise InsufficientLabels(
        f"the training split has {train_labels} labels ({context}) but sampler.p is "
        f"{config.sampler.p}: lower sampler.p (and training.batch_size) or add products",
        details={"train_labels": train_labels, "p": config.sampler.p})


def split_for_run(
    records: Iterable[ImageRecord],
    config: RunConfig,
    min_products: int = MIN_PRODUCTS,
    min_images: int = MIN_IMAGES,
) -> dict[str, list[ImageRecord]]:
    """The trainer's one call: min-samples filter, minimums check, then the split."""
    kept = filter_min_samples(records, config.label_config.min_samples_per_class)
    check_minimums(kept, min_products, min_images)
    split = config.split
    return split_by_label(
        kept,
        train_ratio=split.train_ratio,
        val_ratio=split.val_ratio,
        test_ratio=split.test_ratio,
        seed=split.seed,
    )


def summarize_splits(splits: dict[str, Sequence[ImageRecord]]) -> dict:
    """Counts for the data.prepared event: per split images, products, labels, domains."""
    summary: dict = {"splits": {}, "domains": {}}
    totals: Counter = Counter()
    for name, records in splits.items():
        per_label = Counter(r.label for r in records)
        domains = Counter(r.domain for r in records)
        totals.update(domains)
        summary["splits"][name] = {
            "images": len(records),
            "products": len({r.product_id for r in records}),
            "labels": len(per_label),
            "images_per_domain": dict(sorted(domains.items())),
            "images_per_label": {
                "min": min(per_label.values(), default=0),
                "median": statistics.median(per_label.values()) if per_label else 0,
                "max": max(per_label.values(), default=0),
            },
        }
    summary["domains"] = dict(sorted(totals.items()))
    summary["images"] = sum(totals.values())
    return summary
