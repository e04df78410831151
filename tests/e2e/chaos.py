"""Chaos test harness: the dispatcher and reconciler as real `skutrain` processes against the
test database, trainers started by them, and helpers to wait on the database's view."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from db import repository
from services.dispatcher.launchers import identified_process

ROOT = Path(__file__).resolve().parents[2]
FINAL = {"completed", "failed", "cancelled"}


class Services:
    """Service processes of one test; stop_all() also kills every trainer they launched."""

    def __init__(self, db_url: str, data_dir: Path):
        self.db_url = db_url
        self.data_dir = data_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "DATABASE_URL": self.db_url, "SKUTRAIN_DATA_DIR": str(self.data_dir),
                "SKUTRAIN_PROGRESS_INTERVAL": "0", "SKUTRAIN_LOG_LEVEL": "INFO", "HF_TOKEN": "",
                "SKUTRAIN_LOG_FORMAT": "json", "SKUTRAIN_RECONCILE_INTERVAL": "0.5", **extra}

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen:
        """A service in its own process group, as a terminal's foreground job (Ctrl-C sends
        SIGINT to the whole group)."""
        log = open(self.data_dir / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", *args], cwd=ROOT,
                                env=self.env(**env), stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, process_group=0)
        self.procs[name] = proc
        return proc

    def dispatcher(self, name="dispatcher", max_concurrent=2, lease=20, **env):
        return self.start(name, "dispatcher", "--launcher", "local", "--max-concurrent",
                          str(max_concurrent), "--poll-interval", "0.5", "--lease-seconds",
                          str(lease), **env)

    def reconciler(self, name="reconciler", **env):
        return self.start(name, "reconciler", **env)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(10)

    def log(self, name: str) -> str:
        return (self.data_dir / f"{name}.log").read_text(errors="replace")

    async def stop_all(self, conn) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for row in await conn.fetch("SELECT identity FROM run_launches"):
            process = identified_process(row["identity"] or {})
            if process:
                os.killpg(process.pid, signal.SIGKILL)


async def wait_until(check, timeout: float, what: str, interval: float = 0.2):
    """Poll the coroutine function `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def statuses(conn, run_ids) -> dict[int, str]:
    rows = await conn.fetch("SELECT id, status FROM training_runs WHERE id = ANY($1::bigint[])",
                            list(run_ids))
    return {r["id"]: r["status"] for r in rows}


async def all_final(conn, run_ids, timeout: float) -> dict[int, dict]:
    async def done():
        s = await statuses(conn, run_ids)
        return len(s) == len(run_ids) and set(s.values()) <= FINAL
    await wait_until(done, timeout, f"runs {sorted(run_ids)} to finish")
    return {i: dict(await repository.get_run(conn, i)) for i in run_ids}


async def events(conn, run_id) -> list[dict]:
    return [dict(e) for e in await repository.run_events(conn, run_id)]


def assert_seq_contiguous(evts) -> None:
    """Per attempt, seq is 1..n with no gap and no duplicate."""
    by_attempt: dict[int, list[int]] = {}
    for e in evts:
        by_attempt.setdefault(e["attempt"], []).append(e["seq"])
    for attempt, seqs in by_attempt.items():
        start = 1 if attempt > 0 else 1
        assert seqs == list(range(start, start + len(seqs))), (attempt, seqs)


def trainer_pid(identity: dict) -> int | None:
    process = identified_process(identity or {})
    return process.pid if process else None


def live_trainers(pids) -> int:
    return sum(1 for pid in pids if psutil.pid_exists(pid))
