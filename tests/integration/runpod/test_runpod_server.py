"""The RunPod-compatible test server, driven by the unmodified SDK on both sides: the client
`runpod.Endpoint` and a worker process running `runpod.serverless.start`."""
import time

import pytest
import requests
import runpod
from runpod.endpoint.helpers import UNAUTHORIZED_MSG

pytestmark = pytest.mark.slow


def endpoint(server, key=None, endpoint_id=None):
    runpod.endpoint_url_base = server.base_url
    return runpod.Endpoint(endpoint_id or server.endpoint_id, api_key=key or server.api_key)


def wait_status(job, statuses, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job.status()
        if status in statuses:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job still {status}")


def test_worker_runs_a_job_and_reports_its_output(runpod_server, echo_worker):
    job = endpoint(runpod_server).run({"run_id": 7})
    assert wait_status(job, {"COMPLETED", "FAILED"}) == "COMPLETED"
    assert job.output() == {"echo": {"run_id": 7}}
    assert runpod_server.payloads == [{"input": {"run_id": 7}}]
    paths = {p for _, p in runpod_server.requests}
    assert any(p.endswith("/job-take/worker-1") for p in paths)
    assert any(p.startswith("/v2/ep-test/job-done/worker-1/") for p in paths)
    runpod_server.wait_for(lambda s: s.pings)  # the SDK's heartbeat process reached us
    assert runpod_server.pings[0]["worker"] == "worker-1"


def test_handler_exception_fails_the_job_with_its_error_text(runpod_server, echo_worker):
    job = endpoint(runpod_server).run({"fail": "the disk is full"})
    assert wait_status(job, {"COMPLETED", "FAILED"}) == "FAILED"
    assert "the disk is full" in runpod_server.job(job.job_id).error


def test_wrong_key_unknown_endpoint_and_rate_limit(runpod_server):
    with pytest.raises(RuntimeError, match="401"):
        endpoint(runpod_server, key="wrong").run({"x": 1})
    assert UNAUTHORIZED_MSG.startswith("401")
    with pytest.raises(requests.HTTPError, match="404"):
        endpoint(runpod_server, endpoint_id="nope").run({"x": 1})
    runpod_server.rate_limit(1)
    with pytest.raises(requests.HTTPError, match="429"):
        endpoint(runpod_server).run({"x": 1})
    assert runpod_server.payloads == []


def test_without_a_worker_the_job_stays_in_queue(runpod_server):
    ep = endpoint(runpod_server)
    job = ep.run({"x": 1})
    time.sleep(0.3)
    assert job.status() == "IN_QUEUE"
    assert ep.health()["jobs"]["inQueue"] == 1
    assert ep.health()["workers"]["idle"] == 0


def test_execution_timeout_stops_the_worker_which_takes_the_next_job(runpod_server, echo_worker):
    runpod_server.execution_timeout = 1.0
    ep = endpoint(runpod_server)
    slow = ep.run({"sleep": 60})
    assert wait_status(slow, {"TIMED_OUT", "COMPLETED", "FAILED"}) == "TIMED_OUT"
    fast = ep.run({"y": 2})  # the worker was freed by the stop signal, not by the 60 s sleep
    assert wait_status(fast, {"COMPLETED", "FAILED"}, timeout=10) == "COMPLETED"
    assert runpod_server.job(slow.job_id).status == "TIMED_OUT"


def test_cancel_reaches_the_running_worker(runpod_server, echo_worker):
    ep = endpoint(runpod_server)
    job = ep.run({"sleep": 60})
    runpod_server.wait_for(lambda s: s.job(job.job_id).status == "IN_PROGRESS")
    assert job.cancel()["status"] == "CANCELLED"
    assert job.status() == "CANCELLED"
    after = ep.run({"z": 3})
    assert wait_status(after, {"COMPLETED", "FAILED"}, timeout=10) == "COMPLETED"
