"""Checks a claimed run must pass before a GPU job is spent on it: a valid config and enough data.

The data counts use the run's data source and image config exactly as the trainer will
(services.trainer.data.manifest), before any download; the trainer checks again afterwards.
"""
from __future__ import annotations

import time
from typing import Any

from db import repository
from services.common.errors import DatasetNotFound
from services.trainer.config import RunConfig, parse_config
from services.trainer.data.manifest import count_manifest
from services.trainer.data.split import check_counts

class Preflight:
    """Validates runs. Data counts are cached per (data source, image config, labels) for
    `ttl` seconds: counting reads the catalog, and a burst of runs on the same data should not
    read it once per run. The trainer re-checks the real numbers after downloading anyway."""

    def __init__(self, ttl: float = 10.0):
        self.ttl = ttl
        self._counts: dict[str, tuple[float, tuple[int, int]]] = {}

    async def check(self, conn, raw_config: Any) -> RunConfig:
        config = parse_config(raw_config)
        n_products, n_images = await self._count(conn, config)
        check_counts(n_products, n_images)
        return config

    async def _count(self, conn, config: RunConfig) -> tuple[int, int]:
        key = config.model_dump_json(include={"data_source", "image_config", "label_config"})
        cached = self._counts.get(key)
        if cached is None or time.monotonic() - cached[0] > self.ttl:
            source = config.data_source
            if source.type == "dataset" and not await repository.dataset_exists(
                conn, source.dataset_id
            ):
                raise DatasetNotFound(
                    f"dataset {source.dataset_id} does not exist: check data_source.dataset_id"
                )
            products = await repository.select_products(
                conn, source.type, dataset_id=source.dataset_id,
                product_ids=source.product_ids,
            )
            images = await repository.product_images_for(conn, [p["id"] for p in products])
            counts = count_manifest([dict(p) for p in products], [dict(i) for i in images], config)
            self._counts[key] = cached = (time.monotonic(), counts)
        return cached[1]
