"""The reconciler: repairs what crashes leave behind and carries out requested deletes.

Shaped like the dispatcher (services.common.service_loop): woken by NOTIFY on the lifecycle
channels and sweeping every `poll_interval` seconds so a missed notification only delays it;
`run_once()` returns what it did. One module per duty: leases (expired or stalled runs), cancel,
deletes (checkpoints, runs, tombstones), resume states (superseded ones), best (is_best and
retention), orphans. Every action is
fenced in SQL and idempotent, so two reconcilers at once reach the same end state as one, and
every sweep reads only rows that need work (partial indexes), never the finished history.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from db import repository
from services.common import metrics
from services.common.logging import get_logger
from services.common.service_loop import ListeningService
from services.common.storage import Storage
from services.dispatcher.launchers import Launcher
from services.reconciler import best, deletes, resume_states
from services.reconciler.cancel import enforce_cancel
from services.reconciler.leases import recover_lease, settle_gone_jobs
from services.reconciler.orphans import OrphanSweep

CHANNELS = ("skutrain_reconcile", "skutrain_cancel")


@dataclass
class ReconcilerConfig:
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    poll_interval: float = 5.0
    listener_check_interval: float = 5.0
    reconnect_delay: float = 0.5
    stall_timeout: float = 600.0
    cancel_grace: float = 30.0
    max_attempts: int = 3
    keep_latest: int | None = None
    orphan_grace: float = 3600.0
    orphan_interval: float = 600.0
    batch: int = 100

    def __post_init__(self) -> None:
        if self.poll_interval <= 0 or self.stall_timeout <= 0 or self.max_attempts < 1:
            raise ValueError("poll_interval and stall_timeout must be positive, max_attempts >= 1")


@dataclass
class SweepResult:
    gone_jobs: int = 0
    recovered: int = 0
    cancels: int = 0
    checkpoints_deleted: int = 0
    runs_deleted: int = 0
    tombstones_cleaned: int = 0
    resume_states_dropped: int = 0
    best_settled: int = 0
    orphans_deleted: int = 0

    def did_something(self) -> bool:
        return any(vars(self).values())


class Reconciler(ListeningService):
    channels = CHANNELS

    def __init__(self, database_url: str, launchers: list[Launcher], storage: Storage,
                 config: ReconcilerConfig | None = None):
        self.config = config or ReconcilerConfig()
        super().__init__(database_url, get_logger("reconciler", owner=self.config.owner))
        self.launchers = {launcher.name: launcher for launcher in launchers}
        self.storage = storage
        self.orphans = OrphanSweep(self.config.orphan_grace)
        self._orphans_at = float("-inf")
        self.totals = SweepResult()

    def _more_work(self, result: SweepResult) -> bool:
        return result.checkpoints_deleted >= self.config.batch

    async def run_once(self) -> SweepResult:
        assert self._pool is not None, "start() first"
        async with self._pool.acquire() as conn:
            result = await self.sweep(conn)
        for name, value in vars(result).items():
            setattr(self.totals, name, getattr(self.totals, name) + value)
        metrics.record_sweep(result)
        if result.did_something():
            self.log.info("reconciler.sweep", **vars(result))
        return result

    async def sweep(self, conn) -> SweepResult:
        """One pass of every duty on one connection (the bench calls it directly)."""
        c = self.config
        result = SweepResult()
        for launcher in self.launchers.values():
            result.gone_jobs += await settle_gone_jobs(conn, launcher, c.max_attempts, self.log)
        for row in await repository.runs_needing_attention(conn, c.stall_timeout, c.cancel_grace):
            if row["cancel_requested_at"] is not None:
                if await enforce_cancel(conn, row, self.launchers, self.log) != "signalled":
                    result.cancels += 1
            elif await recover_lease(conn, row, self.launchers, c.stall_timeout, c.max_attempts,
                                     self.log):
                result.recovered += 1
        result.checkpoints_deleted = await deletes.sweep_checkpoints(conn, self.storage, c.batch)
        result.runs_deleted = await deletes.sweep_runs(conn, c.batch)
        result.tombstones_cleaned = await deletes.sweep_tombstones(conn, self.storage,
                                                                   self.launchers, c.batch)
        result.resume_states_dropped = await resume_states.drop_superseded(conn, self.storage,
                                                                           c.batch)
        result.best_settled = await best.settle_runs(conn, c.keep_latest, c.batch)
        if time.monotonic() - self._orphans_at >= c.orphan_interval:
            self._orphans_at = time.monotonic()
            result.orphans_deleted = await self.orphans.run(conn, self.storage)
        return result
