"""Superseded resume states: once a run stops training only its latest resumable checkpoint
keeps a resume state, rows first and bytes after; a crash between the two is repaired."""
from db import repository
from services.common.storage import ObjectRef
from services.common.storage_layout import BUCKET, attempt_prefix
from services.reconciler.resume_states import superseded_folders
from tests.integration.reconciler.conftest import (identity_of, save_checkpoints, start_running,
                                                   stored_keys)


def _resume_folders(storage, run_uuid):
    return sorted({k.rsplit("resume/", 1)[0] for k in stored_keys(storage, run_uuid)
                   if "/resume/" in k})


async def _resume_urls(conn, run_id):
    return [(r["epoch"], r["resume_state_url"]) for r in await conn.fetch(
        "SELECT epoch, resume_state_url FROM checkpoints WHERE run_id = $1 ORDER BY epoch",
        run_id)]


def test_superseded_folders_are_those_before_the_kept_epoch_and_attempt():
    keys = [f"runs/u/attempt-{a}/epoch-{e:03d}/resume/{part}"
            for a, e in ((1, 1), (1, 2), (2, 2), (2, 3)) for part in ("part-000", "manifest.json")]
    keys.append("runs/u/attempt-1/epoch-001/manifest.json")  # a model, never a resume folder
    assert superseded_folders(keys, (2, 2)) == ["runs/u/attempt-1/epoch-001/resume/",
                                                "runs/u/attempt-1/epoch-002/resume/"]
    assert superseded_folders(keys, (1, 1)) == []
    assert superseded_folders(keys, None) == []


async def test_finished_run_keeps_only_its_latest_resume_state_and_active_runs_keep_all(
        conn, storage, sleeper, make_reconciler):
    done = await start_running(conn, name="done", epochs=3)
    done_uuid = await save_checkpoints(conn, storage, done, [1, 2, 3])
    await repository.finish_run(conn, done.id, done.lease_epoch, "completed")
    active = await start_running(conn, name="active", epochs=3, identity=identity_of(sleeper()))
    active_uuid = await save_checkpoints(conn, storage, active, [1, 2])
    reconciler = make_reconciler()

    assert (await reconciler.sweep(conn)).resume_states_dropped == 2
    urls = await _resume_urls(conn, done.id)
    assert [(epoch, url is not None) for epoch, url in urls] == [(1, False), (2, False), (3, True)]
    prefix = attempt_prefix(done_uuid, done.attempt)
    assert _resume_folders(storage, done_uuid) == [f"{prefix}epoch-003/"]
    assert storage.exists(ObjectRef.parse(urls[2][1]))
    assert len(stored_keys(storage, done_uuid)) == 3 * 2 + 2  # every model stays
    assert all(url for _, url in await _resume_urls(conn, active.id))  # still training
    assert len(_resume_folders(storage, active_uuid)) == 2
    # settled once: the finished history is never read again
    assert not await conn.fetchval("SELECT checkpoints_dirty FROM training_runs WHERE id = $1",
                                   done.id)
    assert (await reconciler.sweep(conn)).resume_states_dropped == 0


async def test_bytes_left_by_a_crash_after_the_rows_go_on_the_next_pass(
        conn, storage, make_reconciler):
    run = await start_running(conn, epochs=4)
    run_uuid = await save_checkpoints(conn, storage, run, [1, 2])
    await repository.finish_run(conn, run.id, run.lease_epoch, "failed")
    # the rows step ran, then the reconciler died before deleting any byte
    kept = await repository.drop_superseded_resume_states(conn, run.id)
    assert (kept["run_uuid"], kept["kept_epoch"], kept["kept_attempt"]) == (run_uuid, 2, 1)
    assert [url is not None for _, url in await _resume_urls(conn, run.id)] == [False, True]
    assert len(_resume_folders(storage, run_uuid)) == 2
    # a resume folder newer than the kept one (an upload whose row is not stored) is not touched
    newer = f"{attempt_prefix(run_uuid, run.attempt)}epoch-003/resume/part-000"
    storage.put(ObjectRef(BUCKET, newer), b"x")

    assert (await make_reconciler().sweep(conn)).resume_states_dropped == 1
    prefix = attempt_prefix(run_uuid, run.attempt)
    assert _resume_folders(storage, run_uuid) == [f"{prefix}epoch-002/", f"{prefix}epoch-003/"]
    row = await conn.fetchrow("SELECT resume_state_url FROM checkpoints WHERE run_id = $1 "
                              "AND epoch = 2", run.id)
    assert storage.exists(ObjectRef.parse(row["resume_state_url"]))


async def test_active_or_missing_run_is_left_alone(conn, storage):
    run = await start_running(conn, epochs=3)
    await save_checkpoints(conn, storage, run, [1, 2])
    assert await repository.drop_superseded_resume_states(conn, run.id) is None
    assert await repository.drop_superseded_resume_states(conn, 999_999) is None
    assert all(url for _, url in await _resume_urls(conn, run.id))
