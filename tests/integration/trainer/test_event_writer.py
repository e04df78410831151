"""The event writer against a real Postgres: order, idempotency, a killed connection, the lease."""
import time

import psycopg

from db import repository
from services.trainer.event_writer import EventWriter, EventWriterConfig
from tests.conftest import _libpq


def _claim(db_url) -> repository.Lease:
    with psycopg.connect(_libpq(db_url), autocommit=True) as pg:
        run_id = pg.execute("INSERT INTO training_runs (name) VALUES ('w') RETURNING id").fetchone()[0]
        token = pg.execute("SELECT lease_token FROM claim_runs('t', 1, 60)").fetchone()[0]
    return repository.Lease(run_id, str(token))


def _trainer_events(db_url, run_id):
    with psycopg.connect(_libpq(db_url)) as pg:
        return pg.execute("SELECT seq, type, payload FROM training_events WHERE run_id = %s "
                          "AND attempt = 1 ORDER BY seq", (run_id,)).fetchall()


def _kill_writer(db_url, run_id):
    with psycopg.connect(_libpq(db_url), autocommit=True) as pg:
        return pg.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                          "WHERE application_name = %s", (f"skutrain-trainer:{run_id}",)).fetchone()[0]


def test_events_survive_killed_connection_in_order(db_url):
    lease = _claim(db_url)
    run_id = lease.run_id
    writer = EventWriter(db_url, lease, EventWriterConfig(
        flush_interval=0.01, heartbeat_interval=0.5, lease_seconds=2, retry_base=0.05))
    writer.start()
    killed = 0
    started = time.monotonic()
    for i in range(300):
        t0 = time.perf_counter()
        writer.emit("batch.progress", {"batch": i})
        assert time.perf_counter() - t0 < 0.01  # emit never waits on the database
        if i in (100, 200):
            assert writer.flush(10)
            killed += _kill_writer(db_url, run_id)
        time.sleep(0.002)
    assert writer.flush(30)
    writer.close()
    assert killed == 2
    assert writer.connects >= 3  # reconnected after each kill
    rows = _trainer_events(db_url, run_id)
    batches = [p["batch"] for _, t, p in rows if t == "batch.progress"]
    assert batches == list(range(300))  # nothing lost, nothing doubled, in order
    seqs = [s for s, _, _ in rows]
    assert seqs == list(range(1, len(seqs) + 1))  # no gap
    assert time.monotonic() - started < 30


def test_lost_lease_is_reported_and_writes_stop(db_url):
    lease = _claim(db_url)
    run_id = lease.run_id
    writer = EventWriter(db_url, lease, EventWriterConfig(
        flush_interval=0.01, heartbeat_interval=0.1, lease_seconds=1))
    writer.start()
    writer.emit("epoch.started", {"epoch": 1})
    assert writer.flush(10)
    with psycopg.connect(_libpq(db_url), autocommit=True) as pg:  # another attempt takes over
        pg.execute("UPDATE training_runs SET lease_epoch = lease_epoch + 1 WHERE id = %s", (run_id,))
    writer.emit("epoch.completed", {"epoch": 1})
    deadline = time.monotonic() + 10
    while writer.stop_reason() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.stop_reason() == "lease_lost"
    assert not writer.flush(1)
    writer.close(2)
    assert [t for _, t, _ in _trainer_events(db_url, run_id)] == ["run.claimed", "epoch.started"]


def test_cancel_request_seen_through_heartbeat(db_url):
    lease = _claim(db_url)
    run_id = lease.run_id
    writer = EventWriter(db_url, lease, EventWriterConfig(
        flush_interval=0.01, heartbeat_interval=0.1, lease_seconds=1))
    writer.start()
    assert writer.stop_reason() is None
    with psycopg.connect(_libpq(db_url), autocommit=True) as pg:
        assert pg.execute("SELECT request_cancel(%s)", (run_id,)).fetchone()[0] == "claimed"
    deadline = time.monotonic() + 10
    while writer.stop_reason() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.stop_reason() == "cancelled"
    writer.close()


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_non_finite_numbers_are_stored_as_null_and_the_step_is_heartbeaten(db_url):
    lease = _claim(db_url)
    run_id = lease.run_id
    writer = EventWriter(db_url, lease, EventWriterConfig(
        flush_interval=0.01, heartbeat_interval=0.1, lease_seconds=1))
    writer.start()
    writer.step = 7
    writer.emit("epoch.completed", {"epoch": 1, "loss": {"total": float("nan")},
                                    "val": {"loss": float("inf"), "recall_at_1": 0.5}})
    writer.emit("epoch.started", {"epoch": 2})
    assert writer.flush(10)  # not blocked behind the NaN

    def progress_step():
        with psycopg.connect(_libpq(db_url)) as pg:
            return pg.execute("SELECT progress_step FROM training_runs WHERE id = %s",
                              (run_id,)).fetchone()[0]

    assert _wait_for(lambda: progress_step() == 7)
    writer.close()
    rows = _trainer_events(db_url, run_id)
    completed = next(p for _, t, p in rows if t == "epoch.completed")
    assert completed == {"epoch": 1, "loss": {"total": None},
                         "val": {"loss": None, "recall_at_1": 0.5}}
    assert [t for _, t, _ in rows][-1] == "epoch.started"


def test_a_batch_refused_for_its_content_is_not_retried(db_url):
    lease = _claim(db_url)
    run_id = lease.run_id
    writer = EventWriter(db_url, lease, EventWriterConfig(
        flush_interval=0.01, heartbeat_interval=0.1, lease_seconds=1))
    writer.start()
    writer.emit("batch.progress", {"note": "bad \x00 byte"})  # jsonb refuses \u0000
    assert _wait_for(lambda: writer.stop_reason() == "event_rejected", timeout=5)
    assert writer.rejected.code == "event_rejected"
    assert "batch.progress" in writer.rejected.message
    assert writer.flush(1)  # nothing left waiting: the runner can end the run at once
    assert writer.emit("epoch.started", {"epoch": 1}) == 0  # nothing queued after a refusal
    writer.close(2)
    assert [t for _, t, _ in _trainer_events(db_url, run_id)] == ["run.claimed"]
