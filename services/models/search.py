"""Search: embed one image with a registered model and find the nearest products in its
Qdrant collection (one best image per product, by the collection's cosine score)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from qdrant_client import QdrantClient

from services.common.errors import NotFound
from services.models.evaluate import embed_images
from services.models.extract import RegisteredModel
from services.trainer.data.download import LocalImage
from services.trainer.data.manifest import ImageRecord


def embed_file(registered: RegisteredModel, path: Path, device: torch.device) -> torch.Tensor:
    """The query image's embedding, prepared as evaluation and extraction prepare images."""
    record = ImageRecord(product_id=0, url=str(path), domain="real", frame_index=None,
                         category=None, brand=None, label="query")
    return embed_images(registered.model, [LocalImage(record, path)], registered.config,
                        device=device)[0]


def nearest_products(client: QdrantClient, registered: RegisteredModel, path: Path, k: int = 5,
                     device: torch.device | None = None) -> list[dict[str, Any]]:
    """Up to `k` products, best first: product id and name, score, and the matched image."""
    if not path.is_file():
        raise NotFound(f"image {path} does not exist")
    if not client.collection_exists(registered.collection):
        raise NotFound(f"model {registered.id} has no extracted embeddings yet; run "
                       f"`skutrain extract --model {registered.id}` first")
    vector = embed_file(registered, path, device or torch.device("cpu"))
    groups = client.query_points_groups(registered.collection, query=vector.cpu().tolist(),
                                        group_by="product_id", limit=k, group_size=1,
                                        with_payload=True).groups
    return [{"score": g.hits[0].score, **g.hits[0].payload} for g in groups]
