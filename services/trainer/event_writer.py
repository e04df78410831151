"""The trainer's link to the database: ordered, batched, retried event writes and the lease.

A background thread owns an asyncio loop and one asyncpg connection. The training loop only
appends to an in-memory queue (`emit` never blocks a training step). The thread writes batches
with `append_trainer_events`, which is idempotent on the trainer's sequence numbers, so a batch
retried after a dropped connection is stored exactly once and in order. While the database is
unreachable it retries with backoff and keeps every event. It also heartbeats the lease
(every call carries the claim's lease token), sending the training step counter (`step`) so a trainer whose step
stops advancing is seen as hung, and LISTENs for cancel requests: a lost lease or a cancel
request is visible through `stop_reason()` within one flush interval of the NOTIFY.

Payloads are made JSON-safe at `emit` (NaN and infinities become null), so a non-finite number
never blocks the stream. A batch the database refuses for its content (a data or constraint
error, an unencodable value) is not retried: the writer drops what is queued, stops writing
events and reports it through `rejected` and `stop_reason()` ("event_rejected"), so the runner
fails the run with EventRejected instead of retrying forever.
"""
from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from dataclasses import dataclass

import asyncpg

from db import repository
from services.common.errors import EventRejected, LeaseLost
from services.common.events import json_safe
from services.common.logging import get_logger
from services.common.retry import backoff_delay

CANCEL_CHANNEL = "skutrain_cancel"
_RETRYABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
              asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CannotConnectNowError,
              asyncio.TimeoutError, ConnectionError,
              asyncpg.exceptions.TransactionRollbackError)


@dataclass
class EventWriterConfig:
    flush_interval: float = 0.2
    max_batch: int = 200
    heartbeat_interval: float = 10.0
    lease_seconds: float = 45.0  # outlives three heartbeats
    retry_base: float = 0.2
    retry_cap: float = 5.0

    def __post_init__(self) -> None:
        if self.lease_seconds <= 3 * self.heartbeat_interval:
            raise ValueError("lease_seconds must outlive three heartbeats")


class EventWriter:
    def __init__(self, database_url: str, lease: repository.Lease,
                 config: EventWriterConfig | None = None):
        self.database_url = database_url
        self.lease = lease
        self.config = config or EventWriterConfig()
        self.log = get_logger("event_writer", run_id=lease.run_id)
        self._pending: deque[tuple[int, str, dict]] = deque()
        self._lock = threading.Lock()
        self._next_seq = 1
        self._stored_seq = 0
        self._stored = threading.Condition(self._lock)
        self._cancel_requested = False
        self._lease_lost = False
        self.rejected: EventRejected | None = None
        self.step: int | None = None  # the training step counter, sent with each heartbeat
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_ready = threading.Event()
        self._db_lock: asyncio.Lock | None = None
        self._conn: asyncpg.Connection | None = None
        self.connects = 0

    @property
    def run_id(self) -> int:
        return self.lease.run_id

    # -- called from the training thread ---------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="event-writer", daemon=True)
        self._thread.start()
        self._loop_ready.wait()

    def emit(self, type_: str, payload: dict) -> int:
        """Queue an event (from any thread); returns its trainer sequence number. Never blocks
        on I/O. After a rejected batch nothing more is queued (returns 0)."""
        payload = json_safe(payload)
        with self._lock:
            if self.rejected is not None:
                return 0
            seq = self._next_seq
            self._next_seq += 1
            self._pending.append((seq, type_, payload))
            return seq

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted so far is stored; False on timeout or a lost lease."""
        with self._lock:
            last = self._next_seq - 1
        return self.wait_stored(last, timeout)

    def wait_stored(self, seq: int, timeout: float | None = None) -> bool:
        """Wait until event `seq` is stored (or dropped after a rejection); False on timeout or
        a lost lease."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._stored:
            while (self._stored_seq < seq and not self._lease_lost
                   and self.rejected is None):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._stored.wait(remaining if remaining is not None else 1.0)
            return not self._lease_lost

    def stop_reason(self) -> str | None:
        if self._lease_lost:
            return "lease_lost"
        if self.rejected is not None:
            return "event_rejected"
        if self._cancel_requested:
            return "cancelled"
        return None

    def call(self, fn, timeout: float = 60.0):
        """Run `fn(conn)` (a coroutine function) on the writer's connection, with retries."""
        future = asyncio.run_coroutine_threadsafe(self._with_retry(fn), self._loop)
        return future.result(timeout)

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the writer thread -----------------------------------------------------------------
    def _thread_main(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop_ready.set()
        try:
            self._loop.run_until_complete(self._run())
        finally:
            self._loop.close()

    async def _run(self) -> None:
        last_heartbeat = 0.0
        while not (self._closing.is_set() and not self._pending):
            try:
                await self._write_pending()
                if time.monotonic() - last_heartbeat >= self.config.heartbeat_interval:
                    await self._with_retry(self._heartbeat)
                    last_heartbeat = time.monotonic()
            except LeaseLost as exc:
                self._mark_lease_lost(str(exc))
                return
            except EventRejected as exc:
                self._reject(exc)
            except Exception:  # never let the writer thread die: events stay queued
                self.log.exception("event_writer.error")
                await asyncio.sleep(self.config.retry_cap)
            await asyncio.sleep(self.config.flush_interval)
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

    def _mark_lease_lost(self, why: str) -> None:
        self.log.warning("lease.lost", reason=why)
        with self._stored:
            self._lease_lost = True
            self._stored.notify_all()

    def _reject(self, exc: EventRejected) -> None:
        self.log.error("event.rejected", error=exc.message)
        with self._stored:
            self.rejected = exc
            self._pending.clear()
            self._stored.notify_all()

    def _on_cancel_notify(self, _conn, _pid, _channel, payload: str) -> None:
        """request_cancel() NOTIFYs at once; the heartbeat is the fallback if this is missed."""
        if payload == str(self.run_id):
            self._cancel_requested = True

    async def _heartbeat(self, conn) -> None:
        beat = await repository.trainer_heartbeat(conn, self.lease, self.config.lease_seconds,
                                                  step=self.step)
        if not beat.owned:
            # A finished run also reports owned=False: only a new claim (a new token) is a loss.
            if await repository.trainer_run(conn, self.lease) is None:
                raise LeaseLost(f"run {self.run_id} was claimed again (or deleted): this "
                                "attempt's lease token no longer holds it")
        self._cancel_requested = self._cancel_requested or beat.cancel_requested

    async def _write_pending(self) -> None:
        while True:
            with self._lock:
                batch = list(self._pending)[: self.config.max_batch]
            if not batch:
                return
            first_seq = batch[0][0]
            events = [(t, p) for _, t, p in batch]

            async def append(conn):
                return await repository.trainer_append_events(conn, self.lease, first_seq,
                                                              events)

            try:
                stored = await self._with_retry(append)
            except (asyncpg.PostgresError, TypeError, ValueError) as exc:
                kinds = sorted({t for t, _ in events})
                raise EventRejected(
                    f"the database refused trainer events {first_seq}-{batch[-1][0]} "
                    f"({', '.join(kinds)}) for their content: {type(exc).__name__}: {exc}",
                    details={"first_seq": first_seq, "types": kinds}) from exc
            with self._stored:
                while self._pending and self._pending[0][0] <= stored:
                    self._pending.popleft()
                self._stored_seq = stored
                self._stored.notify_all()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self.connects += 1
            conn = await repository.connect(
                self.database_url, timeout=10,
                server_settings={"application_name": f"skutrain-trainer:{self.run_id}"},
            )
            await conn.add_listener(CANCEL_CHANNEL, self._on_cancel_notify)
            self._conn = conn
        return self._conn

    async def _with_retry(self, fn):
        """One operation at a time on the one connection; reconnect and retry on failure."""
        if self._db_lock is None:
            self._db_lock = asyncio.Lock()
        retry = 0
        while True:
            async with self._db_lock:
                try:
                    return await fn(await self._connection())
                except _RETRYABLE as exc:
                    if self._conn is not None:
                        self._conn.terminate()
                        self._conn = None
                    error = type(exc).__name__
            delay = backoff_delay(retry, self.config.retry_base, self.config.retry_cap,
                                  random.random())
            self.log.warning("db.retry", error=error, retry=retry, delay=round(delay, 2))
            retry += 1
            await asyncio.sleep(delay)
