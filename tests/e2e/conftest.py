"""End-to-end fixtures: a catalog in local storage and a dispatcher whose local launcher starts
real trainer processes against the test database."""
import asyncio
import time
from pathlib import Path

import pytest

from db import repository
from services.catalog.generate import generate_catalog
from services.common.storage import LocalStorage
from services.dispatcher.launchers import LocalLauncher
from services.dispatcher.service import Dispatcher, DispatcherConfig

TINY_RUN = {
    "model": "tiny-dinov2",
    "training": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "min_lr": 1e-5,
                 "warmup_epochs": 0.5, "image_size": 32, "embedding_dim": 32, "num_workers": 0},
    "sampler": {"p": 4, "k": 4},
}


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def catalog(conn, data_dir):
    products = await asyncio.to_thread(
        generate_catalog, LocalStorage(data_dir / "storage"), 12, 6, seed=3, image_size=48)
    await repository.insert_catalog(conn, products)
    return products


@pytest.fixture
async def local_dispatcher(db_url, data_dir, catalog):
    launcher = LocalLauncher(log_dir=data_dir / "logs", max_concurrent=2, env={
        "DATABASE_URL": db_url, "SKUTRAIN_DATA_DIR": str(data_dir),
        "SKUTRAIN_PROGRESS_INTERVAL": "0", "SKUTRAIN_LOG_LEVEL": "INFO", "HF_TOKEN": ""})
    dispatcher = Dispatcher(db_url, launcher, DispatcherConfig(poll_interval=0.5))
    await dispatcher.start()
    task = asyncio.create_task(dispatcher.wait())
    yield dispatcher
    dispatcher.stop()
    await task


async def wait_for_status(conn, run_id, statuses, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await repository.get_run(conn, run_id)
        if row["status"] in statuses:
            return dict(row)
        await asyncio.sleep(0.25)
    raise AssertionError(f"run {run_id} still {row['status']} after {timeout}s")
