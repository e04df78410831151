"""The loop shared by the dispatcher and the reconciler (River's maintenance-service shape).

`start()`/`stop()` (safe twice or before start), `wait()`, and a subclass's `run_once()` that
returns what it did. NOTIFY is a hint, never delivery: the loop runs at once on every
(re)LISTEN and every `poll_interval` seconds, and a listener the server killed is reconnected.
"""
from __future__ import annotations

import asyncio

import asyncpg

from db import repository
from services.common.logging import redact_text

TRANSIENT = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def _session_unchanged(conn: asyncpg.Connection) -> None:
    """A pooled connection goes back as it came out: these loops set no session state (no SET,
    LISTEN, session advisory lock or cursor; asyncpg rolls back an open transaction itself), so
    the default reset query, one more round trip on every tick, is not sent."""


class ListeningService:
    channels: tuple[str, ...] = ()

    def __init__(self, database_url: str, log):
        self.database_url = database_url
        self.log = log
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._tasks: list[asyncio.Task] = []
        self.listener_connects = 0

    async def run_once(self):
        raise NotImplementedError

    def _more_work(self, result) -> bool:
        """Whether to run again at once instead of sleeping."""
        return False

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._pool = await repository.create_pool(self.database_url, min_size=1, max_size=2,
                                                  reset=_session_unchanged)
        name = type(self).__name__.lower()
        self._tasks = [
            asyncio.create_task(self._listen_forever(), name=f"{name}-listener"),
            asyncio.create_task(self._loop(), name=f"{name}-loop"),
        ]
        self.log.info(f"{name}.started")

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

    # -- loops -----------------------------------------------------------------------------
    async def _loop(self) -> None:
        name = type(self).__name__.lower()
        while not self._stopping.is_set():
            try:
                result = await self.run_once()
            except TRANSIENT as exc:
                self.log.warning(f"{name}.tick_failed", error=redact_text(str(exc)))
                result = None
            if result is not None and self._more_work(result) and not self._stopping.is_set():
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.poll_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _listen_forever(self) -> None:
        name = type(self).__name__.lower()
        while not self._stopping.is_set():
            try:
                conn = await repository.connect(self.database_url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c: lost.set())
                for channel in self.channels:
                    await conn.add_listener(channel, lambda *_: self._wake.set())
                self._listener = conn
                self.listener_connects += 1
                self.log.info(f"{name}.listening", connects=self.listener_connects)
                self._wake.set()  # run at once on every (re)LISTEN
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
            except TRANSIENT as exc:
                self.log.warning(f"{name}.listener_lost", error=redact_text(str(exc)))
            finally:
                if self._listener is not None and not self._listener.is_closed():
                    self._listener.terminate()
            if not self._stopping.is_set():
                await asyncio.sleep(self.config.reconnect_delay)
