"""Launchers start, watch and stop the training job of a run: `local` (a subprocess) or `noop`.

One protocol for every launcher (the RunPod one lives in its own module):
- `launch(request)` starts the job of a (run, attempt, lease) and returns what identifies it
  (`LaunchedJob`: an external id plus launcher-specific identity, stored in `run_launches`). A
  local job is started held at a gate and trains only after `release()`, which the dispatcher
  calls once `mark_launched` has committed `run.launched`; a job whose launch is never recorded
  (the dispatcher died, or the run was fenced) exits without touching the run.
- `state(record)` tells from a stored launch record, in any process after any restart, whether
  the job still runs (`alive`), is gone (`gone`) or cannot be told from here (`unknown`).
- `stop(record, force)` stops it: graceful first (local: SIGTERM), forced after a grace period
  (local: SIGKILL).
A launcher never sees secrets in its payload: the job gets the run id, attempt and the claim's
lease token (its only key to that run, for that attempt); the worker reads its database URL and
keys from its own environment.
"""
from __future__ import annotations

import asyncio
import enum
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from services.common.errors import LaunchFailed
from services.common.logging import redact_text
from services.common.settings import get_settings
from services.trainer.memory import memory_limiter

ROOT = Path(__file__).resolve().parents[2]
GATE_OPEN = b"go\n"


@dataclass(frozen=True)
class LaunchRequest:
    run_id: int
    attempt: int
    lease_epoch: int
    lease_token: str = field(repr=False)


@dataclass(frozen=True)
class LaunchedJob:
    """What identifies a started job: stored in run_launches before the job may train."""

    external_id: str
    identity: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchRecord:
    """A stored launch (a row of run_launches) as any process reads it back."""

    run_id: int
    attempt: int
    lease_epoch: int
    launcher: str
    external_job_id: str | None
    identity: dict[str, Any]

    @classmethod
    def from_row(cls, row) -> "LaunchRecord":
        return cls(row["run_id"], row["attempt"], row["lease_epoch"], row["launcher"],
                   row["external_job_id"], row["identity"] or {})


class JobState(str, enum.Enum):
    ALIVE = "alive"
    GONE = "gone"
    UNKNOWN = "unknown"


class Launcher(Protocol):
    name: str
    max_concurrent: int
    watches_jobs: bool  # whether state() can tell; the dispatcher then counts live launches

    async def launch(self, request: LaunchRequest) -> LaunchedJob: ...
    async def release(self, request: LaunchRequest, job: LaunchedJob) -> None: ...
    async def abandon(self, request: LaunchRequest, job: LaunchedJob) -> None: ...
    def state(self, record: LaunchRecord) -> JobState: ...
    def stop(self, record: LaunchRecord, *, force: bool) -> None: ...
    def exit_summary(self, record: LaunchRecord) -> str: ...
    async def close(self) -> None: ...


class NoopLauncher:
    """Records launches and runs nothing: for tests and queue benchmarks (jobs never end)."""

    name = "noop"
    max_concurrent = 1_000_000
    watches_jobs = False

    def __init__(self) -> None:
        self.launched: dict[tuple[int, int], str] = {}

    async def launch(self, request: LaunchRequest) -> LaunchedJob:
        key = (request.run_id, request.attempt)
        return LaunchedJob(self.launched.setdefault(key, f"noop-{request.run_id}-{request.attempt}"))

    async def release(self, request: LaunchRequest, job: LaunchedJob) -> None:
        return None

    async def abandon(self, request: LaunchRequest, job: LaunchedJob) -> None:
        self.launched.pop((request.run_id, request.attempt), None)

    def state(self, record: LaunchRecord) -> JobState:
        return JobState.UNKNOWN

    def stop(self, record: LaunchRecord, *, force: bool) -> None:
        return None

    def exit_summary(self, record: LaunchRecord) -> str:
        return ""

    async def close(self) -> None:
        return None


def process_identity(pid: int) -> dict[str, Any]:
    """host, pid and start time: a pid reused by another process has another start time."""
    return {"host": socket.gethostname(), "pid": pid,
            "create_time": psutil.Process(pid).create_time()}


def identified_process(identity: dict[str, Any]) -> psutil.Process | None | bool:
    """The live process an identity names; None when it is gone; False when it is on another
    host (cannot be told from here)."""
    if identity.get("host") != socket.gethostname() or "pid" not in identity:
        return False
    try:
        process = psutil.Process(int(identity["pid"]))
        if abs(process.create_time() - float(identity["create_time"])) > 0.01:
            return None  # the pid now belongs to another process
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return process
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError, KeyError):
        return None


@dataclass
class LocalLauncher:
    """One `python -m services.dispatcher.local_job` subprocess per run (the trainer behind a
    launch gate), in its own session so a Ctrl-C of the dispatcher's terminal does not reach it.
    `max_concurrent` is enforced by the dispatcher from the live launch records."""

    log_dir: Path
    max_concurrent: int = 1
    env: dict[str, str] = field(default_factory=dict)
    name: str = "local"
    watches_jobs: bool = True
    _held: dict[tuple[int, int], asyncio.subprocess.Process] = field(default_factory=dict)

    def _log_path(self, request: LaunchRequest) -> Path:
        return self.log_dir / f"run-{request.run_id}-attempt-{request.attempt}.log"

    async def launch(self, request: LaunchRequest) -> LaunchedJob:
        held = self._held.get((request.run_id, request.attempt))
        if held is not None:  # idempotent per (run, attempt): the job already waits at its gate
            return LaunchedJob(f"pid-{held.pid}", self._identity(request, held.pid))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_path(request)
        command = [
            sys.executable, "-m", "services.dispatcher.local_job",
            "--run-id", str(request.run_id),
            "--attempt", str(request.attempt),
        ]
        try:
            with open(log_path, "ab") as log:
                process = await asyncio.create_subprocess_exec(
                    *command, cwd=ROOT, env={**os.environ, **self.env},
                    stdin=asyncio.subprocess.PIPE, stdout=log, stderr=log,
                    start_new_session=True,
                    preexec_fn=memory_limiter(get_settings().worker_memory_budget),  # issue 8
                )
            identity = self._identity(request, process.pid)
        except (OSError, psutil.Error) as exc:
            raise LaunchFailed(f"could not start the local trainer: {exc}") from exc
        self._held[(request.run_id, request.attempt)] = process
        return LaunchedJob(f"pid-{process.pid}", identity)

    def _identity(self, request: LaunchRequest, pid: int) -> dict[str, Any]:
        return {**process_identity(pid), "log_path": str(self._log_path(request))}

    async def _close_gate(self, key: tuple[int, int], message: bytes) -> None:
        """Write `message` to the held job of (run, attempt) `key` and close its stdin."""
        process = self._held.pop(key, None)
        if process is None or process.stdin is None:
            return
        try:
            process.stdin.write(message)
            await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the job is gone already
        process.stdin.close()
        try:
            await process.stdin.wait_closed()
        except (BrokenPipeError, ConnectionResetError):
            pass

    async def release(self, request: LaunchRequest, job: LaunchedJob) -> None:
        await self._close_gate((request.run_id, request.attempt),
                               GATE_OPEN + request.lease_token.encode() + b"\n")

    async def abandon(self, request: LaunchRequest, job: LaunchedJob) -> None:
        await self._close_gate((request.run_id, request.attempt), b"")

    def state(self, record: LaunchRecord) -> JobState:
        if not record.identity:
            return JobState.GONE  # the launch recorded no process: no job was let go
        process = identified_process(record.identity)
        if process is False:
            return JobState.UNKNOWN
        return JobState.GONE if process is None else JobState.ALIVE

    def stop(self, record: LaunchRecord, *, force: bool) -> None:
        """SIGTERM (graceful) or SIGKILL (forced) to the job's process group, after checking
        that the pid is still the job's; SIGCONT so a stopped (hung) process sees it."""
        process = identified_process(record.identity)
        if not process:
            return
        sig = signal.SIGKILL if force else signal.SIGTERM
        try:
            os.killpg(process.pid, sig)
            if not force:
                os.killpg(process.pid, signal.SIGCONT)
        except (ProcessLookupError, PermissionError):
            pass

    def exit_summary(self, record: LaunchRecord) -> str:
        path = record.identity.get("log_path")
        return _tail(Path(path), 500) if path else ""

    async def close(self) -> None:
        """Trainers outlive the dispatcher on purpose (they hold their own leases); a job still
        held at its gate sees the gate close and exits."""
        for key in list(self._held):
            await self._close_gate(key, b"")


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return ""
    return redact_text(data.decode("utf-8", "replace"))
