"""Chaos: the reconciler SIGKILLed in the middle of a forced delete; a restarted one finishes it
and nothing is left dangling in storage or the database."""
import pytest

from db import repository
from services.common.storage import LocalStorage
from tests.e2e.chaos import Services, wait_until
from tests.integration.reconciler.conftest import save_checkpoints, start_running, stored_keys

pytestmark = pytest.mark.slow


async def test_reconciler_killed_during_a_forced_delete_finishes_on_restart(conn, db_url, data_dir):
    storage = LocalStorage(data_dir / "storage")
    run = await start_running(conn, epochs=80)
    run_uuid = await save_checkpoints(conn, storage, run, list(range(1, 81)))
    await repository.finish_run(conn, run.id, run.lease_epoch, "completed")
    best = await conn.fetchval("SELECT checkpoint_for_epoch($1, 80)", run.id)
    await conn.execute("INSERT INTO trained_models (name, checkpoint_id) VALUES ('m', $1)", best)
    assert await repository.request_delete(conn, run.id, force=True) == "delete_requested"

    services = Services(db_url, data_dir)
    try:
        services.reconciler("reconciler-1")

        async def deleting():
            return await conn.fetchval("SELECT count(*) FROM training_events WHERE run_id = $1 "
                                       "AND type = 'checkpoint.deleted'", run.id)
        await wait_until(deleting, 60, "the delete to start", interval=0.01)
        services.kill("reconciler-1")
        left = await conn.fetchval("SELECT count(*) FROM checkpoints")
        # killed part way: rows still marked, some bytes already gone
        assert 0 < left < 80, left
        services.reconciler("reconciler-2")

        async def cleaned():
            return await conn.fetchval(
                "SELECT cleaned_at IS NOT NULL FROM deleted_runs WHERE run_id = $1", run.id)
        await wait_until(cleaned, 60, "the delete to finish")
    finally:
        await services.stop_all(conn)
    assert stored_keys(storage, run_uuid) == []
    for table in ("training_runs", "checkpoints", "run_launches", "trained_models"):
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    types = [e["type"] for e in await repository.run_events(conn, run.id)]
    assert types.count("checkpoint.deleted") == 80 and types[-1] == "run.deleted"
