"""Preflight gives every failure a person can act on its own code before the launch."""
from __future__ import annotations

import pytest

from services.common.errors import SkutrainError
from services.dispatcher.preflight import Preflight
from services.trainer.memory import GIB


async def _code(conn, config, **kwargs) -> str | None:
    try:
        await Preflight(memory_budget=kwargs.pop("budget", 16 * GIB), **kwargs).check(conn, config)
    except SkutrainError as exc:
        return exc.code, exc.message
    return None, ""


@pytest.mark.parametrize("config, code, words", [
    ({"sampler": {"p": 10, "k": 4}, "training": {"batch_size": 40}}, "insufficient_labels",
     "training split has 8 labels (12 in all"),
    ({"label_config": {"label_field": "category"}}, "insufficient_labels", "but sampler.p is 8"),
    ({"data_source": {"type": "selected", "product_ids": [1, 2, 987654321]}},
     "products_not_found", "987654321"),
    ({"data_source": {"type": "dataset", "dataset_id": 2**63 - 1}}, "dataset_not_found",
     "9223372036854775807"),
    ({"model": "dinov2-base", "model_path": "/nonexistent/dinov2"}, "model_unavailable",
     "not a readable directory"),
    ({"model": "dinov2-large", "sampler": {"p": 8, "k": 16}, "training": {"batch_size": 128}},
     "memory_budget_exceeded", "has 16.00 GiB"),
    ({"training": {"seed": 10**30}}, "invalid_config", "training.seed"),
])
async def test_actionable_failures_have_their_code(catalog_conn, config, code, words):
    got, message = await _code(catalog_conn, config)
    assert got == code, message
    assert words in message


async def test_good_config_passes_and_remote_workers_skip_the_path(catalog_conn):
    assert await _code(catalog_conn, {}) == (None, "")
    config = {"model_path": "/nonexistent/dinov2"}
    assert await _code(catalog_conn, config, local_worker=False) == (None, "")
