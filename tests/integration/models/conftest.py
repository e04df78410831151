"""One tiny model trained for real (2 epochs, a generated 12-product catalog) per test module,
in its own database: the registry, evaluation, extraction and comparison tests share it."""
from __future__ import annotations

import asyncio
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from db import repository
from db.connection import with_database
from services.catalog.generate import generate_catalog
from services.common.logging import configure_logging
from services.common.settings import get_settings
from services.common.storage import LocalStorage
from services.trainer.runner import TrainerEnvironment, run_attempt
from tests.conftest import _admin

TINY_RUN = {
    "model": "tiny-dinov2",
    "training": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "min_lr": 1e-5,
                 "warmup_epochs": 0.5, "image_size": 32, "embedding_dim": 32, "num_workers": 0},
    "sampler": {"p": 4, "k": 4},
    "evaluation": {"hard_cases": 3},
}


@dataclass
class TrainedRun:
    db_url: str
    data_dir: Path
    storage: LocalStorage
    run_id: int
    products: list[dict]


async def _queue_and_claim(url: str, products: list[dict] | None,
                           config: dict) -> tuple[int, int, int]:
    conn = await repository.connect(url)
    try:
        if products is not None:
            await repository.insert_catalog(conn, products)
        run_id = await conn.fetchval(
            "INSERT INTO training_runs (name, config) VALUES ($1, $2::text::jsonb) RETURNING id",
            "registry-test", json.dumps(config))
        (claimed,) = await repository.claim_runs(conn, "registry-tests", 1, 600)
        return run_id, claimed.attempt, claimed.lease_token
    finally:
        await conn.close()


def train_run(url: str, storage: LocalStorage, data_dir: Path, config: dict,
              products: list[dict] | None = None) -> int:
    """Queue a run, claim it and train it in this process (the trainer's real entry point)."""
    run_id, attempt, lease_token = asyncio.run(_queue_and_claim(url, products, config))
    env = TrainerEnvironment(database_url=url, storage=storage, cache_dir=data_dir / "cache",
                             device="cpu", progress_interval=60.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        status = run_attempt(env, run_id, attempt, lease_token)
    finally:
        torch.set_num_threads(threads)
    assert status == "completed", status
    return run_id


@pytest.fixture(scope="module")
def trained(pg_server_url, template_db, tmp_path_factory) -> TrainedRun:
    name = f"m_{uuid.uuid4().hex[:12]}"
    _admin(pg_server_url, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    url = with_database(pg_server_url, name)
    data_dir = tmp_path_factory.mktemp("models-data")
    storage = LocalStorage(data_dir / "storage")
    products = generate_catalog(storage, 12, 6, seed=3, image_size=48)
    run_id = train_run(url, storage, data_dir, TINY_RUN, products)
    yield TrainedRun(url, data_dir, storage, run_id, products)
    _admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def cli_env(trained, monkeypatch):
    """`skutrain` commands see the trained run's database and data dir; afterwards the logs go
    to the real stderr again (the CLI configured them onto the test's captured one)."""
    monkeypatch.setenv("DATABASE_URL", trained.db_url)
    monkeypatch.setenv("SKUTRAIN_DATA_DIR", str(trained.data_dir))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    configure_logging("INFO", "json", sys.__stderr__)


@pytest.fixture
async def mconn(trained):
    conn = await repository.connect(trained.db_url)
    yield conn
    await conn.close()
