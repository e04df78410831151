"""run_attempt against a real Postgres and a local storage, in-process (no dispatcher): a failed
checkpoint upload, a refused resume, a resumed run that ends exactly like an uninterrupted one,
and a cancel during the data download."""
import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from db import repository
from services.catalog.generate import generate_catalog
from services.common.errors import StorageError
from services.common.storage import LocalStorage
from services.trainer.event_writer import EventWriterConfig
from services.trainer.runner import Attempt, TrainerEnvironment, run_attempt

pytestmark = pytest.mark.slow

CONFIG = {
    "model": "tiny-dinov2",
    "training": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "min_lr": 1e-5,
                 "warmup_epochs": 0.5, "image_size": 32, "embedding_dim": 32, "num_workers": 0,
                 "early_stopping": {"enabled": False}},
    "sampler": {"p": 4, "k": 4},
}
FAST_WRITER = EventWriterConfig(flush_interval=0.05, heartbeat_interval=0.2, lease_seconds=30)


class FailingStorage(LocalStorage):
    """A local storage whose writes under `failing` fail, as a full disk or a dead bucket would."""

    def __init__(self, root, failing: str):
        super().__init__(root)
        self.failing = failing

    def put(self, ref, data):
        if self.failing in ref.key:
            raise StorageError(f"upload of {ref.url} failed: 503 Slow Down")
        super().put(ref, data)


@pytest.fixture
async def storage(conn, tmp_path):
    storage = LocalStorage(tmp_path / "storage")
    products = await asyncio.to_thread(generate_catalog, storage, 12, 6, seed=3, image_size=48)
    await repository.insert_catalog(conn, products)
    return storage


def _env(storage, tmp_path, db_url):
    return TrainerEnvironment(database_url=db_url, storage=storage, cache_dir=tmp_path / "cache",
                              device="cpu", progress_interval=0, writer=FAST_WRITER)


async def _queue_and_claim(conn, config, run_id=None):
    """Insert (or, with run_id, find queued) a run, claim and launch it as a dispatcher would."""
    if run_id is None:
        run_id = await conn.fetchval("INSERT INTO training_runs (name, config) "
                                     "VALUES ('runner', $1::text::jsonb) RETURNING id",
                                     json.dumps(config))
    (claimed,) = await repository.claim_runs(conn, "test", 1, 60)
    assert claimed.id == run_id
    assert await repository.mark_launched(conn, run_id, claimed.lease_epoch, "test", None)
    return run_id, claimed.attempt, claimed.lease_token


async def _attempt(env, conn, config=None, run_id=None):
    run_id, attempt, token = await _queue_and_claim(conn, config, run_id)
    status = await asyncio.to_thread(run_attempt, env, run_id, attempt, token)
    return run_id, status, dict(await repository.get_run(conn, run_id))


def _payloads(events, type_, attempt=None):
    return [e["payload"] for e in events
            if e["type"] == type_ and (attempt is None or e["attempt"] == attempt)]


async def test_failed_upload_then_refused_and_exact_resume(conn, db_url, storage, tmp_path):
    # An uninterrupted run: the reference.
    _, status, straight = await _attempt(_env(storage, tmp_path, db_url), conn, CONFIG)
    assert status == "completed", straight["error_message"]
    assert straight["progress_step"] > 0  # the heartbeat carried the step counter

    # Attempt 1: epoch 2's checkpoint upload fails -> the run fails, no row for epoch 2.
    flaky = FailingStorage(storage.root, failing="/epoch-002/")
    run_id, status, row = await _attempt(_env(flaky, tmp_path, db_url), conn, CONFIG)
    assert (status, row["error_code"]) == ("failed", "checkpoint_upload_failed")
    assert "epoch 2" in row["error_message"] and "503 Slow Down" in row["error_message"]
    ckpts = await repository.run_checkpoints(conn, run_id)
    assert [(c["epoch"], c["attempt"]) for c in ckpts] == [(1, 1)]
    (first,) = await conn.fetch("SELECT * FROM checkpoints WHERE run_id = $1", run_id)
    prefix = f"storage://checkpoints/runs/{row['run_uuid']}/attempt-1/epoch-001/"
    assert first["manifest_url"] == prefix + "manifest.json"
    assert first["resume_state_url"] == prefix + "resume/manifest.json"

    # A changed training config cannot continue that state: resume_mismatch, saying why.
    changed = json.loads(json.dumps(CONFIG))
    changed["loss"] = {"triplet_margin": 0.3}
    await conn.execute("UPDATE training_runs SET config = $2::text::jsonb WHERE id = $1",
                       run_id, json.dumps(changed))
    assert await repository.request_resume(conn, run_id) == "queued"
    _, status, row = await _attempt(_env(storage, tmp_path, db_url), conn, run_id=run_id)
    assert (status, row["error_code"]) == ("failed", "resume_mismatch")
    assert "training config" in row["error_message"]
    assert "image manifest" not in row["error_message"]

    # Attempt 3, config restored: resumes after epoch 1 and ends as the uninterrupted run did.
    await conn.execute("UPDATE training_runs SET config = $2::text::jsonb WHERE id = $1",
                       run_id, json.dumps(CONFIG))
    assert await repository.request_resume(conn, run_id) == "queued"
    _, status, resumed = await _attempt(_env(storage, tmp_path, db_url), conn, run_id=run_id)
    assert status == "completed", resumed["error_message"]
    assert resumed["attempt"] == 3

    events = await repository.run_events(conn, run_id)
    (started,) = _payloads(events, "run.started", attempt=3)
    assert started["start_epoch"] == 2 and started["resume_from_checkpoint_id"] == first["id"]
    reference = {p["epoch"]: p for p in _payloads(await repository.run_events(
        conn, straight["id"]), "epoch.completed")}
    again = {p["epoch"]: p for p in _payloads(events, "epoch.completed", attempt=3)}
    assert sorted(again) == [2]
    for epoch in (2,):
        assert again[epoch]["loss"] == reference[epoch]["loss"], epoch
        assert again[epoch]["val"] == reference[epoch]["val"], epoch
    assert resumed["test_metrics"] == straight["test_metrics"]
    assert resumed["current_epoch"] == 2

    ckpts = await repository.run_checkpoints(conn, run_id)
    assert sorted((c["epoch"], c["attempt"]) for c in ckpts) == [(1, 1), (2, 3)]
    assert sum(c["is_best"] for c in ckpts) == 1
    straight_best = next(c for c in await repository.run_checkpoints(conn, straight["id"])
                         if c["is_best"])
    assert next(c for c in ckpts if c["is_best"])["epoch"] == straight_best["epoch"]
    for c in ckpts:  # each attempt wrote under its own prefix
        assert f"/runs/{row['run_uuid']}/attempt-{c['attempt']}/" in c["manifest_url"]


class StalledImageServer:
    """A loopback HTTP server whose every image request hangs until `release()`."""

    def __init__(self):
        self.requested = threading.Event()
        self.released = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requested.set()
                server.released.wait(60)
                self.send_error(503)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def release(self):
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


async def test_cancel_during_the_download_ends_the_run_at_once(conn, db_url, tmp_path):
    server = StalledImageServer()
    try:
        await repository.insert_catalog(conn, [
            {"barcode": f"869{i:07d}", "product_name": f"P{i}", "brand_name": "B",
             "category": "C", "frames_path": None, "frame_count": 0,
             "images": [{"url": f"{server.url}/p{i}/{j}.jpg", "domain": "real",
                         "frame_index": None, "source_key": f"p{i}-{j}"} for j in range(8)]}
            for i in range(12)])
        config = {**CONFIG, "image_config": {"image_types": ["real"]}}
        run_id, attempt, token = await _queue_and_claim(conn, config)
        env = _env(LocalStorage(tmp_path / "storage"), tmp_path, db_url)
        task = asyncio.create_task(asyncio.to_thread(run_attempt, env, run_id, attempt, token))
        assert await asyncio.to_thread(server.requested.wait, 60)  # the download is under way
        assert await repository.request_cancel(conn, run_id) == "running"
        cancelled_at = time.monotonic()
        assert await asyncio.wait_for(task, 30) == "cancelled"
        assert time.monotonic() - cancelled_at < 5  # not after the (hanging) download
    finally:
        server.release()
    row = await repository.get_run(conn, run_id)
    assert row["status"] == "cancelled"
    types = [e["type"] for e in await repository.run_events(conn, run_id)]
    assert "data.prepared" not in types and types[-1] == "run.cancelled"


async def test_a_refused_event_fails_the_run_instead_of_completing_it(conn, db_url, tmp_path):
    run_id, attempt, token = await _queue_and_claim(conn, CONFIG)
    current = Attempt(_env(LocalStorage(tmp_path), tmp_path, db_url),
                      repository.Lease(run_id, token), attempt)
    current.writer.start()
    try:
        assert await asyncio.to_thread(current.load_run) is not None
        current.emit("eval.completed", {"epoch": 1, "split": "test", "overall": {"x": "\x00"}})
        status = await asyncio.to_thread(current.finish, "completed", payload={"best_epoch": 1})
    finally:
        current.writer.close()
    row = await repository.get_run(conn, run_id)
    assert status == row["status"] == "failed"
    assert row["error_code"] == "event_rejected" and "eval.completed" in row["error_message"]
