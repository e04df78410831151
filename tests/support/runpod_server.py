"""A RunPod-compatible serverless API on loopback that speaks both sides of the protocol.

Client side (what the `runpod` SDK's `Endpoint` calls through `RUNPOD_ENDPOINT_BASE_URL`):
`POST /v2/{endpoint}/run`, `GET /v2/{endpoint}/status/{job}`, `GET /v2/{endpoint}/stream/{job}`,
`POST /v2/{endpoint}/cancel/{job}`, `GET /v2/{endpoint}/health`, with `Authorization: Bearer KEY`.

Worker side (what the unmodified `runpod.serverless.start` loop polls, see `worker_env()`):
job-take GET (long-polled, `$ID` = worker id, the SDK appends `&job_in_progress=`), job-done POST
(JSON text sent form-encoded, `{"output": ...}` or `{"error": ...}`), stream POST, ping GET, and
the job-stop long-poll that delivers cancels and timeouts to a running worker.

Controls for tests: `payloads` (every /run body received), `rate_limit(n)` (the next n client
calls get 429), `execution_timeout` (IN_PROGRESS longer than this -> TIMED_OUT and stopped),
`worker_lost_after` (a worker silent this long fails its job), `client_delay` (a slow network),
`throttled` (no worker gets a job), `end_job` (RunPod ends a job), and no worker at all (a job
stays IN_QUEUE). The server runs its own event loop in a thread, so sync and async tests can use
it.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


@dataclass
class RemoteJob:
    id: str
    input: dict[str, Any]
    status: str = "IN_QUEUE"
    created_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    output: Any = None
    error: str | None = None
    stream: list[Any] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        now = time.monotonic()
        doc: dict[str, Any] = {"id": self.id, "status": self.status,
                               "delayTime": int(((self.started_at or now) - self.created_at) * 1000)}
        if self.started_at is not None:
            doc["executionTime"] = int(((self.finished_at or now) - self.started_at) * 1000)
            doc["workerId"] = self.worker_id
        if self.output is not None:
            doc["output"] = self.output
        if self.error is not None:
            doc["error"] = self.error
        return doc


class RunPodServer:
    """One endpoint id, one client API key, one worker key; start() binds an ephemeral port."""

    def __init__(self, endpoint_id: str = "ep-test", api_key: str = "rp-test-key",
                 worker_key: str = "rp-worker-key", *, long_poll: float = 1.0):
        self.endpoint_id = endpoint_id
        self.api_key = api_key
        self.worker_key = worker_key
        self.long_poll = long_poll
        self.execution_timeout: float | None = None
        self.client_delay = 0.0  # seconds each client-side answer is held (network timeouts)
        self.throttled = False  # workers get no job (RunPod has no GPU for them): IN_QUEUE stays
        self.worker_lost_after: float | None = None
        self.payloads: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.jobs: dict[str, RemoteJob] = {}
        self.worker_seen: dict[str, float] = {}
        self.pings: list[dict[str, str]] = []
        # worker -> {job id: when to (re)send its stop}; a stop that reaches the SDK before it
        # registered the job's task is lost there, so it is re-sent every second until the
        # worker takes jobs again with job_in_progress=0
        self._stop_signals: dict[str, dict[str, float]] = {}
        self._rate_limited = 0
        self._lock = threading.RLock()  # wait_for predicates may call job()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # -- addresses ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """What RUNPOD_ENDPOINT_BASE_URL points at."""
        return f"http://127.0.0.1:{self.port}/v2"

    def worker_env(self, worker_id: str = "worker-1", ping_ms: int = 1000) -> dict[str, str]:
        """Environment that makes `runpod.serverless.start` talk to this server (the SDK pings
        every ping_ms // 1000 seconds, so under 1000 breaks its heartbeat process). The SDK's
        automatic host checks are off: they judge the machine, not the code under test (a CI
        disk under 10% free, or no route to 8.8.8.8, makes the worker exit before its first job)."""
        base = f"{self.base_url}/{self.endpoint_id}"
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=test",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=test",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=test",
            "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID?gpu=test",
            "RUNPOD_PING_INTERVAL": str(ping_ms),
            "RUNPOD_POD_ID": worker_id,
            "RUNPOD_AI_API_KEY": self.worker_key,
            "RUNPOD_ENDPOINT_ID": self.endpoint_id,
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        }

    # -- controls -------------------------------------------------------------------------
    def rate_limit(self, count: int) -> None:
        """The next `count` client-side requests get 429."""
        with self._lock:
            self._rate_limited = count

    def end_job(self, job_id: str, status: str, error: str | None = None) -> None:
        """End a job as RunPod would (FAILED, TIMED_OUT, CANCELLED...), whoever runs it."""
        with self._lock:
            self._finish(self.jobs[job_id], status, error=error)

    def job(self, job_id: str) -> RemoteJob:
        with self._lock:
            return self.jobs[job_id]

    def wait_for(self, predicate, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(self):
                    return
            time.sleep(0.05)
        raise AssertionError(f"runpod server condition not met in {timeout}s: "
                             f"{[j.view() for j in self.jobs.values()]}")

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "RunPodServer":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True,
                                        name="runpod-server")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the RunPod test server did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> "RunPodServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._startup())
        ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _startup(self) -> None:
        app = web.Application(middlewares=[self._record])
        ep = "/v2/{endpoint}"
        app.add_routes([
            web.post(f"{ep}/run", self._run),
            web.get(f"{ep}/status/{{job}}", self._status),
            web.post(f"{ep}/status/{{job}}", self._status),
            web.get(f"{ep}/stream/{{job}}", self._stream),
            web.post(f"{ep}/cancel/{{job}}", self._cancel),
            web.get(f"{ep}/health", self._health),
            web.get(f"{ep}/job-take/{{worker}}", self._job_take),
            web.get(f"{ep}/job-stop/{{worker}}", self._job_stop),
            web.post(f"{ep}/job-done/{{worker}}/{{job}}", self._job_done),
            web.post(f"{ep}/job-stream/{{worker}}/{{job}}", self._job_stream),
            web.get(f"{ep}/ping/{{worker}}", self._ping),
        ])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _shutdown(self) -> None:
        self._watchdog.cancel()
        await self._runner.cleanup()

    # -- shared checks --------------------------------------------------------------------
    @web.middleware
    async def _record(self, request: web.Request, handler):
        with self._lock:
            self.requests.append((request.method, request.path))
        return await handler(request)

    async def _client_check(self, request: web.Request) -> web.Response | None:
        """401 for a wrong key, 404 for an unknown endpoint, 429 while rate limited."""
        if self.client_delay:
            await asyncio.sleep(self.client_delay)  # a network that hangs
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        if request.match_info["endpoint"] != self.endpoint_id:
            return web.json_response({"error": "endpoint not found"}, status=404)
        with self._lock:
            if self._rate_limited > 0:
                self._rate_limited -= 1
                return web.json_response({"error": "Too Many Requests"}, status=429,
                                         headers={"Retry-After": "0"})
        return None

    def _worker_check(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != self.worker_key:
            return web.json_response({"error": "Unauthorized"}, status=401)
        if request.match_info["endpoint"] != self.endpoint_id:
            return web.json_response({"error": "endpoint not found"}, status=404)
        with self._lock:
            self.worker_seen[request.match_info["worker"]] = time.monotonic()
        return None

    def _finish(self, job: RemoteJob, status: str, *, output: Any = None,
                error: str | None = None) -> None:
        """Caller holds the lock. A job a worker runs is told to stop through job-stop."""
        if job.status == "IN_PROGRESS" and status in ("CANCELLED", "TIMED_OUT") and job.worker_id:
            self._stop_signals.setdefault(job.worker_id, {})[job.id] = time.monotonic()
        job.status, job.output, job.error = status, output, error
        job.finished_at = time.monotonic()

    # -- client side ----------------------------------------------------------------------
    async def _run(self, request: web.Request) -> web.Response:
        if (refused := await self._client_check(request)) is not None:
            return refused
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return web.json_response({"error": "missing input"}, status=400)
        job = RemoteJob(id=f"job-{next(self._ids)}-{uuid.uuid4().hex[:8]}", input=body["input"])
        with self._lock:
            self.payloads.append(body)
            self.jobs[job.id] = job
        return web.json_response({"id": job.id, "status": job.status})

    def _known_job(self, request: web.Request) -> RemoteJob | web.Response:
        job = self.jobs.get(request.match_info["job"])
        if job is None:
            return web.json_response({"error": "request does not exist"}, status=404)
        return job

    async def _status(self, request: web.Request) -> web.Response:
        if (refused := await self._client_check(request)) is not None:
            return refused
        with self._lock:
            job = self._known_job(request)
            return job if isinstance(job, web.Response) else web.json_response(job.view())

    async def _stream(self, request: web.Request) -> web.Response:
        if (refused := await self._client_check(request)) is not None:
            return refused
        with self._lock:
            job = self._known_job(request)
            if isinstance(job, web.Response):
                return job
            chunks, job.stream = job.stream, []
            return web.json_response({"status": job.status,
                                      "stream": [{"output": c} for c in chunks]})

    async def _cancel(self, request: web.Request) -> web.Response:
        if (refused := await self._client_check(request)) is not None:
            return refused
        with self._lock:
            job = self._known_job(request)
            if isinstance(job, web.Response):
                return job
            if job.status not in TERMINAL:
                self._finish(job, "CANCELLED")
            return web.json_response({"id": job.id, "status": job.status})

    async def _health(self, request: web.Request) -> web.Response:
        if (refused := await self._client_check(request)) is not None:
            return refused
        now = time.monotonic()
        with self._lock:
            counts = {s: sum(1 for j in self.jobs.values() if j.status == s)
                      for s in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED")}
            alive = {w for w, seen in self.worker_seen.items() if now - seen < 10 * self.long_poll + 5}
            busy = {j.worker_id for j in self.jobs.values() if j.status == "IN_PROGRESS"}
        idle = 0 if self.throttled else len(alive - busy)
        return web.json_response({
            "jobs": {"inQueue": counts["IN_QUEUE"], "inProgress": counts["IN_PROGRESS"],
                     "completed": counts["COMPLETED"], "failed": counts["FAILED"], "retried": 0},
            "workers": {"idle": idle, "running": len(alive & busy), "initializing": 0,
                        "ready": idle, "unhealthy": 0,
                        "throttled": len(alive - busy) if self.throttled else 0},
        })

    # -- worker side ----------------------------------------------------------------------
    async def _job_take(self, request: web.Request) -> web.Response:
        if (refused := self._worker_check(request)) is not None:
            return refused
        worker = request.match_info["worker"]
        if request.query.get("job_in_progress") == "0":
            with self._lock:
                self._stop_signals.pop(worker, None)  # it runs nothing: nothing left to stop
        deadline = time.monotonic() + self.long_poll
        while time.monotonic() < deadline:
            with self._lock:
                job = next((j for j in self.jobs.values()
                            if j.status == "IN_QUEUE" and not self.throttled), None)
                if job is not None:
                    job.status, job.worker_id = "IN_PROGRESS", worker
                    job.started_at = time.monotonic()
                    return web.json_response({"id": job.id, "input": job.input})
            await asyncio.sleep(0.05)
        return web.Response(status=204)

    async def _job_stop(self, request: web.Request) -> web.Response:
        if (refused := self._worker_check(request)) is not None:
            return refused
        worker = request.match_info["worker"]
        deadline = time.monotonic() + self.long_poll
        while time.monotonic() < deadline:
            with self._lock:
                pending = self._stop_signals.get(worker, {})
                if ids := [job_id for job_id, at in pending.items() if at <= time.monotonic()]:
                    pending.update({job_id: time.monotonic() + 1.0 for job_id in ids})
                    return web.json_response({"jobsToStop": ids})
            await asyncio.sleep(0.05)
        return web.Response(status=204)

    async def _job_done(self, request: web.Request) -> web.Response:
        if (refused := self._worker_check(request)) is not None:
            return refused
        result = json.loads(await request.text())  # JSON text, sent form-encoded by the SDK
        with self._lock:
            job = self._known_job(request)
            if isinstance(job, web.Response):
                return job
            if job.status == "IN_PROGRESS":  # a result after cancel or timeout is dropped
                if result.get("error"):
                    self._finish(job, "FAILED", output=result.get("output"), error=result["error"])
                else:
                    self._finish(job, "COMPLETED", output=result.get("output"))
        return web.json_response({})

    async def _job_stream(self, request: web.Request) -> web.Response:
        if (refused := self._worker_check(request)) is not None:
            return refused
        result = json.loads(await request.text())
        with self._lock:
            job = self._known_job(request)
            if isinstance(job, web.Response):
                return job
            job.stream.append(result.get("output"))
        return web.json_response({})

    async def _ping(self, request: web.Request) -> web.Response:
        if (refused := self._worker_check(request)) is not None:
            return refused
        with self._lock:
            self.pings.append(dict(request.query) | {"worker": request.match_info["worker"]})
        return web.json_response({})

    async def _watch(self) -> None:
        """Execution timeouts and lost workers, checked every 50 ms."""
        while True:
            now = time.monotonic()
            with self._lock:
                for job in self.jobs.values():
                    if job.status != "IN_PROGRESS":
                        continue
                    if (self.execution_timeout is not None
                            and now - job.started_at > self.execution_timeout):
                        self._finish(job, "TIMED_OUT",
                                     error=f"execution timeout of {self.execution_timeout}s exceeded")
                    elif (self.worker_lost_after is not None
                          and now - self.worker_seen.get(job.worker_id, now) > self.worker_lost_after):
                        self._finish(job, "FAILED", error=f"worker {job.worker_id} stopped responding")
            await asyncio.sleep(0.05)


def start_worker(server: RunPodServer, module: str, env: dict[str, str], *,
                 worker_id: str = "worker-1", log_path=None):
    """A worker process running `python -m module` against `server` (its own process group, so
    a test can kill it and everything it started)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", module], cwd=root, start_new_session=True,
            env={**os.environ, **env, **server.worker_env(worker_id)},
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log_path:
            out.close()


def stop_worker(process, timeout: float = 10.0) -> None:
    """SIGTERM the worker's process group (the SDK shuts down gracefully), then SIGKILL."""
    import os
    import signal
    import subprocess

    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
        except ProcessLookupError:
            pass
