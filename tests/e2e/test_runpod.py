"""dispatcher -> runpod SDK -> RunPod-compatible server on loopback -> a real worker process
(the unmodified `runpod.serverless.start` loop with services.trainer.handler) -> Postgres events
-> checkpoints in S3 (moto's server on loopback, which also holds the catalog); and what the run
says when the handler fails, RunPod times the job out, the user cancels, the key is wrong, no
worker gets the job, or the worker dies mid-run.

One database, catalog, S3 server, RunPod server and worker serve the whole module (a worker
process and a catalog cost seconds each); every test has its own runs, dispatcher and launcher.
The test that kills the worker runs last.
"""
import asyncio
import json
import os
import signal
import uuid

import psutil
import pytest

from db import repository
from db.connection import with_database
from services.catalog.generate import generate_catalog
from services.common.storage import ObjectRef, S3Options, S3Storage, s3_client
from services.dispatcher.runpod_launcher import RunPodLauncher
from services.dispatcher.service import Dispatcher, DispatcherConfig
from services.reconciler.service import Reconciler, ReconcilerConfig
from services.trainer import checkpoints
from tests.conftest import _admin
from tests.e2e.conftest import TINY_RUN, wait_for_status
from tests.support.polling import until
from tests.support.runpod_server import RunPodServer, start_worker
from tests.support.s3 import s3_endpoint  # noqa: F401  (the moto S3 server)

pytestmark = pytest.mark.slow
FINAL = {"completed", "failed", "cancelled"}
MAX_OBJECT_BYTES = 1_000_000  # the smallest checkpoint.max_object_bytes: resume state is split


def config(epochs):
    doc = json.loads(json.dumps(TINY_RUN))
    doc["training"]["epochs"] = epochs
    doc["training"]["early_stopping"] = {"enabled": False}
    doc["checkpoint"] = {"max_object_bytes": MAX_OBJECT_BYTES}
    return doc


class S3Deployment:
    """One physical bucket on the S3 server holding every logical bucket (catalog, checkpoints),
    and the keys to it, which only the worker's environment and the services here know."""

    def __init__(self, endpoint):
        tag = uuid.uuid4().hex[:12]
        self.bucket = f"skutrain-e2e-{tag}"
        self.env = {"SKUTRAIN_STORAGE": "s3", "S3_ENDPOINT_URL": endpoint,
                    "S3_REGION": "us-east-1", "S3_ACCESS_KEY_ID": f"AKIAE2E{tag}",
                    "S3_SECRET_ACCESS_KEY": f"s3-secret-{tag}",
                    "S3_BUCKET": self.bucket, "S3_ADDRESSING_STYLE": "path",
                    "SKUTRAIN_STORAGE_MAX_OBJECT_BYTES": str(MAX_OBJECT_BYTES)}
        self.secrets = (self.env["S3_ACCESS_KEY_ID"], self.env["S3_SECRET_ACCESS_KEY"])
        self.client = s3_client(endpoint_url=endpoint, region="us-east-1",
                                access_key_id=self.secrets[0], secret_access_key=self.secrets[1],
                                addressing_style="path")
        self.storage = S3Storage(self.client, S3Options(bucket=self.bucket,
                                                        max_object_bytes=MAX_OBJECT_BYTES))

    def objects(self, prefix: str) -> dict[str, int]:
        """key -> size of every object under `prefix` of the physical bucket, listed on the
        server."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                       Prefix=prefix)
        return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


class Stack:
    """The module's database, S3 storage, RunPod server and worker processes."""

    def __init__(self, server, db_url, data_dir, s3: S3Deployment):
        self.server, self.db_url, self.data_dir, self.s3 = server, db_url, data_dir, s3
        self.workers: list = []

    def start_worker(self, name):
        env = {"DATABASE_URL": self.db_url, "SKUTRAIN_DATA_DIR": str(self.data_dir),
               "HF_TOKEN": "", "SKUTRAIN_LOG_LEVEL": "INFO", "RUNPOD_DEBUG_LEVEL": "INFO",
               **self.s3.env}
        process = start_worker(self.server, "services.trainer.handler", env, worker_id=name,
                               log_path=self.data_dir / f"{name}.log")
        self.workers.append(process)
        return process

    def launcher(self, **options):
        defaults = dict(endpoint_id=self.server.endpoint_id, api_key=self.server.api_key,
                        base_url=self.server.base_url, database_url=self.db_url,
                        job_settings={"progress_interval": 0}, poll_interval=0.2)
        return RunPodLauncher(**(defaults | options))


@pytest.fixture(scope="module")
def stack(pg_server_url, template_db, tmp_path_factory, s3_endpoint):
    name = f"rp_{uuid.uuid4().hex[:12]}"
    _admin(pg_server_url, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    db_url = with_database(pg_server_url, name)
    data_dir = tmp_path_factory.mktemp("runpod")
    s3 = S3Deployment(s3_endpoint)
    products = generate_catalog(s3.storage, 12, 6, seed=3, image_size=48)

    async def insert_catalog():
        conn = await repository.connect(db_url)
        try:
            await repository.insert_catalog(conn, products)
        finally:
            await conn.close()

    asyncio.run(insert_catalog())
    with RunPodServer(long_poll=0.5) as server:
        stack = Stack(server, db_url, data_dir, s3)
        stack.start_worker("worker-1")
        yield stack
        for process in stack.workers:
            kill_tree(process)
    _admin(pg_server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def conn(stack):
    conn = await repository.connect(stack.db_url)
    yield conn
    await conn.close()


@pytest.fixture
async def services(stack):
    """start(reconciler=False, **launcher_options): a dispatcher (and reconciler) for one test."""
    started = []

    async def start(reconciler=False, **options):
        started.append(Dispatcher(stack.db_url, stack.launcher(**options),
                                  DispatcherConfig(poll_interval=0.3)))
        if reconciler:
            started.append(Reconciler(stack.db_url, [stack.launcher()],
                                      stack.s3.storage,
                                      ReconcilerConfig(poll_interval=0.3, orphan_interval=3600)))
        for service in started:
            await service.start()

    yield start
    for service in started:
        service.stop()
    for service in started:
        await service.wait()
        if isinstance(service, Reconciler):
            for launcher in service.launchers.values():
                await launcher.close()


def trainers(worker) -> list[psutil.Process]:
    """The trainer processes a worker runs (its SDK heartbeat process is a child too)."""
    found = []
    for child in psutil.Process(worker.pid).children(recursive=True):
        try:
            if "--run-id" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def kill_tree(process):
    """SIGKILL a worker, then the trainer it started (a container that dies takes both; the
    worker first, so it cannot report the trainer's death)."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(10)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


async def insert(conn, name, doc):
    return await conn.fetchval("INSERT INTO training_runs (name, config) VALUES ($1, $2) "
                               "RETURNING id", name, doc)


def jobs_of(server, run_id):
    return [j for j in server.jobs.values() if j.input["run_id"] == run_id]


async def test_handler_failure_fails_the_run_with_its_error(conn, stack, services):
    # torch_threads=0 is refused by the worker's settings: the trainer exits 1 before training
    await services(job_settings={"progress_interval": 0, "torch_threads": 0})
    run_id = await insert(conn, "broken-setting", config(1))
    row = await wait_for_status(conn, run_id, FINAL, timeout=60)
    assert row["status"] == "failed" and row["error_code"] == "runpod_job_failed"
    assert "the trainer exited with code 1" in row["error_message"]
    assert "SKUTRAIN_TORCH_THREADS" in row["error_message"]
    assert row["attempt"] == 1  # a handler error is not retried
    assert [j.status for j in jobs_of(stack.server, run_id)] == ["FAILED"]


async def test_remote_timeout_stops_the_trainer_and_fails_the_run(conn, stack, services):
    await services()
    stack.server.execution_timeout = 3.0
    try:
        run_id = await insert(conn, "too-long", config(50))
        row = await wait_for_status(conn, run_id, FINAL, timeout=60)
    finally:
        stack.server.execution_timeout = None
    assert row["status"] == "failed" and row["error_code"] == "runpod_timed_out"
    assert "Execution Timeout" in row["error_message"]
    await until(lambda: asyncio.sleep(0, not trainers(stack.workers[-1])), timeout=20)


async def test_cancel_reaches_the_trainer_on_the_worker(conn, stack, services):
    await services(reconciler=True)
    run_id = await insert(conn, "cancel-me", config(50))
    await until(lambda: conn.fetchval(
        "SELECT count(*) > 0 FROM training_events WHERE run_id = $1 AND type = 'batch.progress'",
        run_id))
    await repository.request_cancel(conn, run_id)
    row = await wait_for_status(conn, run_id, FINAL, timeout=30)
    assert row["status"] == "cancelled"
    (job,) = jobs_of(stack.server, run_id)
    await until(lambda: asyncio.sleep(0, job.status == "COMPLETED"), timeout=20)
    assert job.output == {"run_id": run_id, "attempt": 1, "outcome": "ended"}


async def test_wrong_api_key_fails_the_run_saying_what_to_set(conn, stack, services):
    await services(api_key="not-the-key")
    run_id = await insert(conn, "bad-key", config(1))
    row = await wait_for_status(conn, run_id, FINAL, timeout=20)
    assert row["status"] == "failed" and row["error_code"] == "runpod_unauthorized"
    assert "RUNPOD_API_KEY" in row["error_message"]
    assert jobs_of(stack.server, run_id) == []


async def test_without_a_worker_the_run_says_it_waits_in_the_runpod_queue(conn, stack, services):
    await services(queue_notice_after=0.5)
    stack.server.throttled = True
    try:
        run_id = await insert(conn, "no-worker", config(1))
        event = await until(lambda: conn.fetchrow(
            "SELECT payload FROM training_events WHERE run_id = $1 AND type = 'run.waiting'",
            run_id), timeout=20)
        (job,) = jobs_of(stack.server, run_id)
        assert job.status == "IN_QUEUE"
        assert (await repository.get_run(conn, run_id))["status"] == "claimed"
        await repository.request_cancel(conn, run_id)  # leave nothing queued for the next test
        stack.server.end_job(job.id, "CANCELLED")
    finally:
        stack.server.throttled = False
    assert "waiting in the RunPod queue" in event["payload"]["message"]
    assert event["payload"]["workers"]["throttled"] == 1


async def test_run_trains_on_a_runpod_worker_and_survives_losing_it(conn, stack, services):
    """Attempt 1 dies with its worker after its first checkpoint; RunPod fails the job as a lost
    worker, the run is requeued and attempt 2 resumes on a new worker to completion; each
    attempt's checkpoints are on the S3 server under its own prefix."""
    stack.server.worker_lost_after = 1.5
    await services(reconciler=True)
    run_id = await insert(conn, "runpod", config(4))
    await until(lambda: conn.fetchval(
        "SELECT count(*) >= 1 FROM checkpoints WHERE run_id = $1", run_id), timeout=90)
    kill_tree(stack.workers[-1])
    await until(lambda: conn.fetchrow(
        "SELECT * FROM training_runs WHERE id = $1 AND attempt = 2", run_id), timeout=30)
    stack.start_worker("worker-2")
    row = await wait_for_status(conn, run_id, FINAL, timeout=120)
    assert row["status"] == "completed", (row["error_code"], row["error_message"])

    lost, resumed = sorted(jobs_of(stack.server, run_id), key=lambda j: j.input["attempt"])
    assert lost.status == "FAILED" and "stopped responding" in lost.error
    await until(lambda: asyncio.sleep(0, resumed.status == "COMPLETED"), timeout=20)
    assert resumed.worker_id == "worker-2"
    assert resumed.output == {"run_id": run_id, "attempt": 2, "outcome": "ended"}
    secrets = (stack.db_url, stack.server.api_key, stack.server.worker_key, "postgres",
               *stack.s3.secrets)
    for payload in stack.server.payloads:
        assert set(payload["input"]) == {"run_id", "attempt", "lease_token", "settings"}
        text = json.dumps(payload)
        for secret in secrets:
            assert secret not in text

    events = await repository.run_events(conn, run_id)
    for secret in stack.s3.secrets:
        assert not [e for e in events if secret in json.dumps(e["payload"], default=str)]
    (requeued,) = [e["payload"] for e in events if e["type"] == "run.requeued"]
    assert requeued["reason"] == "worker_crashed" and "stopped responding" in requeued["message"]
    second = [e["type"] for e in events if e["attempt"] == 2]
    assert second[:3] == ["run.claimed", "run.launched", "run.started"]
    assert second[-2:] == ["eval.completed", "run.completed"]
    started = next(e["payload"] for e in events if e["attempt"] == 2 and e["type"] == "run.started")
    assert started["start_epoch"] > 1  # resumed from attempt 1's checkpoint
    ckpts = await repository.run_checkpoints(conn, run_id)
    assert {c["epoch"] for c in ckpts} >= {1, 4} and {c["attempt"] for c in ckpts} == {1, 2}
    # what the S3 server holds: each checkpoint's shards and manifest under its attempt's prefix
    # (logical bucket "checkpoints" inside the deployment's one bucket), none over the limit
    stored = stack.s3.objects(f"{checkpoints.BUCKET}/runs/{row['run_uuid']}/")
    assert {key.split("/")[3] for key in stored} == {"attempt-1", "attempt-2"}
    assert max(stored.values()) <= MAX_OBJECT_BYTES
    for c in ckpts:
        ref = ObjectRef.parse(c["manifest_url"])
        assert ref.bucket == checkpoints.BUCKET
        assert ref.key.startswith(checkpoints.attempt_prefix(str(row["run_uuid"]), c["attempt"]))
        assert f"{ref.bucket}/{ref.key}" in stored
        manifest = checkpoints.read_manifest(stack.s3.storage, ref)
        assert c["size_bytes"] == manifest.total_bytes
        for shard in manifest.shards:
            assert stored[f"{ref.bucket}/{shard.key}"] == shard.size
    assert row["test_metrics"]["recall_at_1"] is not None
    for log in stack.data_dir.glob("worker-*.log"):  # the workers' logs carry the trainers'
        text = log.read_text(errors="replace")
        assert not [secret for secret in stack.s3.secrets if secret in text]
