"""Checks a claimed run must pass before a GPU job is spent on it: every failure a person can act
on that is knowable before the launch gets its own error_code here, not after it.

- invalid_config: the config does not decode or validate (ranges, miner batch bounds);
- memory_budget_exceeded: its planned peak memory does not fit the worker's budget;
- dataset_not_found / products_not_found: the data source names ids that do not exist;
- model_unavailable: model_path is not a readable directory (local workers only);
- insufficient_products / insufficient_images / insufficient_labels: too little data, or fewer
  training labels than the P-K sampler's p.

The data counts use the run's data source and image config exactly as the trainer will
(services.trainer.data.manifest), before any download; the trainer checks again afterwards.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db import repository
from services.common.errors import (
    DatasetNotFound, ModelUnavailable, ProductsNotFound,
)
from services.common.settings import get_settings
from services.trainer.config import RunConfig, parse_config
from services.trainer.data.manifest import build_manifest
from services.trainer.data.split import (check_counts, check_train_labels,
                                         filter_min_samples, split_sizes)
from services.trainer.memory import check_memory


PARSE_CACHE_SIZE = 1024  # config texts (and text x label count) remembered as valid


@dataclass(frozen=True)
class DataCounts:
    products: int
    images: int
    labels: int


class Preflight:
    """Validates runs. Data counts are cached per (data source, image config, labels) for
    `ttl` seconds: counting reads the catalog, and a burst of runs on the same data should not
    read it once per run. The trainer re-checks the real numbers after downloading anyway.

    `memory_budget` (bytes of `device`) is what one training job may use (default: the
    worker_memory settings); `local_worker` says the trainer shares this machine's filesystem,
    so model_path can be checked here."""

    def __init__(self, ttl: float = 10.0, *, memory_budget: int | None = None,
                 device: str | None = None, local_worker: bool = True):
        settings = get_settings()
        self.ttl = ttl
        self.memory_budget = memory_budget or settings.worker_memory_budget
        self.device = device or settings.worker_device
        self.local_worker = local_worker
        self._counts: dict[str, tuple[float, DataCounts]] = {}
        self._parsed: dict[str, tuple[RunConfig, str]] = {}
        self._fits: dict[tuple[str, int], bool] = {}

    async def check(self, conn, raw_config: Any) -> RunConfig:
        """`raw_config` decoded, or its JSON text: a text validated before (a burst of runs shares
        a few configs) skips parsing and, for the same label count, the label and memory checks."""
        config, counts_key = self._parse(raw_config)
        if self.local_worker and config.model_path is not None:
            check_model_path(config.model_path)
        counts = await self._count(conn, config, counts_key)
        check_counts(counts.products, counts.images)
        fits_key = (raw_config, counts.labels) if isinstance(raw_config, str) else None
        if fits_key not in self._fits:
            check_labels(config, counts.labels)
            check_memory(config, self.memory_budget, f"the worker's budget ({self.device})",
                         device=self.device, num_classes=counts.labels)
            if fits_key is not None:
                self._remember(self._fits, fits_key, True)
        return config

    def _parse(self, raw_config: Any) -> tuple[RunConfig, str]:
        """The validated config and its data key; only valid config texts are remembered."""
        cached = self._parsed.get(raw_config) if isinstance(raw_config, str) else None
        if cached is None:
            config = parse_config(raw_config)
            cached = config, config.model_dump_json(
                include={"data_source", "image_config", "label_config"})
            if isinstance(raw_config, str):
                self._remember(self._parsed, raw_config, cached)
        return cached

    @staticmethod
    def _remember(cache: dict, key, value) -> None:
        if len(cache) >= PARSE_CACHE_SIZE:
            cache.clear()
        cache[key] = value

    async def _count(self, conn, config: RunConfig, key: str) -> DataCounts:
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
            if source.type == "selected":
                check_products_exist(source.product_ids, {p["id"] for p in products})
            images = await repository.product_images_for(conn, [p["id"] for p in products])
            records = filter_min_samples(
                build_manifest([dict(p) for p in products], [dict(i) for i in images], config),
                config.label_config.min_samples_per_class,
            )
            counts = DataCounts(len({r.product_id for r in records}), len(records),
                                len({r.label for r in records}))
            self._counts[key] = cached = (time.monotonic(), counts)
        return cached[1]


def check_products_exist(wanted: list[int], found: set[int]) -> None:
    missing = sorted(set(wanted) - found)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise ProductsNotFound(
            f"{len(missing)} of data_source.product_ids do not exist: {shown}; remove them or "
            "import those products first", details={"missing": missing[:100]})


def check_labels(config: RunConfig, labels: int) -> None:
    """Labels of the training split the catalog will give, against the sampler's p."""
    s = config.split
    train_labels = split_sizes(labels, [s.train_ratio, s.val_ratio, s.test_ratio])[0]
    check_train_labels(config, train_labels,
                       f"{labels} in all, label_field '{config.label_config.label_field}', "
                       f"train_ratio {s.train_ratio:g}")


def check_model_path(model_path: str) -> None:
    path = Path(model_path)
    if not path.is_dir() or not os.access(path, os.R_OK | os.X_OK):
        raise ModelUnavailable(
            f"model_path {model_path} is not a readable directory on the worker: point it at a "
            "folder written by save_pretrained, or leave it unset to use the hub weights")
