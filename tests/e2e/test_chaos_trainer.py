"""Chaos: a trainer SIGKILLed mid-epoch and a trainer that hangs (SIGSTOP), with two
reconcilers running at once. Real dispatcher, reconciler and trainer processes, real Postgres."""
import json
import os
import signal

import pytest

from tests.e2e.chaos import (Services, all_final, assert_seq_contiguous, events, trainer_pid,
                             wait_until)
from tests.e2e.conftest import TINY_RUN

pytestmark = pytest.mark.slow


async def _insert(conn, name, epochs):
    config = json.loads(json.dumps(TINY_RUN))
    config["training"]["epochs"] = epochs
    # 64 px: four times the work of a batch at 32 px, so an epoch outlasts the event writer's lag
    # on a loaded machine and a signal sent "mid-epoch 2" lands before the run ends
    config["training"]["image_size"] = 64
    config["training"]["early_stopping"] = {"enabled": False}
    return await conn.fetchval("INSERT INTO training_runs (name, config) VALUES ($1, "
                               "$2::text::jsonb) RETURNING id", name, json.dumps(config))


async def _signal_mid_epoch_two(conn, signals: dict[int, signal.Signals]) -> None:
    """Send each run's trainer its signal as soon as epoch 1's checkpoint is stored and epoch 2
    is under way; the runs are watched together, so one run's wait never lets another run on."""
    pending = dict(signals)

    async def all_sent():
        for run_id, sig in list(pending.items()):
            row = await conn.fetchrow(
                "SELECT l.identity FROM run_launches l WHERE l.run_id = $1 AND l.attempt = 1 "
                "AND EXISTS (SELECT 1 FROM checkpoints c WHERE c.run_id = $1 AND c.epoch = 1) "
                "AND EXISTS (SELECT 1 FROM training_events e WHERE e.run_id = $1 "
                "            AND e.type = 'batch.progress' AND (e.payload->>'epoch')::int = 2)",
                run_id)
            pid = row and trainer_pid(row["identity"])
            if pid:
                os.killpg(pid, sig)
                del pending[run_id]
        return not pending
    await wait_until(all_sent, 180, "epoch 2 of attempt 1 to run", interval=0.05)


def _assert_resumed_and_completed(evts, row, epochs) -> int:
    """The run resumed once, from attempt 1's last checkpoint (epoch k), and attempt 2 trained
    exactly epochs k+1..epochs; returns k."""
    assert row["status"] == "completed", (row["error_code"], row["error_message"])
    assert_seq_contiguous(evts)
    (resumed,) = [e["payload"] for e in evts if e["type"] == "run.resumed"]
    k = resumed["epoch"]
    assert 1 <= k < epochs and resumed["remaining_epochs"] == epochs - k, resumed
    done = [(e["attempt"], e["payload"]["epoch"]) for e in evts if e["type"] == "epoch.completed"]
    first = [epoch for attempt, epoch in done if attempt == 1]
    assert first[:k] == list(range(1, k + 1)) and len(first) <= k + 1, done  # k+1: no checkpoint
    assert [epoch for attempt, epoch in done if attempt == 2] == list(range(k + 1, epochs + 1))
    assert row["current_epoch"] == epochs
    types = [(e["attempt"], e["type"]) for e in evts]
    assert types.count((2, "run.launched")) == 1 and types.count((2, "run.completed")) == 1
    # no event lost or duplicated: each (attempt, seq) once
    assert len({(e["attempt"], e["seq"]) for e in evts}) == len(evts)
    return k


async def test_killed_and_hung_trainers_resume_from_their_last_checkpoint(
        conn, db_url, data_dir, catalog):
    """Run K's trainer is SIGKILLed mid-epoch 2 (the dispatcher sees the pid gone at once); run
    H's is SIGSTOPped there (alive, silent: its lease expires and the reconciler kills it). Both
    resume from epoch 1's checkpoint and complete; two reconcilers run at once throughout."""
    # five epochs, so a trainer whose events reach the database an epoch or two late (a loaded
    # machine) is still mid-run when the signal lands (and see the image size in _insert)
    epochs = 5
    services = Services(db_url, data_dir)
    try:
        services.dispatcher(max_concurrent=2)
        services.reconciler("reconciler-a")
        services.reconciler("reconciler-b")
        killed = await _insert(conn, "kill-9-trainer", epochs)
        hung = await _insert(conn, "sigstop-trainer", epochs)
        await _signal_mid_epoch_two(conn, {killed: signal.SIGKILL, hung: signal.SIGSTOP})
        rows = await all_final(conn, [killed, hung], timeout=300)
    finally:
        await services.stop_all(conn)
    for run_id, reason in ((killed, "worker_crashed"), (hung, "stalled")):
        evts = await events(conn, run_id)
        k = _assert_resumed_and_completed(evts, rows[run_id], epochs)
        requeued = [e for e in evts if e["type"] == "run.requeued"]
        assert [e["payload"]["reason"] for e in requeued] == [reason], requeued
        ckpts = await conn.fetch("SELECT attempt, epoch, is_best FROM checkpoints "
                                 "WHERE run_id = $1 AND attempt = 2 ORDER BY epoch", run_id)
        assert [c["epoch"] for c in ckpts] == list(range(k + 1, epochs + 1)), (
            run_id, [(e["attempt"], e["seq"], e["type"], e["payload"]) for e in evts
                     if e["type"] not in ("batch.progress",)])
        assert await conn.fetchval("SELECT count(*) FROM checkpoints WHERE run_id = $1 "
                                   "AND is_best", run_id) == 1
