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


async def test_each_launch_commit_claims_the_next_batch_ahead(db_url, catalog_conn):
    conn = catalog_conn
    ids = [await repository.insert_run(conn, f"r{i}", {}) for i in range(5)]
    d = await _dispatcher(db_url, NoopLauncher(), batch_size=2)
    try:
        ticks = [vars(await d.run_once()) for _ in range(4)]
    finally:
        await d._pool.close()
    # tick 1 claims 2 and, recording their launches, the next 2; tick 3's claim ahead finds 0
    assert [(t["claimed"], t["launched"]) for t in ticks] == [(4, 2), (1, 2), (0, 1), (0, 0)]
    for run_id in ids:
        assert await _types(conn, run_id) == ["run.queued", "run.claimed", "run.launched"]


async def test_claims_ahead_stay_within_the_launchers_free_slots(db_url, catalog_conn):
    conn = catalog_conn
    for i in range(6):
        await repository.insert_run(conn, f"r{i}", {})
    launcher = NoopLauncher()
    launcher.max_concurrent, launcher.watches_jobs = 3, True
    d = await _dispatcher(db_url, launcher, batch_size=2)
    try:
        ticks = [vars(await d.run_once()) for _ in range(3)]
    finally:
        await d._pool.close()
    assert [(t["claimed"], t["launched"]) for t in ticks] == [(3, 2), (0, 1), (0, 0)]
    assert await conn.fetchval("SELECT count(*) FROM training_runs WHERE status = 'queued'") == 3


async def test_stop_puts_runs_claimed_ahead_back_in_the_queue(db_url, catalog_conn):
    conn = catalog_conn
    ids = [await repository.insert_run(conn, f"r{i}", {}) for i in range(4)]
    d = await _dispatcher(db_url, NoopLauncher(), batch_size=2)
    assert vars(await d.run_once())["claimed"] == 4
    d.stop()
    await d._close()
    for run_id in ids[:2]:
        assert await _types(conn, run_id) == ["run.queued", "run.claimed", "run.launched"]
    for run_id in ids[2:]:
        assert (await repository.get_run(conn, run_id))["status"] == "queued"
        events = await repository.run_events(conn, run_id)
        assert [e["type"] for e in events] == ["run.queued", "run.claimed", "run.requeued"]
        assert events[-1]["payload"]["reason"] == "dispatcher stopped"
