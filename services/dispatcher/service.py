"""The dispatcher: claims queued runs and launches their training jobs.

Shape (River's maintenance services): a config with defaults, `start()`/`stop()` (safe twice or
before start), and `run_once()` that returns what it did. NOTIFY is a hint, never delivery: the
loop polls at once on every (re)LISTEN and every `poll_interval` seconds, and a listener the
server killed is reconnected. Claims take only as many runs as the launcher has free slots,
counted from the live launch records in the database (so a restarted dispatcher still counts the
trainers it started before), and no transaction is held open across a launch.

Each claimed run is prepared and launched on its own: whatever goes wrong with one run (a config
that does not decode, a failing preflight, a database error) fails or releases that run and
never the rest of its batch. A job is started held at its launch gate, its launch recorded
(`run.launched`), then let go, so the trainer's first event always follows `run.launched`.

While runs are queued, a tick works through them a batch at a time, pipelined: the commit that
records batch k's launches also claims batch k+2 (one round trip and one commit per batch), and
while it runs on one connection, batch k+1 is prepared and started (its preflight on a second
one), so the dispatcher's own work overlaps the database's. Runs claimed ahead are held exactly
like claimed ones, on a lease, and are released if the dispatcher stops first. Slots are counted
once per tick and only go down within it, so a tick never over-claims.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field

import asyncpg

from db import repository
from services.common import metrics
from services.common.errors import LaunchFailed, SkutrainError
from services.common.logging import get_logger, redact_text
from services.common.service_loop import TRANSIENT, ListeningService
from services.dispatcher.launchers import Launcher, LaunchRequest
from services.dispatcher.preflight import Preflight
from services.reconciler.leases import settle_gone_jobs

CHANNEL = "skutrain_runs"


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class DispatcherConfig:
    owner: str = field(default_factory=default_owner)
    batch_size: int = 10
    lease_seconds: float = 120.0
    poll_interval: float = 2.0
    listener_check_interval: float = 5.0
    reconnect_delay: float = 0.5
    max_attempts: int = 3
    crash_at: str | None = None  # fault injection for the chaos tests (settings)
    metrics_interval: float = 5.0  # how often the queue-depth gauges are read from the database

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.lease_seconds <= 0 or self.poll_interval <= 0:
            raise ValueError("lease_seconds and poll_interval must be positive")


@dataclass
class TickResult:
    claimed: int = 0  # by this tick's statements
    launched: int = 0
    failed: int = 0
    released: int = 0
    reaped: int = 0

    def count(self, outcome: str) -> None:
        """One more run of `outcome` (a field name: launched, failed, released)."""
        setattr(self, outcome, getattr(self, outcome) + 1)


class Dispatcher(ListeningService):
    channels = (CHANNEL,)

    def __init__(self, database_url: str, launcher: Launcher, config: DispatcherConfig | None = None):
        self.launcher = launcher
        self.config = config or DispatcherConfig()
        super().__init__(database_url, get_logger("dispatcher", owner=self.config.owner,
                                                  launcher=launcher.name))
        self.preflight = Preflight()
        self.totals = TickResult()
        self._metrics_at = float("-inf")
        self._ahead: list[repository.ClaimedRun] = []  # claimed, not started yet

    def _more_work(self, result: TickResult) -> bool:
        return bool(result.claimed)  # there may be more: claim again before sleeping

    async def _close(self) -> None:
        await self._release_ahead()
        await super()._close()
        await self.launcher.close()
        self.log.info("dispatcher.stopped", **vars(self.totals))

    # -- one tick --------------------------------------------------------------------------
    async def run_once(self) -> TickResult:
        result = TickResult()
        assert self._pool is not None, "start() first"
        async with self._pool.acquire() as conn, self._pool.acquire() as side:
            await self._refresh_metrics(conn)
            slots = self.launcher.max_concurrent
            if self.launcher.watches_jobs:
                result.reaped = await settle_gone_jobs(conn, self.launcher,
                                                       self.config.max_attempts, self.log)
                slots -= await repository.count_live_launches(conn, self.launcher.name)
            if not self._stopping.is_set() and slots > 0:
                await self._launch_queued(conn, side, slots, result)
        for name, value in vars(result).items():
            setattr(self.totals, name, getattr(self.totals, name) + value)
        if result.claimed or result.reaped:
            self.log.info("dispatcher.tick", **vars(result))
        return result

    async def _launch_queued(self, conn, side, slots: int, result: TickResult) -> None:
        """Claim two batches, then per batch: start it (preflight on `side`) while the previous
        batch's launch commit, which claims the batch after next, runs on `conn`."""
        batch = self.config.batch_size
        with metrics.CLAIM_SECONDS.time():
            self._ahead = await repository.claim_runs(
                conn, self.config.owner, min(slots, 2 * batch), self.config.lease_seconds)
        result.claimed = len(self._ahead)
        slots -= len(self._ahead)
        self._crash_point("after_claim", self._ahead)
        recording = None  # the previous batch's launch commit, in flight on `conn`
        try:
            while self._ahead or recording is not None:
                runs, self._ahead = self._ahead[:batch], self._ahead[batch:]
                started = await self._start_batch(side, runs, result)
                if recording is not None:
                    claimed = await self._recorded(recording, result)
                    recording = None
                    self._ahead += claimed
                    result.claimed += len(claimed)
                    slots -= len(claimed)
                if started:
                    self._crash_point("after_start", started)
                    ahead = 0 if self._stopping.is_set() else min(slots, batch)
                    recording = asyncio.ensure_future(self._record(conn, started, ahead))
                    await asyncio.sleep(0)  # it sends its statement before the next batch starts
        finally:
            if recording is not None:  # cancelled: _record abandons its jobs
                recording.cancel()
                await asyncio.gather(recording, return_exceptions=True)

    async def _start_batch(self, conn, runs, result: TickResult) -> list:
        """Start each run's job held at its gate; what happened instead is counted in result."""
        started = []
        for run in runs:
            outcome = await self._start_one(conn, run)
            if isinstance(outcome, str):
                result.count(outcome)
            else:
                started.append(outcome)
        return started

    @staticmethod
    async def _recorded(recording: asyncio.Future, result: TickResult) -> list:
        """Wait for a launch commit; counts its outcomes, returns the runs it claimed ahead."""
        outcomes, claimed = await recording
        for outcome in outcomes:
            result.count(outcome)
        return claimed

    def _crash_point(self, point: str, runs) -> None:
        if runs and self.config.crash_at == point:
            self.log.warning("dispatcher.crash_injected", point=point)
            os.kill(os.getpid(), signal.SIGKILL)

    async def _start_one(self, conn, run: repository.ClaimedRun):
        """Prepare one claimed run and start its job held at the gate: (run, request, job), or
        the TickResult field of what happened instead (failed / released)."""
        request = LaunchRequest(run.id, run.attempt, run.lease_epoch, run.lease_token)
        if self._stopping.is_set():
            return await self._release(conn, run, "dispatcher stopped")
        try:
            await self.preflight.check(conn, run.config)
            return run, request, await self.launcher.launch(request)
        except SkutrainError as exc:
            return await self._fail(conn, run, exc)
        except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as exc:
            self.log.warning("run.launch_interrupted", run_id=run.id, attempt=run.attempt,
                             error=redact_text(str(exc)))
            return await self._release(conn, run, "dispatcher lost the database while launching")
        except Exception as exc:  # noqa: BLE001 - one run's failure must not take the batch
            failure = LaunchFailed(
                f"preparing the launch failed: {type(exc).__name__}: {redact_text(str(exc))[:500]}")
            return await self._fail(conn, run, failure)

    async def _record(self, conn, started, ahead: int) -> tuple[list[str], list]:
        """Record the started jobs' launches in one commit, claiming up to `ahead` more runs in
        it, then open their gates; a job whose launch is not recorded has its gate closed and
        never trains. Returns the outcomes and the runs claimed ahead."""
        if not started:
            return [], []
        try:
            recorded, claimed = await repository.mark_launched_and_claim(
                conn, self.launcher.name,
                [(run.id, run.lease_epoch, job.external_id, job.identity)
                 for run, _, job in started],
                self.config.owner, ahead, self.config.lease_seconds)
        except BaseException as exc:
            for _, request, job in started:
                await self.launcher.abandon(request, job)
            if not isinstance(exc, Exception):
                raise
            self.log.warning("dispatcher.launches_not_recorded", error=redact_text(str(exc)))
            return [await self._release(conn, run, "the launch could not be recorded")
                    for run, _, _ in started], []
        outcomes = []
        for (run, request, job), ok in zip(started, recorded):
            if ok:
                await self.launcher.release(request, job)
                outcomes.append("launched")
            else:
                await self.launcher.abandon(request, job)
                outcomes.append("released")
        metrics.LAUNCHES.labels(launcher=self.launcher.name).inc(outcomes.count("launched"))
        return outcomes, claimed

    async def _release_ahead(self) -> None:
        """Runs claimed ahead when the loop stopped go back to the queue (else their leases
        expire and the reconciler requeues them)."""
        runs, self._ahead = self._ahead, []
        if not runs or self._pool is None:
            return
        try:
            async with self._pool.acquire() as conn:
                for run in runs:
                    await self._release(conn, run, "dispatcher stopped")
        except TRANSIENT as exc:
            self.log.warning("dispatcher.release_failed", runs=len(runs),
                             error=redact_text(str(exc)))

    async def _fail(self, conn, run, exc: SkutrainError) -> str:
        log = self.log.bind(run_id=run.id, attempt=run.attempt)
        log.warning("run.failed", error_code=exc.code, error=exc.message)
        metrics.LAUNCH_FAILURES.labels(launcher=self.launcher.name, error_code=exc.code).inc()
        try:
            await repository.finish_run(conn, run.id, run.lease_epoch, "failed",
                                        error_code=exc.code, error_message=exc.message,
                                        payload={"details": exc.details})
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as db_exc:
            log.warning("run.fail_not_recorded", error=redact_text(str(db_exc)))
        return "failed"

    async def _refresh_metrics(self, conn) -> None:
        """Queue depth and trainer throughput gauges, read at most every metrics_interval s."""
        if time.monotonic() - self._metrics_at >= self.config.metrics_interval:
            self._metrics_at = time.monotonic()
            await metrics.refresh_from_database(conn)

    async def _release(self, conn, run, reason: str) -> str:
        """Back to the queue; if even that fails, the lease expires and the reconciler does it."""
        try:
            await repository.release_run(conn, run.id, run.lease_epoch, reason)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.log.warning("run.release_failed", run_id=run.id, error=redact_text(str(exc)))
        return "released"

