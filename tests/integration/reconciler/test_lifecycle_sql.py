"""The lifecycle SQL functions as a psql user would call them: guards, refusals, immutability."""
import asyncpg
import pytest

from db import repository
from services.common.errors import NotFound, Refused
from tests.integration.reconciler.conftest import save_checkpoints, start_running


@pytest.mark.parametrize("total,last,expected", [(5, 0, 5), (5, 5, 0), (5, 3, 2), (5, 7, 0),
                                                 (10, 4, 6), (5, None, 5), (None, 0, 0)])
async def test_remaining_epochs_edges(conn, total, last, expected):
    assert await conn.fetchval("SELECT remaining_epochs($1, $2)", total, last) == expected


async def test_checkpoint_rows_are_immutable_and_per_attempt(conn, storage):
    run = await start_running(conn)
    await save_checkpoints(conn, storage, run, [1], recalls=[0.5])
    before = await conn.fetchrow("SELECT * FROM checkpoints WHERE run_id = $1", run.id)
    # the same (run, attempt, epoch) again through a fresh event is a no-op, not an update
    await conn.execute("SELECT project_checkpoint_saved($1, $2, $3::jsonb)", run.id, run.attempt,
                       {"epoch": 1, "manifest_url": "storage://checkpoints/other",
                        "size_bytes": 9, "shard_count": 9})
    after = await conn.fetchrow("SELECT * FROM checkpoints WHERE run_id = $1", run.id)
    assert dict(after) == dict(before)
    # a later attempt saving epoch 1 again makes a new row; lookups take the highest attempt
    await conn.execute("SELECT project_checkpoint_saved($1, $2, $3::jsonb)", run.id,
                       run.attempt + 1, {"epoch": 1, "manifest_url": "storage://checkpoints/b",
                                         "size_bytes": 2, "shard_count": 1})
    rows = await conn.fetch("SELECT attempt FROM checkpoints WHERE run_id = $1 ORDER BY attempt",
                            run.id)
    assert [r["attempt"] for r in rows] == [run.attempt, run.attempt + 1]
    newest = await conn.fetchval("SELECT attempt FROM checkpoints WHERE id = "
                                 "checkpoint_for_epoch($1, 1)", run.id)
    assert newest == run.attempt + 1


async def test_cancel_of_a_finished_run_is_refused(conn):
    run = await start_running(conn)
    assert await repository.finish_run(conn, run.id, run.lease_epoch, "completed")
    with pytest.raises(Refused, match="already ended as completed"):
        await repository.request_cancel(conn, run.id)
    with pytest.raises(asyncpg.PostgresError) as raw:
        await conn.fetchval("SELECT request_cancel($1)", run.id)
    assert raw.value.sqlstate == "SK010"
    with pytest.raises(NotFound):
        await repository.request_cancel(conn, 999)


async def test_request_resume_continues_from_the_last_checkpoint(conn, storage):
    run = await start_running(conn, epochs=5)
    await save_checkpoints(conn, storage, run, [1, 2, 3])
    with pytest.raises(Refused, match="is running"):
        await repository.request_resume(conn, run.id)
    await repository.finish_run(conn, run.id, run.lease_epoch, "failed", error_code="x")
    assert await repository.request_resume(conn, run.id) == "queued"
    row = await repository.get_run(conn, run.id)
    epoch3 = await conn.fetchval("SELECT checkpoint_for_epoch($1, 3)", run.id)
    assert (row["status"], row["resume_from_checkpoint_id"], row["error_code"]) == (
        "queued", epoch3, None)
    resumed = (await repository.run_events(conn, run.id))[-1]
    assert resumed["type"] == "run.resumed"
    assert resumed["payload"]["remaining_epochs"] == 2 and resumed["payload"]["epoch"] == 3
    (again,) = await repository.claim_runs(conn, "test", 1, 60)
    assert again.attempt == run.attempt + 1 and again.lease_epoch > run.lease_epoch + 1


async def test_delete_guard_names_linked_models_and_force_deregisters(conn, storage):
    run = await start_running(conn)
    await save_checkpoints(conn, storage, run, [1, 2])
    await repository.finish_run(conn, run.id, run.lease_epoch, "completed")
    checkpoint = await conn.fetchval("SELECT checkpoint_for_epoch($1, 2)", run.id)
    await conn.execute("INSERT INTO trained_models (name, checkpoint_id) VALUES ('shelf-v1', $1)",
                       checkpoint)
    with pytest.raises(Refused, match=r"shelf-v1 \(id \d+\).*force"):
        await repository.request_delete(conn, run.id)
    with pytest.raises(Refused, match="shelf-v1"):
        await repository.request_checkpoint_delete(conn, checkpoint)
    assert await conn.fetchval("SELECT delete_requested_at FROM training_runs") is None
    assert await repository.request_delete(conn, run.id, True) == "delete_requested"
    assert await conn.fetchval("SELECT count(*) FROM trained_models") == 0
    assert await conn.fetchval("SELECT count(*) FROM checkpoints WHERE delete_requested_at IS "
                               "NULL") == 0
    with pytest.raises(NotFound):
        await repository.request_delete(conn, 999)


async def test_a_deleted_runs_launches_go_with_it_into_its_tombstone(conn):
    """run_launches has no foreign key (revision 0008): the delete trigger keeps the latest
    live launch's identity in the tombstone and removes the run's launches."""
    identity = {"host": "h", "pid": 4242, "create_time": 1.5}
    run = await start_running(conn, identity=identity)
    other = await start_running(conn, name="other")
    await conn.execute("DELETE FROM training_runs WHERE id = $1", run.id)
    assert await conn.fetchval("SELECT count(*) FROM run_launches WHERE run_id = $1", run.id) == 0
    assert await conn.fetchval("SELECT count(*) FROM run_launches WHERE run_id = $1", other.id) == 1
    tomb = await conn.fetchrow("SELECT launcher, identity FROM deleted_runs WHERE run_id = $1",
                               run.id)
    assert (tomb["launcher"], tomb["identity"]) == ("local", identity)
