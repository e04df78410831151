"""dispatcher -> runpod SDK -> RunPod-compatible server on loopback -> a real worker process
(the unmodified `runpod.serverless.start` loop with services.trainer.handler) -> Postgres events
-> checkpoints in storage; and what the run says when RunPod fails, times out, cancels, refuses
the key, has no worker, or loses the worker mid-run."""
import asyncio
import json

import psutil
import pytest

from db import repository
from services.common.storage import LocalStorage, ObjectRef
from services.dispatcher.runpod_launcher import RunPodLauncher
from services.dispatcher.service import Dispatcher, DispatcherConfig
from services.reconciler.service import Reconciler, ReconcilerConfig
from services.trainer import checkpoints
from tests.e2e.conftest import TINY_RUN, wait_for_status
from tests.support.runpod_server import RunPodServer, start_worker, stop_worker

pytestmark = pytest.mark.slow
FINAL = {"completed", "failed", "cancelled"}


def config(epochs):
    doc = json.loads(json.dumps(TINY_RUN))
    doc["training"]["epochs"] = epochs
    doc["training"]["early_stopping"] = {"enabled": False}
    return doc


class Stack:
    """The server, the worker processes and the services of one test."""

    def __init__(self, server, db_url, data_dir):
        self.server, self.db_url, self.data_dir = server, db_url, data_dir
        self.workers: list = []
        self.services: list = []

    def start_worker(self, name="worker-1", **env):
        worker_env = {"DATABASE_URL": self.db_url, "SKUTRAIN_DATA_DIR": str(self.data_dir),
                      "HF_TOKEN": "", "SKUTRAIN_LOG_LEVEL": "INFO", "RUNPOD_DEBUG_LEVEL": "INFO"}
        process = start_worker(self.server, "services.trainer.handler", worker_env | env,
                               worker_id=name, log_path=self.data_dir / f"{name}.log")
        self.workers.append(process)
        return process

    async def start_services(self, reconciler=False, **launcher_options):
        options = dict(endpoint_id=self.server.endpoint_id, api_key=self.server.api_key,
                       base_url=self.server.base_url, database_url=self.db_url,
                       job_settings={"progress_interval": 0}, poll_interval=0.2)
        dispatcher = Dispatcher(self.db_url, RunPodLauncher(**(options | launcher_options)),
                                DispatcherConfig(poll_interval=0.3))
        self.services.append(dispatcher)
        if reconciler:
            self.services.append(Reconciler(
                self.db_url, [RunPodLauncher(**options)], LocalStorage(self.data_dir / "storage"),
                ReconcilerConfig(poll_interval=0.3, orphan_interval=3600)))
        for service in self.services:
            await service.start()

    async def close(self):
        for service in self.services:
            service.stop()
        for service in self.services:
            await service.wait()
        for process in self.workers:
            kill_tree(process)


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
    """SIGKILL a worker and the trainer it started (a container that dies takes both)."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        child.kill()
    stop_worker(process, timeout=5)
    if process.poll() is None:
        process.kill()


@pytest.fixture
async def stack(db_url, data_dir, catalog):
    with RunPodServer(long_poll=0.5) as server:
        stack = Stack(server, db_url, data_dir)
        yield stack
        await stack.close()


async def insert(conn, name, doc):
    return await conn.fetchval("INSERT INTO training_runs (name, config) VALUES ($1, $2) "
                               "RETURNING id", name, doc)


async def until(predicate, timeout=60.0):
    for _ in range(int(timeout / 0.1)):
        if value := await predicate():
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met")


def assert_payloads_hold_no_secrets(server, db_url):
    assert server.payloads
    for payload in server.payloads:
        assert set(payload["input"]) == {"run_id", "attempt", "lease_epoch", "settings"}
        text = json.dumps(payload)
        for secret in (db_url, server.api_key, server.worker_key, "postgres"):
            assert secret not in text


async def test_run_trains_on_a_runpod_worker_and_survives_losing_it(conn, stack, data_dir):
    """Attempt 1 is killed with its worker after its first checkpoint; the job fails as a lost
    worker, the run is requeued and attempt 2 resumes on a new worker to completion."""
    stack.server.worker_lost_after = 1.5
    first = stack.start_worker("worker-1")
    await stack.start_services(reconciler=True)
    run_id = await insert(conn, "runpod", config(3))
    await until(lambda: conn.fetchval(
        "SELECT count(*) >= 1 FROM checkpoints WHERE run_id = $1", run_id), timeout=90)
    kill_tree(first)
    row = await until(lambda: conn.fetchrow(
        "SELECT * FROM training_runs WHERE id = $1 AND attempt = 2", run_id), timeout=30)
    assert row["error_code"] is None or row["status"] != "failed"
    stack.start_worker("worker-2")
    row = await wait_for_status(conn, run_id, FINAL, timeout=120)
    assert row["status"] == "completed", (row["error_code"], row["error_message"])

    lost = [j for j in stack.server.jobs.values() if j.input["attempt"] == 1]
    assert [j.status for j in lost] == ["FAILED"] and "stopped responding" in lost[0].error
    (done,) = [j for j in stack.server.jobs.values() if j.input["attempt"] == 2]
    assert done.status == "COMPLETED" and done.worker_id == "worker-2"
    assert done.output == {"run_id": run_id, "attempt": 2, "outcome": "ended"}
    assert_payloads_hold_no_secrets(stack.server, stack.db_url)

    events = await repository.run_events(conn, run_id)
    second = [e["type"] for e in events if e["attempt"] == 2]
    assert second[:3] == ["run.claimed", "run.launched", "run.started"]
    assert second[-2:] == ["eval.completed", "run.completed"]
    started = next(e["payload"] for e in events if e["attempt"] == 2 and e["type"] == "run.started")
    assert started["start_epoch"] > 1  # resumed from attempt 1's checkpoint
    assert any(e["type"] == "run.requeued" or e["payload"].get("error_code") == "worker_crashed"
               for e in events if e["attempt"] == 1)
    storage = LocalStorage(data_dir / "storage")
    ckpts = await repository.run_checkpoints(conn, run_id)
    assert {c["epoch"] for c in ckpts} == {1, 2, 3}
    for c in ckpts:
        manifest = checkpoints.read_manifest(storage, ObjectRef.parse(c["manifest_url"]))
        assert c["size_bytes"] == manifest.total_bytes
    assert row["test_metrics"]["recall_at_1"] is not None


async def test_handler_failure_fails_the_run_with_its_error(conn, stack):
    stack.start_worker(SKUTRAIN_STORAGE="floppy")
    await stack.start_services()
    run_id = await insert(conn, "broken-worker", config(1))
    row = await wait_for_status(conn, run_id, FINAL, timeout=60)
    assert row["status"] == "failed" and row["error_code"] == "runpod_job_failed"
    assert "the trainer exited with code 1" in row["error_message"]
    assert "unknown SKUTRAIN_STORAGE 'floppy'" in row["error_message"]
    assert row["attempt"] == 1  # a handler error is not retried


async def test_remote_timeout_stops_the_trainer_and_fails_the_run(conn, stack):
    stack.server.execution_timeout = 4.0
    worker = stack.start_worker()
    await stack.start_services()
    run_id = await insert(conn, "too-long", config(50))
    row = await wait_for_status(conn, run_id, FINAL, timeout=60)
    assert row["status"] == "failed" and row["error_code"] == "runpod_timed_out"
    assert "Execution Timeout" in row["error_message"]
    await until(lambda: asyncio.sleep(0, not trainers(worker)), timeout=20)


async def test_cancel_reaches_the_trainer_on_the_worker(conn, stack):
    stack.start_worker()
    await stack.start_services(reconciler=True)
    run_id = await insert(conn, "cancel-me", config(50))
    await until(lambda: conn.fetchval(
        "SELECT count(*) > 0 FROM training_events WHERE run_id = $1 AND type = 'batch.progress'",
        run_id))
    await repository.request_cancel(conn, run_id)
    row = await wait_for_status(conn, run_id, FINAL, timeout=30)
    assert row["status"] == "cancelled"
    (job,) = stack.server.jobs.values()
    await until(lambda: asyncio.sleep(0, job.status in ("COMPLETED", "CANCELLED")), timeout=20)


async def test_wrong_api_key_fails_the_run_saying_what_to_set(conn, stack):
    await stack.start_services(api_key="not-the-key")
    run_id = await insert(conn, "bad-key", config(1))
    row = await wait_for_status(conn, run_id, FINAL, timeout=20)
    assert row["status"] == "failed" and row["error_code"] == "runpod_unauthorized"
    assert "RUNPOD_API_KEY" in row["error_message"]
    assert stack.server.payloads == []


async def test_without_a_worker_the_run_says_it_waits_in_the_runpod_queue(conn, stack):
    await stack.start_services(queue_notice_after=0.5)
    run_id = await insert(conn, "no-worker", config(1))
    event = await until(lambda: conn.fetchrow(
        "SELECT payload FROM training_events WHERE run_id = $1 AND type = 'run.waiting'", run_id),
        timeout=20)
    assert "waiting in the RunPod queue" in event["payload"]["message"]
    row = await repository.get_run(conn, run_id)
    assert row["status"] == "claimed"
    (job,) = stack.server.jobs.values()
    assert job.status == "IN_QUEUE"
