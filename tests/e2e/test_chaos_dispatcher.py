"""Chaos: the dispatcher SIGKILLed between claim and launch, between starting a job and
recording it, and while its trainers run, then Ctrl-C'd. Real processes, real Postgres."""
import json
import os
import signal

import pytest

from tests.e2e.chaos import Services, all_final, assert_seq_contiguous, events, wait_until
from tests.e2e.conftest import TINY_RUN

pytestmark = pytest.mark.slow


async def _insert(conn, name):
    return await conn.fetchval("INSERT INTO training_runs (name, config) VALUES ($1, "
                               "$2::text::jsonb) RETURNING id", name, json.dumps(TINY_RUN))


async def test_dispatcher_killed_at_every_step_each_run_launched_once_max_concurrent_holds(
        conn, db_url, data_dir, catalog):
    services = Services(db_url, data_dir)
    try:
        # 1. killed right after its claim committed: run A claimed, nothing started
        a = await _insert(conn, "killed-after-claim")
        crashed = services.dispatcher("d1", SKUTRAIN_DISPATCHER_CRASH_AT="after_claim")
        assert crashed.wait(60) == -9
        # 2. killed after starting B's job, before recording its launch: the job waits at its
        #    gate, sees it close and exits without touching the run
        b = await _insert(conn, "killed-after-start")
        crashed = services.dispatcher("d2", SKUTRAIN_DISPATCHER_CRASH_AT="after_start")
        assert crashed.wait(60) == -9
        assert {r["status"] for r in await conn.fetch("SELECT status FROM training_runs")} == {
            "claimed"}
        assert await conn.fetchval("SELECT count(*) FROM run_launches") == 0

        # 3. a new dispatcher and the reconciler: both leases expire, both runs resume once
        services.dispatcher("d3", max_concurrent=2)
        services.reconciler()

        async def both_started_again():
            return await conn.fetchval(
                "SELECT count(*) FROM training_events WHERE type = 'run.started' "
                "AND attempt = 2 AND run_id = ANY($1::bigint[])", [a, b]) == 2
        try:
            await wait_until(both_started_again, 120, "A and B to start again")
        except AssertionError:
            raise AssertionError(
                [dict(r) for r in await conn.fetch("SELECT id, status, attempt, error_code, "
                                                   "lease_expires_at FROM training_runs")],
                services.log("d3")[-3000:], services.log("reconciler")[-3000:])
        # 4. killed while both trainers run; C queued; a new dispatcher must not exceed 2
        services.kill("d3")
        c = await _insert(conn, "queued-while-full")
        d4 = services.dispatcher("d4", max_concurrent=2)

        async def c_running():
            return await conn.fetchval("SELECT status = 'running' FROM training_runs "
                                       "WHERE id = $1", c)
        await wait_until(c_running, 240, "C to run")
        # 5. Ctrl-C in the dispatcher's terminal (SIGINT to its process group): it stops like
        #    on SIGTERM and C's trainer, in its own session, trains on to the end
        os.killpg(d4.pid, signal.SIGINT)
        assert d4.wait(30) == 0
        rows = await all_final(conn, [a, b, c], timeout=240)
    finally:
        await services.stop_all(conn)

    assert {r["status"] for r in rows.values()} == {"completed"}, rows
    for run_id in (a, b, c):
        evts = await events(conn, run_id)
        assert_seq_contiguous(evts)
        types = [e["type"] for e in evts]
        assert types.count("run.launched") == 1, types  # launched exactly once
        assert types.count("run.started") == 1, types
        assert types.count("run.completed") == 1
        launched = next(e for e in evts if e["type"] == "run.launched")
        started = next(e for e in evts if e["type"] == "run.started")
        assert (launched["attempt"], launched["seq"]) < (started["attempt"], started["seq"])
    for run_id in (a, b):
        types = [(e["attempt"], e["type"]) for e in await events(conn, run_id)]
        assert (1, "run.requeued") in types and (2, "run.launched") in types
    assert rows[c]["attempt"] == 1  # never requeued: the Ctrl-C left its trainer alone
    # max_concurrent: at no time more than 2 runs between run.started and their final event
    spans = await conn.fetch("""
        SELECT run_id, min(created_at) FILTER (WHERE type = 'run.started') AS s,
               max(created_at) FILTER (WHERE type = 'run.completed') AS e
          FROM training_events GROUP BY run_id""")
    for span in spans:
        overlapping = sum(1 for o in spans if o["s"] < span["e"] and span["s"] < o["e"])
        assert overlapping <= 2, spans
