"""The one evaluation of a checkpoint's model on a run's split, shared by the end of a run (the
trainer's eval.completed) and `skutrain evaluate` (any checkpoint, any time).

The images are the run's stored split (run_images), embedded with `embed_images` (the same
function extraction uses, so an image gets the same embedding in both) and scored by
services.trainer.metrics; the document is in stored form (recall_at_1, not recall@1).
"""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from db import repository
from services.common.errors import NotFound, Refused
from services.common.storage import ObjectRef, Storage
from services.trainer import checkpoints
from services.trainer import metrics as M
from services.trainer.config import RunConfig, parse_config
from services.trainer.data.dataset import ProductImageDataset
from services.trainer.data.download import DownloadConfig, LocalImage, download_images
from services.trainer.data.manifest import ImageRecord
from services.trainer.engine import embed_dataset, resolve_amp
from services.trainer.model import EmbeddingModel

SPLITS = ("test", "val")


def stored_names(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Metric names as stored (recall@1 -> recall_at_1, map@r -> map_at_r)."""
    return None if metrics is None else {k.replace("@", "_at_"): v for k, v in metrics.items()}


def evaluation_payload(result: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics.evaluate_embeddings result as the eval.completed / evaluations document."""
    cross = result.get("cross_domain") or {}
    pairs = result.get("domain_pairs")
    per_category = result.get("per_category")
    return {
        "overall": stored_names(result["overall"]),
        "real_to_synthetic": stored_names(cross.get("real_to_synth")),
        "synthetic_to_real": stored_names(cross.get("synth_to_real")),
        "domain_pairs": pairs and {p: stored_names(v) for p, v in pairs.items()},
        "per_category": per_category and {c: stored_names(v) for c, v in per_category.items()},
        "hard_cases": {key: result.get(key)
                       for key in ("worst_products", "most_confused_pairs", "worst_queries")},
    }


def embed_images(model: EmbeddingModel, images: Sequence[LocalImage], config: RunConfig, *,
                 device: torch.device) -> torch.Tensor:
    """float32 embeddings (on `device`) of images prepared as the run's evaluation prepares
    them (eval transform, the run's image size and AMP mode)."""
    dataset = ProductImageDataset(images, config.training.image_size, train=False)
    t = config.training
    return embed_dataset(model.to(device), dataset, batch_size=t.batch_size, device=device,
                         amp=resolve_amp(t.amp, device), num_workers=t.num_workers)


def evaluate_images(model: EmbeddingModel, images: Sequence[LocalImage], config: RunConfig, *,
                    device: torch.device, products: Mapping[int, Mapping[str, Any]]
                    ) -> dict[str, Any]:
    """Leave-one-out evaluation of `images` (one split) with hard cases that name products:
    `products` maps product id -> a row with product_name (and category)."""
    dataset = ProductImageDataset(images, config.training.image_size, train=False)
    embeddings = embed_images(model, images, config, device=device)
    records = [image.record for image in images]
    items = [{"product_id": r.product_id, "product_name": _name(products, r.product_id),
              "category": r.category, "domain": r.domain, "url": r.url} for r in records]
    label_info: dict[str, dict[str, Any]] = {}
    by_product = config.label_config.label_field == "product_id"
    for r in records:
        label_info.setdefault(r.label, {
            "name": _name(products, r.product_id) if by_product else r.label,
            "category": r.category if by_product or config.label_config.label_field == "category"
            else None,
        })
    ev = config.evaluation
    result = M.evaluate_embeddings(
        embeddings, [r.label for r in records], k_values=ev.k_values, domains=dataset.domains,
        categories=dataset.categories, sources=dataset.sources, items=items,
        label_info=label_info, with_cross_domain=ev.cross_domain,
        with_per_category=ev.per_category, hard_cases=ev.hard_cases,
    )
    return evaluation_payload(result)


def _name(products: Mapping[int, Mapping[str, Any]], product_id: int) -> str | None:
    row = products.get(product_id)
    return None if row is None else row["product_name"]


def stored_records(rows: Sequence[Mapping[str, Any]], split: str) -> list[ImageRecord]:
    """A run's stored manifest rows of one split as ImageRecords."""
    names = [f.name for f in dataclasses.fields(ImageRecord)]
    return [ImageRecord(**{n: row[n] for n in names}) for row in rows if row["split"] == split]


async def evaluate_checkpoint(conn, checkpoint_id: int, *, split: str = "test",
                              storage: Storage, cache_dir: Path,
                              device: torch.device | None = None) -> tuple[int, dict[str, Any]]:
    """Evaluate any checkpoint on its run's stored `split` and store the result (an on-demand
    evaluation, announced on the run's events). Returns (evaluation id, document)."""
    if split not in SPLITS:
        raise Refused(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    row = await repository.registry_checkpoint(conn, checkpoint_id)
    if row is None:
        raise NotFound(f"checkpoint {checkpoint_id} does not exist; `skutrain models list` and "
                       "the run's checkpoints name the existing ones")
    config = parse_config(row["config"])
    records = stored_records(await repository.run_images(conn, row["run_id"]), split)
    if not records:
        raise Refused(f"run {row['run_id']} has no stored {split} split to evaluate on")
    downloaded = await asyncio.to_thread(download_images, records,
                                         DownloadConfig(cache_dir=cache_dir), storage=storage)
    if not downloaded.images:
        raise Refused(f"none of the {len(records)} {split} images of run {row['run_id']} "
                      "could be downloaded")
    model, _ = await asyncio.to_thread(checkpoints.load_embedding_model, storage,
                                       ObjectRef.parse(row["manifest_url"]))
    products = await repository.products_info(conn, sorted({r.product_id for r in records}))
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    payload = await asyncio.to_thread(evaluate_images, model, downloaded.images, config,
                                      device=device, products=products)
    payload.update(split=split, epoch=row["epoch"])
    evaluation_id = await repository.record_evaluation(conn, checkpoint_id, payload)
    return evaluation_id, payload
