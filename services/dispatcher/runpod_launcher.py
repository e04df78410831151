"""The RunPod launcher (`--launcher runpod`): one serverless job per (run, attempt), through the
`runpod` SDK's async `Endpoint`/`Job` on an aiohttp session that raises on HTTP errors (the SDK
itself never checks a status code on that path).

SDK traps avoided: `Job.output()` (its default timeout 0 raises at once) and `Job.stream()` (it
loops forever on CANCELLED) are never called; this module only runs, polls status and cancels.

The job's input is `services.trainer.handler.job_input`: run id, attempt, lease token and
non-secret settings. The worker reads its secrets from its own environment.

A poller (started with the first launch or state question, one per process) reads the status of
every live RunPod launch every `poll_interval` seconds; `state()` answers from it. The poller also
ends runs that RunPod ended: FAILED by our handler (its error text kept), TIMED_OUT, or CANCELLED
without a cancel request, each with an error_code and what to do; a job that failed because its
worker was lost is left to `settle_gone_jobs`, which requeues the run to resume. A job still IN_QUEUE keeps its run's
lease alive (no worker has it yet, so nothing else heartbeats) and, after `queue_notice_after`
seconds, the run says it is waiting for a RunPod worker (a `run.waiting` event).
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
from runpod.endpoint.asyncio.asyncio_runner import Endpoint, Job

from db import repository
from services.common import metrics
from services.common.errors import (
    RunPodEndpointNotFound,
    RunPodRateLimited,
    RunPodUnauthorized,
    RunPodUnreachable,
    SkutrainError,
)
from services.common.logging import get_logger, redact_text
from services.common.retry import backoff_delay
from services.common.settings import Settings
from services.dispatcher.launchers import JobState, LaunchedJob, LaunchRecord, LaunchRequest
from services.trainer.handler import job_input, job_settings

LIVE = {"IN_QUEUE", "IN_PROGRESS"}
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


@dataclass
class RemoteStatus:
    status: str
    error: str | None = None
    seen_at: float = field(default_factory=time.monotonic)


def http_error(exc: Exception, endpoint_id: str, base_url: str) -> SkutrainError:
    """What an HTTP failure means for a person: bad key, unknown endpoint, rate limit, network."""
    if isinstance(exc, aiohttp.ClientResponseError):
        if exc.status in (401, 403):
            return RunPodUnauthorized(
                f"RunPod refused the API key ({exc.status}): set RUNPOD_API_KEY to a key with "
                f"access to endpoint {endpoint_id!r} (RunPod console > Settings > API Keys)")
        if exc.status == 404:
            return RunPodEndpointNotFound(
                f"RunPod has no endpoint {endpoint_id!r} (404): set RUNPOD_ENDPOINT_ID to the id "
                "shown on the endpoint's page in the RunPod console")
        if exc.status == 429:
            return RunPodRateLimited(
                "RunPod kept refusing requests with 429 (rate limited) after backing off: lower "
                "the dispatcher's --max-concurrent or --batch-size, then resume the run")
        return RunPodUnreachable(f"RunPod answered {exc.status} {exc.message} at {base_url}: "
                                 "check https://status.runpod.io and resume the run")
    return RunPodUnreachable(
        f"could not reach RunPod at {base_url} ({type(exc).__name__}: {exc}): check the network "
        "and RUNPOD_ENDPOINT_BASE_URL, then resume the run")


def handler_error(error: Any) -> dict[str, Any] | None:
    """The SDK's report of an exception in our handler (a JSON document with error_type and
    error_message); None for a failure of the platform (a lost worker)."""
    try:
        doc = json.loads(error) if isinstance(error, str) else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "error_type" in doc else None


def job_error_text(error: Any) -> str:
    """The worker's error text: the handler's exception, or RunPod's own message."""
    if (doc := handler_error(error)) is not None:
        error = f"{doc['error_type']} {doc.get('error_message', '')}".strip()
    return redact_text(str(error or "no error text"))[-2000:]


def ended_run_error(status: str, job_id: str, error: Any) -> tuple[str, str] | None:
    """(error_code, message) for a run whose job RunPod ended without the trainer ending it.
    None leaves the run to settle_gone_jobs, which requeues it to resume (a lost worker: its
    job FAILED without a handler error)."""
    if status == "FAILED" and handler_error(error) is not None:
        return "runpod_job_failed", (
            f"the RunPod job {job_id} failed: {job_error_text(error)}. Fix the cause, then "
            "resume the run")
    if status == "TIMED_OUT":
        return "runpod_timed_out", (
            f"the RunPod job {job_id} ran past the endpoint's execution timeout and was stopped: "
            "raise the endpoint's Execution Timeout (RunPod console > endpoint > Edit) or train "
            "fewer epochs, then resume the run")
    if status == "CANCELLED":
        return "runpod_cancelled", (
            f"the RunPod job {job_id} was cancelled outside skutrain (RunPod console or API); "
            "resume the run to train it again")
    return None


@dataclass
class RunPodLauncher:
    endpoint_id: str
    api_key: str
    database_url: str
    base_url: str = "https://api.runpod.ai/v2"
    job_settings: dict[str, Any] = field(default_factory=dict)
    max_concurrent: int = 10
    request_timeout: float = 10.0
    poll_interval: float = 2.0
    lease_seconds: float = 120.0
    queue_notice_after: float = 30.0
    rate_limit_retries: int = 4
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    name: str = "runpod"
    watches_jobs: bool = True

    def __post_init__(self) -> None:
        self.log = get_logger("runpod_launcher", endpoint_id=self.endpoint_id)
        self.statuses: dict[str, RemoteStatus] = {}
        self._launched: dict[tuple[int, int], LaunchedJob] = {}
        self._noticed: set[str] = set()
        self._session: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task | None = None
        self._pending: set[asyncio.Task] = set()

    @classmethod
    def from_settings(cls, settings: Settings, database_url: str, **kwargs) -> "RunPodLauncher":
        if settings.runpod_api_key is None or not settings.runpod_endpoint_id:
            raise SystemExit("the runpod launcher needs RUNPOD_API_KEY and RUNPOD_ENDPOINT_ID")
        return cls(endpoint_id=settings.runpod_endpoint_id,
                   api_key=settings.runpod_api_key.get_secret_value(),
                   base_url=settings.runpod_endpoint_base_url, database_url=database_url,
                   job_settings=job_settings(settings), **kwargs)

    # -- SDK objects ------------------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                raise_for_status=True,
                timeout=aiohttp.ClientTimeout(total=self.request_timeout))
        return self._session

    def _endpoint(self) -> Endpoint:
        endpoint = Endpoint(self.endpoint_id, self._http(), api_key=self.api_key)
        endpoint.endpoint_url_base = self.base_url  # the SDK reads its module global otherwise
        endpoint.endpoint_url = f"{self.base_url}/{self.endpoint_id}/run"
        return endpoint

    def _job(self, job_id: str) -> Job:
        job = Job(self.endpoint_id, job_id, self._http(),
                  {"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"})
        job.endpoint_url_base = self.base_url
        return job

    async def _call(self, make_call, *, retry_rate_limit: bool = True):
        """One SDK call; 429 backs off and retries, every other failure becomes the error a
        person can act on."""
        for retry in range(self.rate_limit_retries + 1):
            try:
                return await make_call()
            except aiohttp.ClientResponseError as exc:
                if exc.status != 429 or not retry_rate_limit or retry == self.rate_limit_retries:
                    raise http_error(exc, self.endpoint_id, self.base_url) from exc
                metrics.RUNPOD_RATE_LIMITED.inc()
                await asyncio.sleep(backoff_delay(retry, self.backoff_base, self.backoff_cap,
                                                  random.random()))
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as exc:
                raise http_error(exc, self.endpoint_id, self.base_url) from exc

    # -- Launcher protocol ------------------------------------------------------------------
    async def launch(self, request: LaunchRequest) -> LaunchedJob:
        """POST /run once per (run, attempt): a job already started by this process, or one a
        stored launch record names, is returned instead of starting another."""
        key = (request.run_id, request.attempt)
        if key in self._launched:
            return self._launched[key]
        conn = await repository.connect(self.database_url)
        try:
            for row in await repository.live_launches(conn, self.name):
                if (row["run_id"], row["attempt"]) == key and row["external_job_id"]:
                    return LaunchedJob(row["external_job_id"], dict(row["identity"] or {}))
        finally:
            await conn.close()
        payload = job_input(request.run_id, request.attempt, request.lease_token,
                            self.job_settings)
        # A timed-out POST is not retried: RunPod may have queued it, and a second job of the
        # same attempt would only be fenced out. 429 (refused, nothing queued) is retried.
        job = await self._call(lambda: self._endpoint().run(payload))
        launched = LaunchedJob(job.job_id, {"endpoint_id": self.endpoint_id, "job_id": job.job_id})
        self._launched[key] = launched
        self.statuses[job.job_id] = RemoteStatus("IN_QUEUE")
        self._ensure_poller()
        return launched

    async def release(self, request: LaunchRequest, job: LaunchedJob) -> None:
        self._launched.pop((request.run_id, request.attempt), None)

    async def abandon(self, request: LaunchRequest, job: LaunchedJob) -> None:
        """The launch was not recorded: cancel the job so no GPU time is spent on it."""
        self._launched.pop((request.run_id, request.attempt), None)
        await self.cancel(job.external_id)

    def state(self, record: LaunchRecord) -> JobState:
        self._ensure_poller()
        remote = self.statuses.get(record.external_job_id or "")
        if remote is None:
            return JobState.UNKNOWN
        return JobState.ALIVE if remote.status in LIVE else JobState.GONE

    def stop(self, record: LaunchRecord, *, force: bool) -> None:
        """RunPod has no graceful stop: a running trainer honours a cancel request by itself,
        so only a forced stop cancels its job (the worker then terminates the trainer); a job
        still queued has nothing to honour it and is cancelled at once."""
        remote = self.statuses.get(record.external_job_id or "")
        queued = remote is not None and remote.status == "IN_QUEUE"
        if (force or queued) and record.external_job_id:
            self._spawn(self.cancel(record.external_job_id))

    def exit_summary(self, record: LaunchRecord) -> str:
        remote = self.statuses.get(record.external_job_id or "")
        if remote is None:
            return ""
        return f"RunPod job {record.external_job_id} {remote.status}" + (
            f": {job_error_text(remote.error)}" if remote.error else "")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        await asyncio.gather(*self._pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # -- RunPod calls -----------------------------------------------------------------------
    async def cancel(self, job_id: str) -> str:
        job = self._job(job_id)
        result = await self._call(job.cancel)
        self.log.info("runpod.cancelled", job_id=job_id, status=result.get("status"))
        return result.get("status", "")

    async def status(self, job_id: str) -> RemoteStatus:
        """The job's status document (never Job.output()/stream(): see the module doc)."""
        try:
            doc = await self._call(self._job(job_id)._fetch_job, retry_rate_limit=False)
        except RunPodEndpointNotFound:  # RunPod forgets finished jobs after a while
            return RemoteStatus("GONE")
        return RemoteStatus(doc["status"], doc.get("error"))

    async def health(self) -> dict[str, Any]:
        return await self._call(self._endpoint().health)

    # -- the poller -------------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever(),
                                                                 name="runpod-poller")

    async def _poll_forever(self) -> None:
        delay = self.poll_interval
        while True:
            try:
                await self.poll_once()
                delay = self.poll_interval
            except RunPodRateLimited:
                delay = min(delay * 2, 60.0)
                self.log.warning("runpod.poll_rate_limited", next_poll_s=delay)
            except (SkutrainError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.log.warning("runpod.poll_failed", error=str(exc))
            await asyncio.sleep(delay)

    async def poll_once(self) -> int:
        """Refresh the status of every live launch of this launcher; act on what RunPod ended.
        Returns how many jobs were read."""
        conn = await repository.connect(self.database_url)
        try:
            rows = await repository.live_launches(conn, self.name)
            for row in rows:
                if row["external_job_id"]:
                    await self._observe(conn, row)
        finally:
            await conn.close()
        return len(rows)

    async def _observe(self, conn, row) -> None:
        job_id = row["external_job_id"]
        remote = await self.status(job_id)
        previous = self.statuses.get(job_id)
        if previous is not None and previous.status == remote.status:
            remote.seen_at = previous.seen_at  # when it entered this status
        held = row["status"] in ("claimed", "running") and row["run_attempt"] == row["attempt"]
        if held and remote.status == "IN_QUEUE":
            await self._waiting(conn, row, remote)
        elif held and (failure := ended_run_error(remote.status, job_id, remote.error)):
            await self._fail_run(conn, row, *failure)
        # Published last: state() says GONE only once the run carries RunPod's verdict, so
        # settle_gone_jobs never requeues a run RunPod failed.
        self.statuses[job_id] = remote

    async def _fail_run(self, conn, row, code: str, message: str) -> None:
        run = await repository.get_run(conn, row["run_id"])
        if run["cancel_requested_at"] is not None:
            return  # the reconciler ends a cancelled run as cancelled
        if await repository.finish_run(conn, row["run_id"], row["lease_epoch"], "failed",
                                       error_code=code, error_message=message):
            metrics.LAUNCH_FAILURES.labels(launcher=self.name, error_code=code).inc()
            self.log.warning("run.failed", run_id=row["run_id"], attempt=row["attempt"],
                             error_code=code, error=message)

    async def _waiting(self, conn, row, remote: RemoteStatus) -> None:
        """No worker has the job yet: hold the lease for it, and say so once it is long."""
        await repository.heartbeat_run(conn, row["run_id"], row["lease_epoch"], self.lease_seconds)
        waited = time.monotonic() - remote.seen_at
        job_id = row["external_job_id"]
        if waited < self.queue_notice_after or job_id in self._noticed:
            return
        try:
            workers = (await self.health()).get("workers", {})
        except SkutrainError:
            workers = {}
        await repository.note_run_waiting(conn, row["run_id"], row["lease_epoch"], {
            "launcher": self.name, "external_job_id": job_id, "waited_s": round(waited, 1),
            "workers": workers,
            "message": (
                f"waiting in the RunPod queue of endpoint {self.endpoint_id} for {waited:.0f} s: "
                f"no worker has taken the job (workers: {json.dumps(workers)}). Check the "
                "endpoint's max workers and GPU availability in the RunPod console"),
        })
        self._noticed.add(job_id)


def health_problems(doc: dict[str, Any]) -> list[str]:
    """What is wrong with an endpoint, from its /health document (empty: nothing)."""
    workers, jobs = doc.get("workers", {}), doc.get("jobs", {})
    problems = []
    active = sum(workers.get(k, 0) for k in ("idle", "running", "initializing", "ready"))
    if jobs.get("inQueue", 0) and not active:
        problems.append(
            f"{jobs['inQueue']} job(s) wait in the queue and no worker is running: raise the "
            "endpoint's max workers, or pick GPU types with availability (RunPod console)")
    if workers.get("unhealthy", 0):
        problems.append(f"{workers['unhealthy']} worker(s) are unhealthy: read their logs in the "
                        "RunPod console (a bad image or missing DATABASE_URL)")
    if workers.get("throttled", 0) and not active:
        problems.append(f"{workers['throttled']} worker(s) are throttled: RunPod has no GPU of "
                        "the endpoint's types free; add GPU types to the endpoint")
    return problems
