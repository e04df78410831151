"""A real local trainer that outgrows its memory limit fails alone with out_of_memory: the
launcher starts it under RLIMIT_DATA, so its allocation fails instead of the kernel's OOM killer
picking a process (Postgres included)."""
from __future__ import annotations

import asyncio

import psutil

from db import repository
from services.common.settings import get_settings
from services.dispatcher.launchers import LocalLauncher
from services.dispatcher.preflight import Preflight
from services.dispatcher.service import Dispatcher, DispatcherConfig
from services.trainer.memory import GIB
from tests.e2e.conftest import TINY_RUN, catalog, data_dir, wait_for_status  # noqa: F401


async def test_trainer_over_its_limit_ends_out_of_memory(conn, db_url, data_dir, catalog,  # noqa: F811
                                                         monkeypatch):
    monkeypatch.setenv("SKUTRAIN_WORKER_MEMORY_BYTES", str(1 * GIB))
    get_settings.cache_clear()
    launcher = LocalLauncher(log_dir=data_dir / "logs", max_concurrent=1, env={
        "DATABASE_URL": db_url, "SKUTRAIN_DATA_DIR": str(data_dir), "HF_TOKEN": ""})
    dispatcher = Dispatcher(db_url, launcher, DispatcherConfig(poll_interval=0.5))
    # Preflight would refuse this config (memory_budget_exceeded); let it through so the
    # trainer meets its own limit (imports take ~0.45 GiB; one batch of 32 images at 1024 px
    # is 0.4 GiB as a tensor, with as much again before collation).
    dispatcher.preflight = Preflight(memory_budget=4096 * GIB)
    config = {**TINY_RUN, "sampler": {"p": 4, "k": 8},
              "training": {**TINY_RUN["training"], "image_size": 1024, "batch_size": 32}}
    try:
        await dispatcher.start()
        task = asyncio.create_task(dispatcher.wait())
        run_id = await repository.insert_run(conn, "too-big", config)
        row = await wait_for_status(conn, run_id, {"failed", "completed"}, timeout=180)
        dispatcher.stop()
        await task
    finally:
        get_settings.cache_clear()
    assert row["error_code"] == "out_of_memory", row["error_message"]
    assert "training.batch_size" in row["error_message"]
    assert psutil.virtual_memory().available > 1 * GIB  # the machine never came close
