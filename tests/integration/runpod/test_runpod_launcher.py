"""RunPodLauncher through the runpod SDK against the RunPod-compatible server on loopback (no
worker here: RunPod's verdicts are set on the server with end_job)."""
import asyncio
import json
import socket

import pytest

from db import repository
from services.common import metrics
from services.common.errors import (
    RunPodEndpointNotFound,
    RunPodRateLimited,
    RunPodUnauthorized,
    RunPodUnreachable,
)
from services.dispatcher.launchers import JobState, LaunchRecord, LaunchRequest
from services.dispatcher.runpod_launcher import RunPodLauncher
from services.dispatcher.service import Dispatcher, DispatcherConfig
from tests.support.polling import until

SECRET_DB_URL = "postgresql://skutrain:db-password-123@db.internal:5432/skutrain"
TOKEN = "8d0c2f4e-5b7a-4c1e-9f3d-2a6b8e1c0d47"  # a claim's lease token


def make_launcher(server, db_url, **kwargs):
    options = dict(endpoint_id=server.endpoint_id, api_key=server.api_key, base_url=server.base_url,
                   database_url=db_url, job_settings={"progress_interval": 0.5, "log_level": "INFO"},
                   poll_interval=0.1, backoff_base=0.01, backoff_cap=0.05)
    return RunPodLauncher(**(options | kwargs))


async def test_payload_carries_ids_and_non_secret_settings_only_and_launch_is_idempotent(
        runpod_server, db_url):
    launcher = make_launcher(runpod_server, db_url)
    try:
        request = LaunchRequest(run_id=41, attempt=2, lease_epoch=7, lease_token=TOKEN)
        first = await launcher.launch(request)
        again = await launcher.launch(request)
    finally:
        await launcher.close()
    assert first == again and len(runpod_server.payloads) == 1
    (payload,) = runpod_server.payloads
    assert payload == {"input": {"run_id": 41, "attempt": 2, "lease_token": TOKEN,
                                 "settings": {"progress_interval": 0.5, "log_level": "INFO"}}}
    text = json.dumps(payload)
    for secret in (runpod_server.api_key, runpod_server.worker_key, db_url, "password", "hf_",
                   "postgres"):
        assert secret not in text
    assert first.identity == {"endpoint_id": runpod_server.endpoint_id, "job_id": first.external_id}


async def test_refusals_become_errors_that_say_what_to_do(runpod_server, db_url):
    request = LaunchRequest(1, 1, 1, TOKEN)
    cases = [
        (dict(api_key="wrong"), RunPodUnauthorized, "RUNPOD_API_KEY"),
        (dict(endpoint_id="nope"), RunPodEndpointNotFound, "RUNPOD_ENDPOINT_ID"),
    ]
    for options, error, hint in cases:
        launcher = make_launcher(runpod_server, db_url, **options)
        with pytest.raises(error, match=hint):
            await launcher.launch(request)
        await launcher.close()
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/v2"
    launcher = make_launcher(runpod_server, db_url, base_url=closed)
    with pytest.raises(RunPodUnreachable, match="RUNPOD_ENDPOINT_BASE_URL"):
        await launcher.launch(request)
    await launcher.close()
    runpod_server.client_delay = 1.0
    launcher = make_launcher(runpod_server, db_url, request_timeout=0.2)
    with pytest.raises(RunPodUnreachable, match="TimeoutError"):
        await launcher.launch(request)
    await launcher.close()
    assert runpod_server.payloads == []


async def test_rate_limiting_backs_off_then_launches_or_gives_up(runpod_server, db_url):
    launcher = make_launcher(runpod_server, db_url, rate_limit_retries=3)
    before = metrics.RUNPOD_RATE_LIMITED._value.get()
    try:
        runpod_server.rate_limit(2)
        job = await launcher.launch(LaunchRequest(5, 1, 1, TOKEN))
        assert runpod_server.job(job.external_id).status == "IN_QUEUE"
        assert metrics.RUNPOD_RATE_LIMITED._value.get() - before == 2
        runpod_server.rate_limit(10)
        with pytest.raises(RunPodRateLimited, match="--max-concurrent"):
            await launcher.launch(LaunchRequest(6, 1, 1, TOKEN))
    finally:
        await launcher.close()
    assert len(runpod_server.payloads) == 1


@pytest.fixture
async def runpod_dispatcher(db_url, catalog_conn, runpod_server):
    launcher = make_launcher(runpod_server, db_url, queue_notice_after=0.3)
    dispatcher = Dispatcher(db_url, launcher, DispatcherConfig(poll_interval=0.2))
    await dispatcher.start()
    task = asyncio.create_task(dispatcher.wait())
    yield dispatcher
    dispatcher.stop()
    await task


async def launched_run(conn, server, name):
    run_id = await repository.insert_run(conn, name, {})
    row = await until(lambda: conn.fetchrow(
        "SELECT * FROM run_launches WHERE run_id = $1 AND external_job_id IS NOT NULL", run_id))
    assert server.job(row["external_job_id"]).input["run_id"] == run_id
    return run_id, row


async def test_runs_end_with_runpods_verdict(conn, runpod_server, runpod_dispatcher):
    error = json.dumps({"error_type": "<class 'RuntimeError'>", "error_message": "CUDA out of memory"})
    verdicts = [("FAILED", error, "runpod_job_failed", "CUDA out of memory"),
                ("TIMED_OUT", None, "runpod_timed_out", "Execution Timeout"),
                ("CANCELLED", None, "runpod_cancelled", "cancelled outside skutrain")]
    for status, text, code, message in verdicts:
        run_id, launch = await launched_run(conn, runpod_server, status)
        runpod_server.end_job(launch["external_job_id"], status, text)
        run = await until(lambda: conn.fetchrow(
            "SELECT * FROM training_runs WHERE id = $1 AND status = 'failed'", run_id))
        assert run["error_code"] == code and message in run["error_message"]
        ended = await until(lambda: conn.fetchrow(
            "SELECT * FROM run_launches WHERE run_id = $1 AND ended_at IS NOT NULL", run_id))
        assert ended["attempt"] == 1  # failed, not requeued
    failures = metrics.LAUNCH_FAILURES.labels(launcher="runpod", error_code="runpod_timed_out")
    assert failures._value.get() >= 1


async def test_queued_job_holds_the_lease_and_the_run_says_it_waits(conn, runpod_server,
                                                                    runpod_dispatcher):
    run_id, launch = await launched_run(conn, runpod_server, "waiting")
    first_lease = (await repository.get_run(conn, run_id))["lease_expires_at"]
    events = await until(lambda: conn.fetch(
        "SELECT payload FROM training_events WHERE run_id = $1 AND type = 'run.waiting'", run_id))
    payload = events[0]["payload"]
    assert "waiting in the RunPod queue" in payload["message"]
    assert payload["workers"]["idle"] == 0 and payload["external_job_id"] == launch["external_job_id"]
    run = await repository.get_run(conn, run_id)
    assert run["status"] == "claimed" and run["lease_expires_at"] > first_lease
    assert runpod_server.job(launch["external_job_id"]).status == "IN_QUEUE"
    record = LaunchRecord.from_row(launch)
    launcher = runpod_dispatcher.launcher
    assert launcher.state(record) is JobState.ALIVE
    launcher.stop(record, force=False)  # queued: no trainer to honour a cancel, so at once
    await until(lambda: asyncio.sleep(0, launcher.state(record) is JobState.GONE))
    assert runpod_server.job(launch["external_job_id"]).status == "CANCELLED"


async def test_only_a_forced_stop_cancels_a_running_job(conn, runpod_server, runpod_dispatcher):
    run_id, launch = await launched_run(conn, runpod_server, "running")
    job = runpod_server.job(launch["external_job_id"])
    job.status, job.worker_id = "IN_PROGRESS", "worker-x"  # as if a worker had taken it
    record = LaunchRecord.from_row(launch)
    launcher = runpod_dispatcher.launcher
    await until(lambda: asyncio.sleep(0, launcher.statuses[job.id].status == "IN_PROGRESS"))
    launcher.stop(record, force=False)  # graceful: the trainer honours the cancel request itself
    await asyncio.sleep(0.3)
    assert job.status == "IN_PROGRESS"
    launcher.stop(record, force=True)
    await until(lambda: asyncio.sleep(0, launcher.state(record) is JobState.GONE))
    assert job.status == "CANCELLED"
    assert list(runpod_server._stop_signals["worker-x"]) == [job.id]  # the worker will be told
