"""Launchers start the training job of a claimed run: `local` (a subprocess) or `noop`.

A launcher never sees secrets in its payload: the job gets the run id, attempt and fencing token;
the worker reads its database URL and keys from its own environment.
Launch is idempotent per (run, attempt): launching the same attempt twice starts one job.
"""
from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from services.common.errors import LaunchFailed
from services.common.logging import redact_text

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LaunchRequest:
    run_id: int
    attempt: int
    lease_epoch: int


@dataclass(frozen=True)
class ExitedJob:
    """A job the launcher saw end; the dispatcher fails its run unless the trainer finished it."""

    request: LaunchRequest
    returncode: int
    log_tail: str


class Launcher(Protocol):
    name: str

    def free_slots(self) -> int: ...
    async def launch(self, request: LaunchRequest) -> str: ...
    def reap(self) -> list[ExitedJob]: ...
    async def close(self) -> None: ...


class NoopLauncher:
    """Marks runs launched and does nothing: for tests and queue benchmarks."""

    name = "noop"

    def __init__(self) -> None:
        self.launched: dict[tuple[int, int], str] = {}

    def free_slots(self) -> int:
        return 1_000_000

    async def launch(self, request: LaunchRequest) -> str:
        key = (request.run_id, request.attempt)
        return self.launched.setdefault(key, f"noop-{request.run_id}-{request.attempt}")

    def reap(self) -> list[ExitedJob]:
        return []

    async def close(self) -> None:
        return None


@dataclass
class _Job:
    request: LaunchRequest
    process: asyncio.subprocess.Process
    log_path: Path


@dataclass
class LocalLauncher:
    """One `python -m services.trainer` subprocess per run, at most `max_concurrent` at once."""

    log_dir: Path
    max_concurrent: int = 1
    env: dict[str, str] = field(default_factory=dict)
    name: str = "local"
    _jobs: dict[tuple[int, int], _Job] = field(default_factory=dict)

    def free_slots(self) -> int:
        running = sum(1 for job in self._jobs.values() if job.process.returncode is None)
        return max(self.max_concurrent - running, 0)

    async def launch(self, request: LaunchRequest) -> str:
        key = (request.run_id, request.attempt)
        if key in self._jobs:
            return f"pid-{self._jobs[key].process.pid}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"run-{request.run_id}-attempt-{request.attempt}.log"
        command = [
            sys.executable, "-m", "services.trainer",
            "--run-id", str(request.run_id),
            "--attempt", str(request.attempt),
            "--lease-epoch", str(request.lease_epoch),
        ]
        try:
            with open(log_path, "ab") as log:
                process = await asyncio.create_subprocess_exec(
                    *command, cwd=ROOT, env={**os.environ, **self.env},
                    stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                )
        except OSError as exc:
            raise LaunchFailed(f"could not start the local trainer: {exc}") from exc
        self._jobs[key] = _Job(request, process, log_path)
        return f"pid-{process.pid}"

    def reap(self) -> list[ExitedJob]:
        exited = []
        for key, job in list(self._jobs.items()):
            if job.process.returncode is not None:
                del self._jobs[key]
                exited.append(ExitedJob(job.request, job.process.returncode, _tail(job.log_path)))
        return exited

    async def close(self) -> None:
        """Trainers outlive the dispatcher on purpose (they hold their own leases)."""
        self._jobs.clear()


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return ""
    return redact_text(data.decode("utf-8", "replace"))
