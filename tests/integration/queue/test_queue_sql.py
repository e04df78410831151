"""The queue and event SQL functions, exercised with raw SQL as a psql user would."""
import asyncpg
import pytest

from db import repository


async def _events(conn, run_id):
    return [(r["attempt"], r["seq"], r["type"]) for r in await repository.run_events(conn, run_id)]


async def test_plain_insert_queues_with_event_and_defaults(conn):
    await conn.execute("INSERT INTO training_runs (name, config, status, attempt) "
                       "VALUES ('a', '{}', 'completed', 7), ('b', DEFAULT, 'running', 3)")
    rows = await conn.fetch("SELECT status, attempt, config FROM training_runs ORDER BY id")
    assert [(r["status"], r["attempt"], r["config"]) for r in rows] == [
        ("queued", 0, {}), ("queued", 0, {})]
    assert await _events(conn, 1) == [(0, 1, "run.queued")]


async def test_status_is_constrained(conn):
    await repository.insert_run(conn, "a", {})
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE training_runs SET status = 'paused'")


async def test_claim_sets_lease_attempt_and_fencing_token(conn):
    for i in range(3):
        await repository.insert_run(conn, f"r{i}", {}, priority=i)
    runs = await repository.claim_runs(conn, "owner-1", 2, 30)
    assert [r.name for r in runs] == ["r2", "r1"]  # priority first
    assert {(r.attempt, r.lease_epoch) for r in runs} == {(1, 1)}
    row = await repository.get_run(conn, runs[0].id)
    assert row["status"] == "claimed" and row["lease_owner"] == "owner-1"
    assert row["lease_expires_at"] is not None
    assert await _events(conn, runs[0].id) == [(0, 1, "run.queued"), (1, 1, "run.claimed")]
    assert await repository.claim_runs(conn, "owner-2", 5, 30) != []
    assert await repository.claim_runs(conn, "owner-2", 5, 30) == []


async def test_stale_lease_epoch_changes_nothing(conn):
    run_id = await repository.insert_run(conn, "a", {})
    (run,) = await repository.claim_runs(conn, "o", 1, 30)
    assert await repository.release_run(conn, run_id, run.lease_epoch, "test")
    (again,) = await repository.claim_runs(conn, "o2", 1, 30)
    assert again.lease_epoch == run.lease_epoch + 1
    before = dict(await repository.get_run(conn, run_id))
    events_before = await _events(conn, run_id)
    stale = run.lease_epoch
    assert not await repository.mark_launched(conn, run_id, stale, "noop", "x")
    assert not await repository.start_run(conn, run_id, stale, 30, {})
    assert not (await repository.heartbeat_run(conn, run_id, stale, 30)).owned
    assert not await repository.finish_run(conn, run_id, stale, "failed", error_code="x")
    with pytest.raises(Exception) as info:
        await repository.append_trainer_events(conn, run_id, stale, 1, [("epoch.started", {})])
    assert info.value.__class__.__name__ == "LeaseLost"
    assert dict(await repository.get_run(conn, run_id)) == before
    assert await _events(conn, run_id) == events_before
    assert await repository.mark_launched(conn, run_id, again.lease_epoch, "noop", "x")
    assert not await repository.mark_launched(conn, run_id, again.lease_epoch, "noop", "y")


async def test_launch_batch_records_each_run_on_its_own_fence_in_input_order(conn):
    ids = [await repository.insert_run(conn, f"r{i}", {}) for i in range(5)]
    runs = {r.id: r for r in await repository.claim_runs(conn, "o", 5, 30)}
    assert await repository.mark_launched(conn, ids[1], runs[ids[1]].lease_epoch, "noop", "old")
    await repository.finish_run(conn, ids[3], runs[ids[3]].lease_epoch, "cancelled")
    batch = [(ids[4], runs[ids[4]].lease_epoch, "job-4", {"pid": 4}),
             (ids[1], runs[ids[1]].lease_epoch, "job-1", {}),       # launched already
             (ids[0], runs[ids[0]].lease_epoch + 1, "job-0", {}),   # stale fencing token
             (ids[3], runs[ids[3]].lease_epoch, "job-3", {}),       # no longer in flight
             (999_999, 1, "job-x", {}),                             # no such run
             (ids[2], runs[ids[2]].lease_epoch, "job-2", {})]
    assert await repository.mark_launched_batch(conn, "noop", batch) == [
        True, False, False, False, False, True]
    launches = await conn.fetch("SELECT run_id, external_job_id, identity FROM run_launches "
                                "ORDER BY run_id")
    assert [(r["run_id"], r["external_job_id"], r["identity"]) for r in launches] == [
        (ids[1], "old", {}), (ids[2], "job-2", {}), (ids[4], "job-4", {"pid": 4})]
    for run_id, job in ((ids[2], "job-2"), (ids[4], "job-4")):
        assert (await _events(conn, run_id))[-1] == (1, 2, "run.launched")
        assert (await repository.get_run(conn, run_id))["external_job_id"] == job
    assert [t for _, _, t in await _events(conn, ids[0])] == ["run.queued", "run.claimed"]
    assert await repository.mark_launched_batch(conn, "noop", []) == []


async def test_trainer_events_are_idempotent_and_gap_free(conn):
    run_id = await repository.insert_run(conn, "a", {})
    (run,) = await repository.claim_runs(conn, "o", 1, 30)
    batch = [("epoch.started", {"epoch": 1}), ("epoch.completed", {"epoch": 1})]
    assert await repository.append_trainer_events(conn, run_id, run.lease_epoch, 1, batch) == 2
    assert await repository.append_trainer_events(conn, run_id, run.lease_epoch, 1, batch) == 2
    await repository.request_cancel(conn, run_id)  # a system event between trainer batches
    assert await repository.append_trainer_events(
        conn, run_id, run.lease_epoch, 2, batch[1:] + [("epoch.started", {"epoch": 2})]) == 3
    events = await _events(conn, run_id)
    assert [e[1] for e in events if e[0] == 1] == [1, 2, 3, 4, 5]
    assert [e[2] for e in events if e[0] == 1] == [
        "run.claimed", "epoch.started", "epoch.completed", "run.cancel_requested", "epoch.started"]
    assert (await repository.get_run(conn, run_id))["current_epoch"] == 1


async def test_cancel_queued_at_once_running_flagged(conn):
    queued = await repository.insert_run(conn, "q", {})
    assert await repository.request_cancel(conn, queued) == "cancelled"
    running = await repository.insert_run(conn, "r", {})
    (run,) = await repository.claim_runs(conn, "o", 1, 30)
    assert await repository.request_cancel(conn, running) == "claimed"
    assert (await repository.heartbeat_run(conn, running, run.lease_epoch, 30)).cancel_requested
    assert (await repository.get_run(conn, queued))["status"] == "cancelled"


async def _checkpoint(conn, run_id, epoch_, lease_epoch, seq):
    await repository.append_trainer_events(conn, run_id, lease_epoch, seq, [("checkpoint.saved", {
        "epoch": epoch_, "manifest_url": f"storage://checkpoints/{epoch_}", "size_bytes": 10,
        "shard_count": 1, "metrics": {"recall_at_1": 0.1 * epoch_}})])


async def test_one_best_per_run_and_restrict_delete(conn):
    run_id = await repository.insert_run(conn, "a", {})
    (run,) = await repository.claim_runs(conn, "o", 1, 30)
    await _checkpoint(conn, run_id, 1, run.lease_epoch, 1)
    await _checkpoint(conn, run_id, 2, run.lease_epoch, 2)
    for seq, epoch_ in ((3, 1), (4, 2)):
        await repository.append_trainer_events(
            conn, run_id, run.lease_epoch, seq, [("checkpoint.best", {"epoch": epoch_, "metrics": {"recall_at_1": 0.2}})])
    rows = await repository.run_checkpoints(conn, run_id)
    assert [(r["epoch"], r["is_best"]) for r in rows] == [(1, False), (2, True)]
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute("UPDATE checkpoints SET is_best = true")
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute("INSERT INTO checkpoints (run_id, attempt, epoch, manifest_url, size_bytes, "
                           "shard_count) VALUES ($1, 1, 2, 'x', 1, 1)", run_id)
    best_id = rows[1]["id"]
    await conn.execute("INSERT INTO trained_models (name, checkpoint_id) VALUES ('m', $1)", best_id)
    with pytest.raises(asyncpg.RestrictViolationError):
        await conn.execute("DELETE FROM checkpoints WHERE id = $1", best_id)
    with pytest.raises(asyncpg.RestrictViolationError):
        await conn.execute("DELETE FROM training_runs WHERE id = $1", run_id)
    assert (await repository.get_run(conn, run_id))["best_checkpoint_id"] == best_id


async def test_every_claim_draws_its_own_lease_token(conn):
    """claim_runs and the claim inside mark_launched_and_claim both hand out the token the
    database holds for that claim, one per run and claim."""
    ids = [await repository.insert_run(conn, f"r{i}", {}) for i in range(4)]
    first = await repository.claim_runs(conn, "d", 2, 30)
    recorded, ahead = await repository.mark_launched_and_claim(
        conn, "noop", [(r.id, r.lease_epoch, f"job-{r.id}", {}) for r in first], "d", 2, 30)
    assert recorded == [True, True] and len(ahead) == 2
    stored = dict(await conn.fetch("SELECT id, lease_token::text FROM training_runs"))
    tokens = [r.lease_token for r in first + ahead]
    assert tokens == [stored[r.id] for r in first + ahead] and len(set(tokens)) == 4
    assert all(len(t) == 36 for t in tokens) and sorted(r.id for r in first + ahead) == ids
    # a run claimed again gets a new token
    assert await repository.release_run(conn, ahead[0].id, ahead[0].lease_epoch, "test")
    [again] = await repository.claim_runs(conn, "d", 1, 30)
    assert again.id == ahead[0].id and again.lease_token not in tokens
