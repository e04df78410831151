"""The reconciler's duties against real Postgres, real processes and real local storage."""
import asyncio
import os
import signal
import threading

from pathlib import Path

import psutil

from db import repository
from services.common.storage_layout import BUCKET
from services.common.logging import get_logger
from services.dispatcher.launchers import JobState, LaunchRecord, LocalLauncher
from services.reconciler.leases import settle_gone_jobs
from tests.integration.reconciler.conftest import (identity_of, save_checkpoints, start_running,
                                                   stored_keys)


async def _expire(conn, run_id):
    await conn.execute("UPDATE training_runs SET lease_expires_at = now() - interval '1 s' "
                       "WHERE id = $1", run_id)


async def _types(conn, run_id):
    return [e["type"] for e in await repository.run_events(conn, run_id)]


async def test_dead_job_is_requeued_to_resume_then_failed_after_max_attempts(
        conn, storage, sleeper, make_reconciler):
    reconciler = make_reconciler(max_attempts=2)
    proc = sleeper()
    run = await start_running(conn, epochs=4, identity=identity_of(proc))
    await save_checkpoints(conn, storage, run, [1, 2])
    proc.kill()
    proc.wait()
    result = await reconciler.sweep(conn)  # the launcher sees the pid gone: no lease wait
    assert result.gone_jobs == 1
    row = await repository.get_run(conn, run.id)
    assert row["status"] == "queued"
    assert row["resume_from_checkpoint_id"] == await conn.fetchval(
        "SELECT checkpoint_for_epoch($1, 2)", run.id)
    types = await _types(conn, run.id)
    assert types.index("run.requeued") + 1 == types.index("run.resumed")
    assert await conn.fetchval("SELECT end_reason FROM run_launches WHERE run_id = $1",
                               run.id) == "worker_crashed"

    # attempt 2 (the last) loses its lease with no job record at all: failed with lease_lost
    (again,) = await repository.claim_runs(conn, "test", 1, 60)
    assert again.attempt == 2
    await _expire(conn, run.id)
    await reconciler.sweep(conn)
    row = await repository.get_run(conn, run.id)
    assert (row["status"], row["error_code"]) == ("failed", "lease_lost")
    assert "no attempts left" in row["error_message"]


async def test_hung_job_is_killed_and_requeued_as_stalled(conn, sleeper, make_reconciler):
    proc = sleeper()
    run = await start_running(conn, identity=identity_of(proc))
    os.kill(proc.pid, signal.SIGSTOP)
    await _expire(conn, run.id)
    result = await make_reconciler().sweep(conn)
    assert result.recovered == 1
    assert proc.wait(timeout=10) == -signal.SIGKILL
    events = await repository.run_events(conn, run.id)
    requeued = next(e for e in events if e["type"] == "run.requeued")
    assert requeued["payload"]["reason"] == "stalled"
    assert (await repository.get_run(conn, run.id))["status"] == "queued"


async def test_a_dispatcher_seeing_the_killed_job_gone_does_not_relabel_the_hang(
        conn, db_url, sleeper, launcher, make_reconciler):
    """The dispatcher settles gone jobs on its own connection; if it looked between the
    reconciler's kill and its record, the hang would be recorded as worker_crashed. The kill
    below runs the dispatcher's own settle_gone_jobs, in another thread and connection, the
    moment the job is dead."""
    seen = []

    def settle_as_the_dispatcher():
        async def settle():
            other = await repository.connect(db_url)
            try:
                seen.append(await settle_gone_jobs(other, launcher, 3, get_logger("dispatcher")))
            finally:
                await other.close()
        asyncio.run(settle())

    def stop_then_settle(record, force=False):
        LocalLauncher.stop(launcher, record, force=force)
        psutil.Process(proc.pid).wait(timeout=10)
        thread = threading.Thread(target=settle_as_the_dispatcher)
        thread.start()
        thread.join()

    proc = sleeper()
    run = await start_running(conn, identity=identity_of(proc))
    os.kill(proc.pid, signal.SIGSTOP)
    await _expire(conn, run.id)
    launcher.stop = stop_then_settle
    assert (await make_reconciler().sweep(conn)).recovered == 1
    assert seen == [0]  # the launch was already closed by the recorded recovery
    requeued = [e["payload"]["reason"] for e in await repository.run_events(conn, run.id)
                if e["type"] == "run.requeued"]
    assert requeued == ["stalled"]
    assert await conn.fetchval("SELECT end_reason FROM run_launches WHERE run_id = $1",
                               run.id) == "stalled"


async def test_step_that_does_not_advance_is_stalled(conn, sleeper, make_reconciler):
    proc = sleeper()
    run = await start_running(conn, identity=identity_of(proc))
    beat = await repository.heartbeat_run(conn, run.id, run.lease_epoch, 60, step=5)
    assert beat.owned
    await conn.execute("UPDATE training_runs SET progress_at = now() - interval '20 s'")
    await repository.heartbeat_run(conn, run.id, run.lease_epoch, 60, step=5)  # no progress
    assert await make_reconciler(stall_timeout=10).sweep(conn)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert (await repository.get_run(conn, run.id))["status"] == "queued"


async def test_reused_pid_is_not_mistaken_for_the_job(launcher, sleeper):
    proc = sleeper()
    identity = identity_of(proc)
    record = LaunchRecord(1, 1, 1, "local", "pid", identity)
    assert launcher.state(record) is JobState.ALIVE
    reused = LaunchRecord(1, 1, 1, "local", "pid", {**identity,
                                                    "create_time": identity["create_time"] - 50})
    assert launcher.state(reused) is JobState.GONE
    launcher.stop(reused, force=True)  # must not signal the process that now has the pid
    assert psutil.Process(proc.pid).is_running()


async def test_cancel_stops_the_job_and_ends_the_run_cancelled(conn, sleeper, make_reconciler):
    proc = sleeper()
    run = await start_running(conn, identity=identity_of(proc))
    assert await repository.request_cancel(conn, run.id) == "running"
    reconciler = make_reconciler(cancel_grace=30)
    await reconciler.sweep(conn)  # SIGTERM
    assert proc.wait(timeout=10) == -signal.SIGTERM
    result = await reconciler.sweep(conn)
    assert result.gone_jobs + result.cancels == 1
    row = await repository.get_run(conn, run.id)
    assert row["status"] == "cancelled"
    assert (await _types(conn, run.id))[-1] == "run.cancelled"


async def test_cancel_kills_a_job_that_ignores_sigterm_after_the_grace(conn, make_reconciler,
                                                                        sleeper):
    proc = sleeper()
    os.kill(proc.pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM in time
    run = await start_running(conn, identity=identity_of(proc))
    await repository.request_cancel(conn, run.id)
    await conn.execute("UPDATE training_runs SET cancel_requested_at = now() - interval '1 min'")
    result = await make_reconciler(cancel_grace=5).sweep(conn)
    assert result.cancels == 1
    assert proc.wait(timeout=10) in (-signal.SIGKILL, -signal.SIGTERM)
    assert (await repository.get_run(conn, run.id))["status"] == "cancelled"


async def test_forced_delete_removes_bytes_then_rows_and_leaves_nothing(conn, storage,
                                                                        make_reconciler):
    run = await start_running(conn)
    run_uuid = await save_checkpoints(conn, storage, run, [1, 2, 3])
    await repository.finish_run(conn, run.id, run.lease_epoch, "completed")
    assert len(stored_keys(storage, run_uuid)) == 12
    await repository.request_delete(conn, run.id)
    result = await make_reconciler().sweep(conn)
    assert (result.checkpoints_deleted, result.runs_deleted, result.tombstones_cleaned) == (3, 1, 1)
    assert stored_keys(storage, run_uuid) == []
    assert await conn.fetchval("SELECT count(*) FROM training_runs") == 0
    assert await conn.fetchval("SELECT count(*) FROM checkpoints") == 0
    types = await _types(conn, run.id)
    assert types.count("checkpoint.deleted") == 3 and types[-1] == "run.deleted"
    assert (await make_reconciler().sweep(conn)).did_something() is False


async def test_row_deleted_by_hand_stops_its_job_cleans_storage_and_emits_run_deleted(
        conn, storage, sleeper, make_reconciler):
    proc = sleeper()
    run = await start_running(conn, identity=identity_of(proc))
    run_uuid = await save_checkpoints(conn, storage, run, [1])
    await conn.execute("DELETE FROM training_runs WHERE id = $1", run.id)
    assert (await _types(conn, run.id))[-1] == "run.deleted"
    reconciler = make_reconciler()
    await reconciler.sweep(conn)  # asks the job to stop first
    assert proc.wait(timeout=10) == -signal.SIGTERM
    result = await reconciler.sweep(conn)
    assert result.tombstones_cleaned == 1
    assert stored_keys(storage, run_uuid) == []


async def test_orphan_prefixes_go_after_the_grace_and_live_runs_keep_theirs(
        conn, storage, make_reconciler):
    run = await start_running(conn)
    live_uuid = await save_checkpoints(conn, storage, run, [1])
    orphan = "runs/00000000-0000-4000-8000-000000000001/attempt-1/epoch-001/manifest.json"
    from services.common.storage import ObjectRef
    storage.put(ObjectRef(BUCKET, orphan), b"x")
    reconciler = make_reconciler(orphan_grace=0.2)
    assert (await reconciler.sweep(conn)).orphans_deleted == 0  # first seen now
    await asyncio.sleep(0.3)
    assert (await reconciler.sweep(conn)).orphans_deleted == 1
    assert not storage.exists(ObjectRef(BUCKET, orphan))
    assert len(stored_keys(storage, live_uuid)) == 4


async def test_best_is_kept_after_deletes_and_retention_keeps_best_and_latest(
        conn, storage, make_reconciler):
    run = await start_running(conn, epochs=5)
    await save_checkpoints(conn, storage, run, [1, 2, 3, 4, 5],
                           recalls=[0.2, 0.9, 0.3, 0.4, 0.5])
    await repository.finish_run(conn, run.id, run.lease_epoch, "completed")
    reconciler = make_reconciler(keep_latest=2)
    await reconciler.sweep(conn)  # best = epoch 2; epochs 1 and 3 marked
    await reconciler.sweep(conn)  # their bytes and rows go
    rows = await repository.run_checkpoints(conn, run.id)
    assert [(r["epoch"], r["is_best"]) for r in rows] == [(2, True), (4, False), (5, False)]
    # deleting the best moves is_best to the next best of what is left
    await repository.request_checkpoint_delete(conn, rows[0]["id"])
    await reconciler.sweep(conn)
    await reconciler.sweep(conn)
    rows = await repository.run_checkpoints(conn, run.id)
    assert [(r["epoch"], r["is_best"]) for r in rows] == [(5, True)] or \
        [(r["epoch"], r["is_best"]) for r in rows] == [(4, False), (5, True)]
    assert (await repository.get_run(conn, run.id))["best_checkpoint_id"] == next(
        r["id"] for r in rows if r["is_best"])


async def test_two_reconcilers_at_once_reach_the_same_end_state(conn, db_url, storage, sleeper,
                                                                make_reconciler):
    runs = []
    for i in range(4):
        proc = sleeper()
        run = await start_running(conn, name=f"r{i}", identity=identity_of(proc))
        await save_checkpoints(conn, storage, run, [1, 2])
        proc.kill()
        proc.wait()
        runs.append(run)
    await repository.finish_run(conn, runs[3].id, runs[3].lease_epoch, "completed")
    await repository.request_delete(conn, runs[3].id)
    a, b = make_reconciler(), make_reconciler()
    conn_b = await repository.connect(db_url)
    try:
        await asyncio.gather(a.sweep(conn), b.sweep(conn_b))
        await asyncio.gather(a.sweep(conn), b.sweep(conn_b))
    finally:
        await conn_b.close()
    statuses = [(await repository.get_run(conn, r.id) or {}).get("status") for r in runs]
    assert statuses == ["queued", "queued", "queued", None]
    for r in runs[:3]:
        types = await _types(conn, r.id)
        assert types.count("run.requeued") == 1 and types.count("run.resumed") == 1
    assert await conn.fetchval("SELECT count(*) FROM deleted_runs WHERE cleaned_at IS NULL") == 0



async def test_local_launch_is_held_at_its_gate_and_idempotent(launcher):
    from services.dispatcher.launchers import LaunchRequest
    from services.dispatcher.local_job import NOT_LAUNCHED

    request = LaunchRequest(7, 1, 1, "3f1e0a52-8f0e-4c43-9a58-1d2f0c1b7e11")
    job = await launcher.launch(request)
    assert await launcher.launch(request) == job  # the same held job, not a second one
    record = LaunchRecord(7, 1, 1, "local", job.external_id, job.identity)
    assert launcher.state(record) is JobState.ALIVE
    process = psutil.Process(job.identity["pid"])
    assert os.getsid(process.pid) == process.pid  # its own session: a Ctrl-C does not reach it
    assert request.lease_token not in " ".join(process.cmdline())  # the token goes by stdin
    await launcher.abandon(request, job)  # the launch was never recorded: the gate closes
    # its exit status, unless the event loop's child watcher reaped it first
    assert await asyncio.to_thread(process.wait, 60) in (NOT_LAUNCHED, None)
    assert launcher.state(record) is JobState.GONE
    assert Path(job.identity["log_path"]).read_bytes() == b""  # the trainer never ran


async def test_a_claimed_job_still_starting_is_not_taken_for_hung(conn, sleeper,
                                                                   make_reconciler):
    """Lease expired before the trainer's start_run (a slow start): alive and launched less than
    stall_timeout ago, it is left alone; past that it is hung."""
    from services.dispatcher.launchers import process_identity
    proc = sleeper()
    run_id = await repository.insert_run(conn, "slow-start", {})
    (run,) = await repository.claim_runs(conn, "test", 1, 60)
    await repository.mark_launched(conn, run.id, run.lease_epoch, "local", "pid",
                                   process_identity(proc.pid))
    await _expire(conn, run_id)
    assert (await make_reconciler(stall_timeout=60).sweep(conn)).recovered == 0
    assert proc.poll() is None
    await conn.execute("UPDATE run_launches SET launched_at = now() - interval '2 min'")
    assert (await make_reconciler(stall_timeout=60).sweep(conn)).recovered == 1
    assert proc.wait(timeout=10) == -signal.SIGKILL
