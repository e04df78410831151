"""A run's images: manifest, download, filter, split; stored with the run.

The first attempt builds the manifest from the catalog, downloads it, drops broken images,
applies the min-samples filter and splits by label, then stores the result in `run_images`.
Every later attempt (a resume, a retry) reuses the stored manifest and split, so it trains and
evaluates on exactly the same images even if the catalog changed meanwhile.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from db import repository
from services.trainer.config import RunConfig
from services.trainer.data.download import DownloadConfig, LocalImage, download_images
from services.trainer.data.manifest import ImageRecord, build_manifest
from services.trainer.data.split import (SPLITS, check_minimums, check_train_labels, split_for_run,
                                         summarize_splits)

DbCall = Callable[[Callable], Any]  # runs `fn(conn)` on the trainer's connection


@dataclass
class PreparedData:
    splits: dict[str, list[LocalImage]]
    summary: dict[str, Any]


def _record(row) -> ImageRecord:
    return ImageRecord(
        product_id=row["product_id"], url=row["url"], domain=row["domain"],
        frame_index=row["frame_index"], category=row["category"], brand=row["brand"],
        label=row["label"], source_key=row["source_key"],
    )


def _catalog_manifest(db: DbCall, config: RunConfig) -> list[ImageRecord]:
    source = config.data_source
    products = db(lambda c: repository.select_products(
        c, source.type, dataset_id=source.dataset_id, product_ids=source.product_ids))
    images = db(lambda c: repository.product_images_for(c, [p["id"] for p in products]))
    return build_manifest([dict(p) for p in products], [dict(i) for i in images], config)


def prepare_data(db: DbCall, lease: repository.Lease, config: RunConfig, *, storage,
                 cache_dir: Path, download: DownloadConfig | None = None) -> PreparedData:
    stored = db(lambda c: repository.trainer_run_images(c, lease))
    if stored:
        split_of = {(r["url"], r["product_id"]): r["split"] for r in stored}
        records = [_record(r) for r in stored]
    else:
        records = _catalog_manifest(db, config)

    result = download_images(records, download or DownloadConfig(cache_dir=cache_dir),
                             storage=storage)
    usable = [image.record for image in result.images]
    if stored:
        splits = {name: [r for r in usable if split_of[(r.url, r.product_id)] == name]
                  for name in SPLITS}
        check_minimums(usable)
    else:
        splits = split_for_run(usable, config)
        rows = [{"split": name, **vars(r)} for name in SPLITS for r in splits[name]]
        db(lambda c: repository.trainer_store_run_images(c, lease, rows))

    check_train_labels(config, len({r.label for r in splits["train"]}),
                       "after downloading, broken images dropped")
    local = {image.record: image for image in result.images}
    summary = summarize_splits(splits)
    summary["download"] = result.report.to_dict()
    summary["manifest_images"] = len(records)
    summary["reused_stored_manifest"] = bool(stored)
    return PreparedData({name: [local[r] for r in splits[name]] for name in SPLITS}, summary)
