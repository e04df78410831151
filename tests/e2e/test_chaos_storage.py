"""Chaos: a fresh database on an existing storage directory. Run ids restart at 1 there, so a
run must never pick up the objects a run of the old database stored: storage keys carry the
run uuid, never the serial id, and the new run trains all its epochs in its first attempt."""
import asyncio
import json
import uuid

import pytest

from db import repository
from db.connection import with_database
from services.common.storage import LocalStorage
from services.common.storage_layout import BUCKET
from services.dispatcher.launchers import LocalLauncher
from services.dispatcher.service import Dispatcher, DispatcherConfig
from tests.conftest import _admin
from tests.e2e.conftest import TINY_RUN, wait_for_status

pytestmark = pytest.mark.slow


async def _train_one_run(db_url, data_dir, products) -> tuple[dict, list[dict], list[dict]]:
    """Insert the catalog and one TINY_RUN into the database at db_url, train it through the
    local dispatcher with storage under data_dir; (run row, events, checkpoint rows)."""
    conn = await repository.connect(db_url)
    launcher = LocalLauncher(log_dir=data_dir / "logs", max_concurrent=1, env={
        "DATABASE_URL": db_url, "SKUTRAIN_DATA_DIR": str(data_dir),
        "SKUTRAIN_PROGRESS_INTERVAL": "0", "SKUTRAIN_LOG_LEVEL": "INFO", "HF_TOKEN": ""})
    dispatcher = Dispatcher(db_url, launcher, DispatcherConfig(poll_interval=0.5))
    try:
        await repository.insert_catalog(conn, products)
        run_id = await conn.fetchval("INSERT INTO training_runs (name, config) VALUES ($1, "
                                     "$2::text::jsonb) RETURNING id", "fresh-db",
                                     json.dumps(TINY_RUN))
        await dispatcher.start()
        task = asyncio.create_task(dispatcher.wait())
        try:
            row = await wait_for_status(conn, run_id, {"completed", "failed", "cancelled"}, 180)
        finally:
            dispatcher.stop()
            await task
        events = [dict(e) for e in await repository.run_events(conn, run_id)]
        ckpts = [dict(c) for c in await conn.fetch(
            "SELECT attempt, epoch, manifest_url, resume_state_url FROM checkpoints "
            "WHERE run_id = $1 ORDER BY epoch", run_id)]
        return row, events, ckpts
    finally:
        await conn.close()


@pytest.fixture
def second_db_url(pg_server_url, template_db):
    name = f"t_{uuid.uuid4().hex[:12]}"
    _admin(pg_server_url, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield with_database(pg_server_url, name)
    _admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_fresh_database_on_existing_storage_trains_all_epochs_without_resume(
        conn, db_url, second_db_url, data_dir, catalog):
    first, first_events, first_ckpts = await _train_one_run(db_url, data_dir, [])
    second, events, ckpts = await _train_one_run(second_db_url, data_dir, catalog)

    epochs = TINY_RUN["training"]["epochs"]
    assert first["id"] == second["id"] == 1  # the same serial id in both databases
    assert first["run_uuid"] != second["run_uuid"]
    for row in (first, second):
        assert row["status"] == "completed", (row["error_code"], row["error_message"])
    assert all(e["type"] != "run.resumed" for e in events)
    assert {e["attempt"] for e in events if e["attempt"] > 0} == {1}
    done = [e["payload"]["epoch"] for e in events if e["type"] == "epoch.completed"]
    assert done == list(range(1, epochs + 1))
    assert [c["epoch"] for c in ckpts] == list(range(1, epochs + 1))
    assert all(c["attempt"] == 1 for c in ckpts)
    keys = {c[k] for c in ckpts for k in ("manifest_url", "resume_state_url") if c[k]}
    first_keys = {c[k] for c in first_ckpts for k in ("manifest_url", "resume_state_url") if c[k]}
    assert keys and first_keys and not keys & first_keys
    assert all(str(second["run_uuid"]) in key for key in keys)
    assert all(str(first["run_uuid"]) in key for key in first_keys)
    stored = LocalStorage(data_dir / "storage")  # run A's objects are still there, untouched
    assert {ref.url for ref in stored.list(BUCKET, f"runs/{first['run_uuid']}/")} >= {
        c["manifest_url"] for c in first_ckpts}
