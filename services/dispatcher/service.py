"""The dispatcher: claims queued runs and launches their training jobs.

Shape (River's maintenance services): a config with defaults, `start()`/`stop()` (safe twice or
before start), and `run_once()` that returns what it did. NOTIFY is a hint, never delivery: the
loop polls at once on every (re)LISTEN and every `poll_interval` seconds, and a listener the
server killed is reconnected. Claims take only as many runs as the launcher has free slots, and
no transaction is held open across a launch.
"""
from __future__ import annotations

import asyncio
import os
import socket
import uuid
from dataclasses import dataclass, field

import asyncpg

from db import repository
from services.common.errors import SkutrainError
from services.common.logging import get_logger
from services.dispatcher.launchers import Launcher, LaunchRequest
from services.dispatcher.preflight import Preflight

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

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.lease_seconds <= 0 or self.poll_interval <= 0:
            raise ValueError("lease_seconds and poll_interval must be positive")


@dataclass
class TickResult:
    claimed: int = 0
    launched: int = 0
    failed: int = 0
    released: int = 0
    reaped: int = 0


class Dispatcher:
    def __init__(self, database_url: str, launcher: Launcher, config: DispatcherConfig | None = None):
        self.database_url = database_url
        self.launcher = launcher
        self.config = config or DispatcherConfig()
        self.log = get_logger("dispatcher", owner=self.config.owner, launcher=launcher.name)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._tasks: list[asyncio.Task] = []
        self.listener_connects = 0
        self.preflight = Preflight()
        self.totals = TickResult()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._pool = await repository.create_pool(self.database_url, min_size=1, max_size=2)
        self._tasks = [
            asyncio.create_task(self._listen_forever(), name="dispatcher-listener"),
            asyncio.create_task(self._loop(), name="dispatcher-loop"),
        ]
        self.log.info("dispatcher.started")

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def wait(self) -> None:
        """Run until stop(); if a side task dies, stop and re-raise its error."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        self.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()

    async def _close(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()
        if self._pool is not None:
            await self._pool.close()
        await self.launcher.close()
        self.log.info("dispatcher.stopped", **vars(self.totals))

    # -- loops -----------------------------------------------------------------------------
    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                result = await self.run_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.log.warning("dispatcher.tick_failed", error=str(exc))
                result = TickResult()
            if result.claimed and not self._stopping.is_set():
                continue  # there may be more: claim again before sleeping
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.poll_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _listen_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                conn = await repository.connect(self.database_url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c: lost.set())
                await conn.add_listener(CHANNEL, lambda *_: self._wake.set())
                self._listener = conn
                self.listener_connects += 1
                self.log.info("dispatcher.listening", connects=self.listener_connects)
                self._wake.set()  # poll at once on every (re)LISTEN
                while not self._stopping.is_set() and not lost.is_set():
                    waiters = [asyncio.ensure_future(lost.wait()),
                               asyncio.ensure_future(self._stopping.wait())]
                    done, pending = await asyncio.wait(
                        waiters, timeout=self.config.listener_check_interval,
                        return_when=asyncio.FIRST_COMPLETED)
                    for waiter in pending:
                        waiter.cancel()
                    if not done:
                        await conn.fetchval("SELECT 1")  # detects a silently dead connection
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.log.warning("dispatcher.listener_lost", error=str(exc))
            finally:
                if self._listener is not None and not self._listener.is_closed():
                    self._listener.terminate()
            if not self._stopping.is_set():
                await asyncio.sleep(self.config.reconnect_delay)

    # -- one tick --------------------------------------------------------------------------
    async def run_once(self) -> TickResult:
        result = TickResult()
        assert self._pool is not None, "start() first"
        async with self._pool.acquire() as conn:
            result.reaped = await self._reap(conn)
            slots = self.launcher.free_slots()
            if self._stopping.is_set() or slots <= 0:
                return result
            runs = await repository.claim_runs(
                conn, self.config.owner, min(slots, self.config.batch_size),
                self.config.lease_seconds,
            )
            result.claimed = len(runs)
            outcomes = [await self._prepare_and_launch(conn, run) for run in runs]
            # One transaction records the whole batch: one commit, not one per run.
            async with conn.transaction():
                for run, outcome in zip(runs, outcomes):
                    if outcome is None:
                        if await repository.release_run(conn, run.id, run.lease_epoch,
                                                        "dispatcher stopped"):
                            result.released += 1
                    elif isinstance(outcome, SkutrainError):
                        await repository.finish_run(
                            conn, run.id, run.lease_epoch, "failed", error_code=outcome.code,
                            error_message=outcome.message, payload={"details": outcome.details})
                        result.failed += 1
                    else:
                        await repository.mark_launched(conn, run.id, run.lease_epoch,
                                                       self.launcher.name, outcome)
                        result.launched += 1
        for name, value in vars(result).items():
            setattr(self.totals, name, getattr(self.totals, name) + value)
        if result.claimed or result.reaped:
            self.log.info("dispatcher.tick", **vars(result))
        return result

    async def _prepare_and_launch(self, conn, run: repository.ClaimedRun) -> str | SkutrainError | None:
        """The external job id, the error that fails the run, or None to release it."""
        if self._stopping.is_set():
            return None
        log = self.log.bind(run_id=run.id, attempt=run.attempt)
        try:
            await self.preflight.check(conn, run.config)
            external_id = await self.launcher.launch(
                LaunchRequest(run.id, run.attempt, run.lease_epoch))
        except SkutrainError as exc:
            log.warning("run.failed", error_code=exc.code, error=exc.message)
            return exc
        log.debug("run.launched", external_job_id=external_id)
        return external_id

    async def _reap(self, conn) -> int:
        """Fail runs whose job ended without finishing them (a crashed trainer)."""
        exited = self.launcher.reap()
        for job in exited:
            req = job.request
            failed = await repository.finish_run(
                conn, req.run_id, req.lease_epoch, "failed", error_code="worker_crashed",
                error_message=(
                    f"the trainer process exited with code {job.returncode} before finishing "
                    f"the run; its log ends with: {job.log_tail[-500:]}"
                ),
            )
            if failed:
                self.log.warning("run.worker_crashed", run_id=req.run_id, returncode=job.returncode)
        return len(exited)
