"""Launch records and one run's problem staying that run's: the dispatcher against real Postgres."""
import asyncio
import json

from db import repository
from services.dispatcher.launchers import NoopLauncher
from services.dispatcher.service import Dispatcher, DispatcherConfig


class FlakyLauncher(NoopLauncher):
    """Raises a non-skutrain error for one run, as a connection blip or a library bug would."""

    def __init__(self, bad_run_id):
        super().__init__()
        self.bad_run_id = bad_run_id

    async def launch(self, request):
        if request.run_id == self.bad_run_id:
            raise RuntimeError("boom in the middle of a batch")
        return await super().launch(request)


async def _dispatcher(db_url, launcher, **config):
    d = Dispatcher(db_url, launcher, DispatcherConfig(poll_interval=60, **config))
    d._pool = await repository.create_pool(db_url, min_size=1, max_size=2)
    return d


async def _tick(db_url, launcher, **config):
    d = await _dispatcher(db_url, launcher, **config)
    try:
        return await d.run_once()
    finally:
        await d._pool.close()


async def test_one_bad_run_fails_alone_and_the_batch_launches(db_url, catalog_conn):
    conn = catalog_conn
    ids = [await repository.insert_run(conn, f"r{i}", {}) for i in range(4)]
    result = await _tick(db_url, FlakyLauncher(ids[1]))
    assert (result.claimed, result.launched, result.failed) == (4, 3, 1)
    rows = {i: await repository.get_run(conn, i) for i in ids}
    assert rows[ids[1]]["status"] == "failed"
    assert rows[ids[1]]["error_code"] == "launch_failed"
    assert "boom" in rows[ids[1]]["error_message"]
    for i in (ids[0], ids[2], ids[3]):
        types = [e["type"] for e in await repository.run_events(conn, i)]
        assert types == ["run.queued", "run.claimed", "run.launched"]
    launches = await conn.fetch("SELECT run_id, launcher, external_job_id, launched_at "
                                "FROM run_launches ORDER BY run_id")
    assert [r["run_id"] for r in launches if r["launched_at"]] == [ids[0], ids[2], ids[3]]


async def test_undecodable_config_fails_that_run_with_invalid_config(db_url, catalog_conn):
    conn = catalog_conn
    good = await repository.insert_run(conn, "good", {})
    # the database refuses such documents when written (0004, a trigger since 0008); this
    # checks the dispatcher's own defence
    await conn.execute(
        "ALTER TABLE training_runs DISABLE TRIGGER training_runs_config_within_limits")
    deep = "[" * 3000 + "]" * 3000  # jsonb stores it; Python's decoder recurses too deep
    bad = await conn.fetchval("INSERT INTO training_runs (name, config) VALUES "
                              "('deep', jsonb_build_object('x', $1::text::jsonb)) RETURNING id",
                              deep)
    result = await _tick(db_url, NoopLauncher())
    assert (result.launched, result.failed) == (1, 1)
    assert await conn.fetchval("SELECT error_code FROM training_runs WHERE id = $1",
                               bad) == "invalid_config"
    assert (await repository.get_run(conn, good))["launched_attempt"] == 1


async def test_max_concurrent_counts_live_launches_in_the_database(db_url, catalog_conn):
    conn = catalog_conn
    launcher = NoopLauncher()
    launcher.max_concurrent, launcher.watches_jobs = 2, True
    for i in range(5):
        await repository.insert_run(conn, f"r{i}", {})
    assert (await _tick(db_url, launcher)).launched == 2
    # a new dispatcher (a restart) still counts the two live jobs
    other = NoopLauncher()
    other.max_concurrent, other.watches_jobs = 2, True
    assert (await _tick(db_url, other)).claimed == 0
    await conn.execute("UPDATE run_launches SET ended_at = now() WHERE run_id = "
                       "(SELECT min(run_id) FROM run_launches)")
    assert (await _tick(db_url, other)).launched == 1


async def test_one_runs_events_reach_consumers_in_seq_order_under_concurrent_launches(
        db_url, conn):
    """Writers of other runs' events and of this run's events interleave on many connections;
    a consumer following the commit-safe cursor sees every run's (attempt, seq) increasing."""
    n_runs, writers = 12, 6
    ids = [await repository.insert_run(conn, f"r{i}", {}) for i in range(n_runs)]
    pool = await repository.create_pool(db_url, min_size=writers, max_size=writers + 2)
    seen: dict[int, list[tuple[int, int]]] = {}
    done = asyncio.Event()

    async def consume():
        cursor = repository.EventCursor()
        async with pool.acquire() as c:
            while True:
                rows = await repository.events_after(c, cursor, 500)
                for row in rows:
                    cursor = repository.EventCursor(row["txid"], row["id"])
                    seen.setdefault(row["run_id"], []).append((row["attempt"], row["seq"]))
                if not rows:
                    if done.is_set():
                        return
                    await asyncio.sleep(0.01)

    async def life(run):
        async with pool.acquire() as c:
            await repository.mark_launched(c, run.id, run.lease_epoch, "noop", "x")
            await repository.start_run(c, run.id, run.lease_epoch, 60, {})
            for seq in range(1, 16, 3):
                await repository.append_trainer_events(
                    c, run.id, run.lease_epoch, seq,
                    [("batch.progress", {"batch": seq + k}) for k in range(3)])
            await repository.request_cancel(c, run.id)
            await repository.finish_run(c, run.id, run.lease_epoch, "cancelled")

    consumer = asyncio.create_task(consume())
    async with pool.acquire() as c:
        runs = await repository.claim_runs(c, "t", n_runs, 60)
    await asyncio.gather(*(life(r) for r in runs))
    done.set()
    await consumer
    await pool.close()
    for run_id in ids:
        order = seen[run_id]
        assert order == sorted(order), (run_id, order)
        assert len(order) == len(set(order)) == 1 + 1 + 1 + 1 + 15 + 1 + 1
    assert json.dumps(seen)  # every run reached the consumer


async def _types(conn, run_id):
    return [e["type"] for e in await repository.run_events(conn, run_id)]


async def test_a_tick_launches_batch_by_batch_each_commit_claiming_the_batch_after_next(
        db_url, catalog_conn):
    conn = catalog_conn
    ids = [await repository.insert_run(conn, f"r{i}", {}) for i in range(5)]
    d = await _dispatcher(db_url, NoopLauncher(), batch_size=2)
    try:
        ticks = [vars(await d.run_once()) for _ in range(2)]
    finally:
        await d._pool.close()
    assert [(t["claimed"], t["launched"]) for t in ticks] == [(5, 5), (0, 0)]
    txid = {}
    for run_id in ids:
        events = await repository.run_events(conn, run_id)
        assert [e["type"] for e in events] == ["run.queued", "run.claimed", "run.launched"]
        txid[run_id] = dict(await conn.fetch(
            "SELECT type, txid::text FROM training_events WHERE run_id = $1", run_id))
    r1, r2, r3, r4, r5 = ids
    # the first claim takes two batches; each launch commit records one batch and claims the
    # batch after next: 1-2 launched with 5's claim, then 3-4, then 5, three commits
    assert len({txid[r]["run.claimed"] for r in (r1, r2, r3, r4)}) == 1
    assert txid[r5]["run.claimed"] == txid[r1]["run.launched"] == txid[r2]["run.launched"]
    assert txid[r3]["run.launched"] == txid[r4]["run.launched"]
    assert len({txid[r]["run.launched"] for r in (r1, r3, r5)}) == 3


async def test_claims_ahead_stay_within_the_launchers_free_slots(db_url, catalog_conn):
    conn = catalog_conn
    for i in range(6):
        await repository.insert_run(conn, f"r{i}", {})
    launcher = NoopLauncher()
    launcher.max_concurrent, launcher.watches_jobs = 3, True
    d = await _dispatcher(db_url, launcher, batch_size=2)
    try:
        ticks = [vars(await d.run_once()) for _ in range(2)]
    finally:
        await d._pool.close()
    assert [(t["claimed"], t["launched"]) for t in ticks] == [(3, 3), (0, 0)]
    assert await conn.fetchval("SELECT count(*) FROM training_runs WHERE status = 'queued'") == 3


class StoppingLauncher(NoopLauncher):
    """Stops its dispatcher while it launches the first run, as SIGTERM in mid-tick would."""

    dispatcher: Dispatcher

    async def launch(self, request):
        self.dispatcher.stop()
        return await super().launch(request)


async def test_stop_in_mid_tick_puts_the_runs_not_started_back_in_the_queue(db_url,
                                                                            catalog_conn):
    conn = catalog_conn
    ids = [await repository.insert_run(conn, f"r{i}", {}) for i in range(4)]
    launcher = StoppingLauncher()
    d = await _dispatcher(db_url, launcher, batch_size=2)
    launcher.dispatcher = d
    result = vars(await d.run_once())
    await d._close()
    # both batches were claimed at once; the job started when the stop came is launched
    assert (result["claimed"], result["launched"], result["released"]) == (4, 1, 3)
    assert await _types(conn, ids[0]) == ["run.queued", "run.claimed", "run.launched"]
    for run_id in ids[1:]:
        assert (await repository.get_run(conn, run_id))["status"] == "queued"
        events = await repository.run_events(conn, run_id)
        assert [e["type"] for e in events] == ["run.queued", "run.claimed", "run.requeued"]
        assert events[-1]["payload"]["reason"] == "dispatcher stopped"


class CancelledLauncher(NoopLauncher):
    """Its first launch is cancelled, as the dispatcher's task would be in a hard shutdown."""

    async def launch(self, request):
        raise asyncio.CancelledError


async def test_a_cancelled_tick_releases_the_runs_claimed_ahead_on_close(db_url, catalog_conn):
    conn = catalog_conn
    ids = [await repository.insert_run(conn, f"r{i}", {}) for i in range(4)]
    d = await _dispatcher(db_url, CancelledLauncher(), batch_size=2)
    try:
        await d.run_once()
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the launch's cancellation did not reach run_once")
    await d._close()
    # the batch being started stays claimed until its lease expires (the reconciler requeues
    # it); the batch claimed ahead goes back to the queue at once
    assert [(await repository.get_run(conn, i))["status"] for i in ids] == [
        "claimed", "claimed", "queued", "queued"]
    assert (await repository.run_events(conn, ids[2]))[-1]["payload"]["reason"] == (
        "dispatcher stopped")
