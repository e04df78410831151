"""Extraction: a registered model embeds catalog images into a Qdrant collection of its own.

- The collection is named after the model's run uuid and model id (never a serial id alone):
  `skutrain-{run_uuid}-model-{model_id}`, cosine distance, the model's embedding size.
- One point per (product, image URL), with a deterministic id (uuid5 of model id, product id
  and URL), so extracting again updates the points in place instead of adding copies.
- Payload: product_id, product_name, domain, category, image_id (the product_images row; None
  for turntable frames, which are not rows), url, frame_index, model_id.
- The images are the catalog's (optionally some products and domains), chosen like a run's
  manifest (services.trainer.data.manifest: turntable frames by the run's frame selection),
  prepared and embedded exactly as the evaluation does (`evaluate.embed_images`).
- qdrant-client's on-disk local mode under the data dir by default; a server when QDRANT_URL
  is set.
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from qdrant_client import QdrantClient, models

from db import repository
from services.common.errors import NotFound, Refused
from services.common.storage import ObjectRef, Storage
from services.models.evaluate import embed_images
from services.trainer import checkpoints
from services.trainer.config import DOMAINS, RunConfig, parse_config
from services.trainer.data.download import DownloadConfig, LocalImage, download_images
from services.trainer.data.manifest import ImageRecord, build_manifest
from services.trainer.model import EmbeddingModel

POINT_NAMESPACE = uuid.UUID("0b5c4f3e-2d7a-5d0e-9a51-6b1f4f7c9e21")
UPSERT_IMAGES = 256  # images embedded and upserted per step (one progress update each)


@dataclass
class RegisteredModel:
    """A registered model loaded from its checkpoint shards, with what extraction names."""

    id: int
    name: str
    run_uuid: str
    config: RunConfig
    model: EmbeddingModel

    @property
    def collection(self) -> str:
        return collection_name(self.run_uuid, self.id)


def collection_name(run_uuid: str, model_id: int) -> str:
    return f"skutrain-{run_uuid}-model-{model_id}"


def point_id(model_id: int, product_id: int, url: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{model_id}|{product_id}|{url}"))


def qdrant_client(qdrant_url: str | None, data_dir: Path) -> QdrantClient:
    """A Qdrant server when a URL is set, else the on-disk local mode under the data dir."""
    if qdrant_url:
        return QdrantClient(url=qdrant_url)
    path = data_dir / "qdrant"
    path.mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=str(path))


async def load_registered_model(conn, model_id: int, storage: Storage) -> RegisteredModel:
    row = await repository.registered_model(conn, model_id)
    if row is None:
        raise NotFound(f"model {model_id} is not registered; `skutrain models list` shows the "
                       "registered ones")
    model, _ = await asyncio.to_thread(checkpoints.load_embedding_model, storage,
                                       ObjectRef.parse(row["manifest_url"]))
    return RegisteredModel(row["id"], row["name"], row["run_uuid"], parse_config(row["config"]),
                           model)


def extraction_records(products: Sequence[Any], images: Sequence[Any], config: RunConfig,
                       domains: Sequence[str]) -> list[ImageRecord]:
    """The catalog images to embed: the run's frame selection, the requested domains, every
    product (labelled by product id: extraction has no classes to drop)."""
    chosen = config.model_copy(update={
        "image_config": config.image_config.model_copy(update={"image_types": list(domains)}),
        "label_config": config.label_config.model_copy(update={"label_field": "product_id"}),
    })
    return build_manifest(products, images, chosen)


def ensure_collection(client: QdrantClient, name: str, dim: int) -> None:
    if not client.collection_exists(name):
        client.create_collection(name, vectors_config=models.VectorParams(
            size=dim, distance=models.Distance.COSINE))


def points(model_id: int, images: Sequence[LocalImage], embeddings: torch.Tensor,
           info: dict[int, Any], image_ids: dict[tuple[int, str], int]) -> list[models.PointStruct]:
    out = []
    for image, vector in zip(images, embeddings.cpu().tolist()):
        r = image.record
        product = info.get(r.product_id)
        out.append(models.PointStruct(id=point_id(model_id, r.product_id, r.url), vector=vector,
                                      payload={
            "product_id": r.product_id, "product_name": product and product["product_name"],
            "domain": r.domain, "category": r.category,
            "image_id": image_ids.get((r.product_id, r.url)), "url": r.url,
            "frame_index": r.frame_index, "model_id": model_id,
        }))
    return out


def upsert_embeddings(client: QdrantClient, registered: RegisteredModel,
                      images: Sequence[LocalImage], info: dict[int, Any],
                      image_ids: dict[tuple[int, str], int], *, device: torch.device,
                      progress: Callable[[int, int], None] | None = None) -> None:
    """Embed and upsert `images` in steps of UPSERT_IMAGES (the collection is created first)."""
    ensure_collection(client, registered.collection, registered.model.embedding_dim)
    for start in range(0, len(images), UPSERT_IMAGES):
        batch = images[start:start + UPSERT_IMAGES]
        embeddings = embed_images(registered.model, batch, registered.config, device=device)
        client.upsert(registered.collection,
                      points=points(registered.id, batch, embeddings, info, image_ids))
        if progress is not None:
            progress(start + len(batch), len(images))


@dataclass
class ExtractionReport:
    collection: str
    images: int
    skipped: int
    products: int


async def extract(conn, model_id: int, *, storage: Storage, client: QdrantClient,
                  cache_dir: Path, product_ids: Sequence[int] | None = None,
                  domains: Sequence[str] | None = None, device: torch.device | None = None,
                  progress: Callable[[int, int], None] | None = None) -> ExtractionReport:
    """Embed the chosen catalog images with model `model_id` and upsert them; `progress(done,
    total)` after each step."""
    domains = list(domains or DOMAINS)
    unknown = sorted(set(domains) - set(DOMAINS))
    if unknown:
        raise Refused(f"unknown domains {', '.join(unknown)}; use {', '.join(DOMAINS)}")
    registered = await load_registered_model(conn, model_id, storage)
    products, rows = await repository.extraction_catalog(conn, product_ids)
    if product_ids is not None and len(products) < len(set(product_ids)):
        missing = sorted(set(product_ids) - {p["id"] for p in products})
        raise NotFound(f"products {', '.join(map(str, missing[:20]))} do not exist")
    records = extraction_records([dict(p) for p in products], [dict(r) for r in rows],
                                 registered.config, domains)
    downloaded = await asyncio.to_thread(download_images, records,
                                         DownloadConfig(cache_dir=cache_dir), storage=storage)
    images = downloaded.images
    info = {p["id"]: p for p in products}
    image_ids = {(r["product_id"], r["url"]): r["id"] for r in rows}
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    await asyncio.to_thread(upsert_embeddings, client, registered, images, info, image_ids,
                            device=device, progress=progress)
    return ExtractionReport(registered.collection, len(images), len(records) - len(images),
                            len({i.record.product_id for i in images}))
