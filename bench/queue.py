#!/usr/bin/env python
"""Queue benchmark: skutrain's dispatcher against pgqueuer 1.6.0 on one Postgres server.

Run: `.venv/bin/python bench/queue.py` (about a minute on a 2-core machine; `--help`
for the knobs; `--tiny` is the CI smoke run: a few seconds, no meaningful figures). The machine's CPU load before the start is printed with the results: figures
taken while other work runs are noisy, which is why throughput is the median of `--repeat` trials.

One server for every measurement: `DATABASE_URL` when set (the script creates and drops its own
databases there), else a private embedded Postgres in a temporary directory with its default
settings (pgqueuer needs nothing beyond them). Every phase gets a fresh database.

1. Insert -> claim latency. One `skutrain dispatcher --launcher noop --poll-interval 30` process
   (so only NOTIFY can wake it within the test); this process inserts runs one at a time with a
   plain INSERT, 20-50 ms apart. Latency is read from the events table (run.queued vs run.claimed
   created_at; both clock_timestamp()), and queued -> launched as an upper bound of
   "enqueue -> job started".
2. Claim + noop-launch throughput with 1 and 4 dispatcher processes (CLI, noop launcher) at
   batch sizes 10 and 100: the dispatchers are started and listening on an empty queue, then
   N runs are queued by one INSERT ... SELECT (one NOTIFY), `--repeat` times against the same
   processes. Rate = N / (first run.claimed -> last run.launched) of the trial's runs, from the
   events table; the median of the trials is reported. Every run must have exactly one
   run.claimed and one run.launched event.
3. pgqueuer at EQUAL settings: for every (processes x batch) of phase 2, a drain of the same N
   jobs with as many consumers (one asyncpg connection each, like our dispatcher processes) at
   the same dequeue batch size, timed the same way (N / first -> last handler call), each
   `--repeat` times, plus the NOTIFY latency (one consumer, default dequeue_timeout 30 s, one
   job enqueued every 20-50 ms). pgqueuer's own time-based "throughput" strategy (1 producer,
   5 consumers) is not compared: its settings differ from ours. Its schema is installed with
   its own CLI (`pgq --pg-dsn ... install`).
4. Prints the table and the ratios (ours / pgqueuer) and writes bench/results/queue.json.

The script file is named queue.py, like the stdlib module, so it removes its own directory from
sys.path before importing anything.
"""
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
_ROOT = os.path.dirname(_HERE)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(_ROOT)
RESULTS = ROOT / "bench" / "results" / "queue.json"

LATENCY_P50_TARGET_MS = 10.0
LATENCY_P99_TARGET_MS = 50.0
THROUGHPUT_TARGET_RATIO = 1.0


# -- small helpers -------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(max(values), 3) if values else None,
        "mean": round(sum(values) / len(values), 3) if values else None,
    }


def cpu_busy_pct(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over `seconds` (from /proc/stat); -1 where unavailable."""
    def sample():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return -1.0
    total = total1 - total0
    return round(100.0 * (total - (idle1 - idle0)) / total, 1) if total else -1.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def catalog(n_products: int = 12, frame_count: int = 24, real_per_product: int = 8) -> list[dict]:
    """Enough data for the dispatcher's preflight with the default config ('{}')."""
    return [
        {
            "barcode": f"bench-{i:05d}",
            "product_name": f"Bench product {i}",
            "brand_name": f"brand-{i % 3}",
            "category": f"category-{i % 4}",
            "frames_path": f"storage://catalog/p{i}",
            "frame_count": frame_count,
            "images": [
                {"url": f"https://images.invalid/p{i}/real-{j}.jpg", "domain": "real",
                 "frame_index": None, "source_key": f"p{i}-real-{j}"}
                for j in range(real_per_product)
            ],
        }
        for i in range(n_products)
    ]


# -- the server and its databases ----------------------------------------------------------
class Server:
    def __init__(self, url: str):
        from db.connection import asyncpg_dsn

        self.url = url
        self.admin_dsn = asyncpg_dsn(url)
        self.created: list[str] = []
        self.tag = uuid.uuid4().hex[:6]

    def url_for(self, name: str) -> str:
        from db.connection import with_database

        return with_database(self.url, name)

    def dsn_for(self, name: str) -> str:
        from db.connection import asyncpg_dsn

        return asyncpg_dsn(self.url_for(name))

    async def execute(self, *statements: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin_dsn)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def create(self, base: str, template: str | None = None) -> str:
        name = f"bq_{self.tag}_{base}"
        await self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        suffix = f" TEMPLATE {template}" if template else ""
        await self.execute(f"CREATE DATABASE {name}{suffix}")
        self.created.append(name)
        return name

    async def drop(self, name: str) -> None:
        await self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if name in self.created:
            self.created.remove(name)

    async def info(self) -> dict:
        import asyncpg

        conn = await asyncpg.connect(self.admin_dsn)
        try:
            out = {"version": await conn.fetchval("SHOW server_version")}
            for setting in ("fsync", "synchronous_commit", "shared_buffers", "max_connections",
                            "wal_level"):
                out[setting] = await conn.fetchval(f"SHOW {setting}")
            return out
        finally:
            await conn.close()


# -- child processes -----------------------------------------------------------------------
class Children:
    """Every process the script starts; stop_all() in the finally block ends the rest."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def start(self, argv: list[str], tag: str,
              env: dict | None = None) -> tuple[subprocess.Popen, Path]:
        path = self.log_dir / f"{tag}.log"
        with open(path, "wb") as out:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT,
            )
        self.procs.append((proc, path))
        return proc, path

    @staticmethod
    def stop(proc: subprocess.Popen, timeout: float = 20.0) -> int | None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    @staticmethod
    def stop_many(procs: list[subprocess.Popen], timeout: float = 20.0) -> tuple[list, float]:
        """SIGTERM all at once, then wait; returns (exit codes, seconds until the last exited)."""
        started = time.perf_counter()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [Children.stop(proc, timeout) for proc in procs]
        return codes, round(time.perf_counter() - started, 2)

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                self.stop(proc, timeout=10.0)


def skutrain_argv() -> list[str]:
    exe = Path(sys.executable).parent / "skutrain"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "services.cli"]


def start_dispatcher(children: Children, db_url: str, tag: str, batch_size: int,
                     poll_interval: float, data_dir: Path) -> tuple[subprocess.Popen, Path]:
    argv = skutrain_argv() + [
        "dispatcher", "--launcher", "noop", "--batch-size", str(batch_size),
        "--poll-interval", str(poll_interval),
    ]
    env = {"DATABASE_URL": db_url, "SKUTRAIN_LOG_FORMAT": "json", "SKUTRAIN_LOG_LEVEL": "INFO",
           "SKUTRAIN_DATA_DIR": str(data_dir)}
    return children.start(argv, tag, env)


async def wait_for_log(procs: list[tuple[subprocess.Popen, Path]], needle: str,
                       timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        pending = []
        for proc, path in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{path.name} exited with {proc.returncode}: "
                                   f"{path.read_text(errors='replace')[-2000:]}")
            if needle not in path.read_text(errors="replace"):
                pending.append(path.name)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{pending} did not log {needle!r} within {timeout:.0f} s")
        await asyncio.sleep(0.05)


def log_problems(path: Path) -> list[str]:
    """Warning/error lines of a dispatcher's JSON log."""
    problems = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if line.strip() and "XDG_RUNTIME_DIR" not in line and "return Path(" not in line:
                problems.append(line[:300])
            continue
        if record.get("level") in ("warning", "error", "critical"):
            problems.append(line[:300])
    return problems


# -- phase 1: insert -> claim latency --------------------------------------------------------
async def ours_latency(server: Server, template: str, children: Children, data_dir: Path,
                       samples: int, warmup: int) -> dict:
    import asyncpg

    name = await server.create("latency", template)
    proc, path = start_dispatcher(children, server.url_for(name), "dispatcher-latency", 10, 30.0,
                                  data_dir)
    conn = await asyncpg.connect(server.dsn_for(name))
    try:
        await wait_for_log([(proc, path)], "dispatcher.listening")
        await asyncio.sleep(0.5)  # its first poll (on LISTEN) has run
        insert = "INSERT INTO training_runs (name, config) VALUES ($1, '{}')"
        for i in range(warmup):
            await conn.execute(insert, f"warm-{i}")
            await asyncio.sleep(0.03)
        started = time.perf_counter()
        for i in range(samples):
            await conn.execute(insert, f"lat-{i}")
            await asyncio.sleep(random.uniform(0.020, 0.050))
        total = warmup + samples
        deadline = time.monotonic() + 40
        while await conn.fetchval(
            "SELECT count(*) FROM training_events WHERE type = 'run.launched'"
        ) < total:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        rows = await conn.fetch("""
            SELECT r.id,
                   (SELECT created_at FROM training_events e
                     WHERE e.run_id = r.id AND e.type = 'run.queued') AS queued,
                   (SELECT min(created_at) FROM training_events e
                     WHERE e.run_id = r.id AND e.type = 'run.claimed') AS claimed,
                   (SELECT min(created_at) FROM training_events e
                     WHERE e.run_id = r.id AND e.type = 'run.launched') AS launched,
                   r.claimed_at, r.created_at
              FROM training_runs r WHERE r.name LIKE 'lat-%' ORDER BY r.id""")
        claim_ms = [(r["claimed"] - r["queued"]).total_seconds() * 1000
                    for r in rows if r["claimed"] is not None]
        launch_ms = [(r["launched"] - r["queued"]).total_seconds() * 1000
                     for r in rows if r["launched"] is not None]
        column_ms = [(r["claimed_at"] - r["created_at"]).total_seconds() * 1000
                     for r in rows if r["claimed_at"] is not None]
        missing = sum(1 for r in rows if r["launched"] is None)
    finally:
        await conn.close()
        (rc,), stop_s = Children.stop_many([proc])
        await server.drop(name)
    return {
        "samples": samples,
        "warmup": warmup,
        "insert_gap_ms": [20, 50],
        "poll_interval_s": 30.0,
        "seconds": round(elapsed, 2),
        "not_launched": missing,
        "queued_to_claimed_ms": summary(claim_ms),
        "queued_to_launched_ms": summary(launch_ms),
        "claimed_at_minus_created_at_ms": summary(column_ms),
        "dispatcher_exit_code": rc,
        "dispatcher_stop_s": stop_s,
        "dispatcher_log_problems": log_problems(path)[:10],
    }


# -- phase 2: claim + noop-launch throughput -------------------------------------------------
async def _throughput_trial(conn, n_runs: int, procs: list) -> dict:
    """Queue n_runs with one INSERT ... SELECT and wait until every one has launched or failed."""
    base = await conn.fetchval("SELECT coalesce(max(id), 0) FROM training_runs")
    await conn.execute(
        "INSERT INTO training_runs (name, config) "
        "SELECT 'tp-' || g, '{}'::jsonb FROM generate_series(1, $1) g", n_runs)
    committed = time.perf_counter()
    deadline = time.monotonic() + max(60.0, n_runs / 50)
    timed_out = False
    while True:
        done = await conn.fetchval("SELECT count(*) FROM training_events WHERE run_id > $1 "
                                   "AND type IN ('run.launched', 'run.failed')", base)
        if done >= n_runs:
            break
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            timed_out = True
            break
        await asyncio.sleep(0.05)
    wall = time.perf_counter() - committed
    window = await conn.fetchrow("""
        SELECT min(created_at) FILTER (WHERE type = 'run.claimed')  AS first_claim,
               max(created_at) FILTER (WHERE type = 'run.launched') AS last_launch
          FROM training_events WHERE run_id > $1""", base)
    check = await conn.fetchrow("""
        SELECT count(*) AS runs,
               count(*) FILTER (WHERE launched = 1) AS launched_once,
               count(*) FILTER (WHERE launched = 0) AS never_launched,
               count(*) FILTER (WHERE launched > 1) AS launched_twice_or_more,
               count(*) FILTER (WHERE claimed > 1)  AS claimed_twice_or_more,
               count(*) FILTER (WHERE failed > 0)   AS failed
          FROM (SELECT r.id,
                       count(e.id) FILTER (WHERE e.type = 'run.launched') AS launched,
                       count(e.id) FILTER (WHERE e.type = 'run.claimed')  AS claimed,
                       count(e.id) FILTER (WHERE e.type = 'run.failed')   AS failed
                  FROM training_runs r LEFT JOIN training_events e ON e.run_id = r.id
                 WHERE r.id > $1 GROUP BY r.id) s""", base)
    per_owner = sorted(r[0] for r in await conn.fetch(
        "SELECT count(*) FROM training_events WHERE run_id > $1 AND type = 'run.claimed' "
        "GROUP BY payload->>'owner'", base))
    span = None
    if window["first_claim"] and window["last_launch"]:
        span = (window["last_launch"] - window["first_claim"]).total_seconds()
    launched = check["launched_once"] + check["launched_twice_or_more"]
    return {
        "timed_out": timed_out,
        "server_window_s": round(span, 4) if span else None,
        "runs_per_s": round(launched / span, 1) if span else None,
        "wall_s_commit_to_all_launched": round(wall, 3),
        "wall_runs_per_s": round(launched / wall, 1) if wall else None,
        "exactly_once": (check["launched_once"] == n_runs and check["claimed_twice_or_more"] == 0
                         and check["launched_twice_or_more"] == 0),
        "check": dict(check),
        "claims_per_dispatcher": per_owner,
        "loadavg": os.getloadavg()[0],
    }


async def ours_throughput(server: Server, template: str, children: Children, data_dir: Path,
                          n_runs: int, processes: int, batch_size: int, repeat: int) -> dict:
    """`repeat` trials of n_runs each against the same dispatcher processes."""
    import asyncpg

    name = await server.create(f"tp_{processes}x{batch_size}", template)
    url = server.url_for(name)
    procs = [start_dispatcher(children, url, f"dispatcher-tp-{processes}x{batch_size}-{i}",
                              batch_size, 2.0, data_dir) for i in range(processes)]
    conn = await asyncpg.connect(server.dsn_for(name))
    trials = []
    try:
        await wait_for_log(procs, "dispatcher.listening")
        await asyncio.sleep(0.5)
        for _ in range(repeat):
            trials.append(await _throughput_trial(conn, n_runs, [p for p, _ in procs]))
            if trials[-1]["timed_out"]:
                break
        statuses = dict(await conn.fetch(
            "SELECT status, count(*) FROM training_runs GROUP BY status"))
        failure = await conn.fetchval(
            "SELECT payload::text FROM training_events WHERE type = 'run.failed' LIMIT 1")
    finally:
        await conn.close()
        rcs, stop_s = Children.stop_many([p for p, _ in procs])
        await server.drop(name)
    rates = [t["runs_per_s"] for t in trials if t["runs_per_s"]]
    problems = [line for _, path in procs for line in log_problems(path)]
    return {
        "processes": processes,
        "batch_size": batch_size,
        "runs": n_runs,
        "trials": trials,
        "runs_per_s": round(statistics.median(rates), 1) if rates else None,
        "runs_per_s_min": min(rates) if rates else None,
        "runs_per_s_max": max(rates) if rates else None,
        "timed_out": any(t["timed_out"] for t in trials),
        "exactly_once": bool(trials) and all(t["exactly_once"] for t in trials),
        "claims_per_dispatcher": [t["claims_per_dispatcher"] for t in trials],
        "statuses": statuses,
        "first_failure_payload": failure,
        "dispatcher_exit_codes": rcs,
        "dispatchers_stop_s": stop_s,
        "dispatcher_log_problems": problems[:10],
    }


# -- phase 3: pgqueuer (driver side) ---------------------------------------------------------
def pgq_install(dsn: str) -> str:
    exe = Path(sys.executable).parent / "pgq"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "pgqueuer"]
    out = subprocess.run(argv + ["--pg-dsn", dsn, "install"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"pgq install failed ({out.returncode}): {out.stderr[-1500:]}")
    return " ".join([Path(argv[0]).name, *argv[1:], "--pg-dsn", "<dsn>", "install"])


def worker_argv(mode: str, dsn: str, out: Path, **options) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--pgq-worker", mode, "--dsn", dsn,
            "--out", str(out)]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


async def run_worker(children: Children, argv: list[str], tag: str, out: Path,
                     timeout: float) -> dict:
    proc, path = children.start(argv, tag)
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            Children.stop(proc)
            raise RuntimeError(f"pgqueuer worker {tag} ran past {timeout:.0f} s: "
                               f"{path.read_text(errors='replace')[-1500:]}")
        await asyncio.sleep(0.1)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"pgqueuer worker {tag} exited with {proc.returncode}: "
                           f"{path.read_text(errors='replace')[-1500:]}")
    return json.loads(out.read_text())


async def pgq_latency(server: Server, dsn: str, children: Children, work: Path, samples: int,
                      warmup: int) -> dict:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    out = work / "pgq-latency.json"
    proc, path = children.start(worker_argv("latency", dsn, out), "pgq-latency")
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        # Ready when it has handled a warm-up job: enqueue until the queue is empty.
        deadline = time.monotonic() + 60
        await queries.enqueue("lat", b"w", 0)
        while await conn.fetchval("SELECT count(*) FROM pgqueuer") > 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pgqueuer latency consumer not ready: "
                                   f"{path.read_text(errors='replace')[-1500:]}")
            await asyncio.sleep(0.1)
        for _ in range(warmup):
            await queries.enqueue("lat", b"w", 0)
            await asyncio.sleep(0.03)
        first_id = None
        started = time.perf_counter()
        for i in range(samples):
            ids = await queries.enqueue("lat", b"m", 0)
            first_id = first_id if first_id is not None else ids[0]
            await asyncio.sleep(random.uniform(0.020, 0.050))
        deadline = time.monotonic() + 40
        while await conn.fetchval("SELECT count(*) FROM pgqueuer") > 0:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        await asyncio.sleep(0.3)
        # Server side, the analogue of our queued -> claimed: pgqueuer_log 'queued' -> 'picked'.
        rows = await conn.fetch("""
            SELECT job_id, min(created) FILTER (WHERE status = 'queued') AS queued,
                           min(created) FILTER (WHERE status = 'picked') AS picked
              FROM pgqueuer_log WHERE job_id >= $1 GROUP BY job_id""", first_id)
        picked_ms = [(r["picked"] - r["queued"]).total_seconds() * 1000
                     for r in rows if r["picked"] and r["queued"]]
    finally:
        await conn.close()
        Children.stop(proc)
    if not out.exists():
        raise RuntimeError(f"pgqueuer latency consumer wrote no result: "
                           f"{path.read_text(errors='replace')[-1500:]}")
    handler_ms = json.loads(out.read_text())["latencies_ms"]
    return {
        "samples": samples,
        "warmup": warmup,
        "insert_gap_ms": [20, 50],
        "dequeue_timeout_s": 30,
        "seconds": round(elapsed, 2),
        "enqueue_to_handler_start_ms": summary(handler_ms),
        "queued_to_picked_ms_server": summary(picked_ms),
    }


# -- phase 3: pgqueuer (worker processes) ----------------------------------------------------
def _pgq_consumers(dsn_conns, batch_size: int, on_job):
    from pgqueuer import AsyncpgDriver, PgQueuer

    pgqs = []
    for conn in dsn_conns:
        pgq = PgQueuer(AsyncpgDriver(conn))

        @pgq.entrypoint("asyncfetch")
        async def asyncfetch(job) -> None:
            on_job(job)

        # pgqueuer 1.6.0 accepts async entrypoints only (sync ones raise TypeError).
        @pgq.entrypoint("syncfetch")
        async def syncfetch(job) -> None:
            on_job(job)

        pgqs.append(pgq)
    return pgqs


async def worker_drain(args) -> dict:
    """Pre-enqueue N jobs, then drain them with C consumers x batch B (pgqueuer's drain mode)."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries
    from pgqueuer.types import QueueExecutionMode

    setup = Queries(AsyncpgDriver(await asyncpg.connect(args.dsn)))
    await setup.clear_statistics_log()
    await setup.clear_queue()
    entrypoints = ["syncfetch", "asyncfetch"] * args.jobs
    await setup.enqueue(random.sample(entrypoints, k=args.jobs), [b"" for _ in range(args.jobs)],
                        [0] * args.jobs)
    stamps: list[float] = []
    conns = [await asyncpg.connect(args.dsn) for _ in range(args.consumers)]
    pgqs = _pgq_consumers(conns, args.batch_size, lambda _job: stamps.append(time.perf_counter()))
    started = time.perf_counter()
    await asyncio.gather(*(pgq.run(batch_size=args.batch_size, mode=QueueExecutionMode.drain)
                           for pgq in pgqs))
    elapsed = time.perf_counter() - started
    span = (max(stamps) - min(stamps)) if len(stamps) > 1 else None
    return {"consumers": args.consumers, "batch_size": args.batch_size, "jobs": args.jobs,
            "handled": len(stamps), "elapsed_s": round(elapsed, 3),
            "jobs_per_s_elapsed": round(len(stamps) / elapsed, 1),
            "window_s": round(span, 4) if span else None,
            "jobs_per_s": round(len(stamps) / span, 1) if span else None}


async def worker_latency(args) -> dict:
    """One NOTIFY-woken consumer; records enqueue (job.created) -> handler start."""
    import asyncpg
    from pgqueuer import AsyncpgDriver, PgQueuer

    pgq = PgQueuer(AsyncpgDriver(await asyncpg.connect(args.dsn)))
    latencies: list[float] = []

    @pgq.entrypoint("lat")
    async def lat(job) -> None:
        now = datetime.now(timezone.utc)
        if job.payload == b"m":
            latencies.append((now - job.created).total_seconds() * 1000)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, pgq.shutdown.set)
    await pgq.run(batch_size=args.batch_size)
    return {"latencies_ms": latencies}


def worker_main(args) -> int:
    mode = {"drain": worker_drain,
            "latency": worker_latency}[args.pgq_worker]

    async def go() -> None:
        result = await mode(args)
        Path(args.out).write_text(json.dumps(result))

    try:
        import uvloop

        uvloop.run(go())
    except ImportError:
        asyncio.run(go())
    return 0


# -- report ----------------------------------------------------------------------------------
def ratio(a, b):
    return round(a / b, 2) if a and b else None


def fmt_ratio(a, b) -> str:
    r = ratio(a, b)
    return "n/a" if r is None else f"{r}x"


def short(text, limit: int = 200) -> str:
    """The first line and the last non-empty line of an error, at most `limit` characters."""
    lines = [line for line in str(text).splitlines() if line.strip()]
    if len(lines) > 1:
        return (lines[0][:limit // 2] + " ... " + lines[-1])[:limit]
    return (lines[0] if lines else "")[:limit]


def render(results: dict) -> str:
    ours_lat = results["ours"]["latency"]
    pgq = results["pgqueuer"]
    lines = []
    srv = results["server"]
    lines.append(f"Postgres {srv['version']} ({srv['kind']}; fsync={srv['fsync']}, "
                 f"synchronous_commit={srv['synchronous_commit']}, "
                 f"shared_buffers={srv['shared_buffers']}), {results['machine']['cpus']} CPUs, "
                 f"pgqueuer {pgq.get('version')}")
    bg = results["machine"]
    lines.append(f"Machine load: {bg['background_busy_pct']}% CPU busy before start, load average "
                 f"{bg['loadavg_start']} at start / {bg['loadavg_end']} at end"
                 + ("  <-- other work was running: figures are noisy"
                    if bg["background_busy_pct"] > 20 or bg["loadavg_start"] > 1.0 else ""))
    lines.append("")
    lines.append("Latency, NOTIFY-woken (ms)            p50      p95      p99      max      n")
    def lat_row(label, s):
        if not s or not s.get("n"):
            return f"{label:<36}  n/a"
        return (f"{label:<36}{s['p50']:>7.2f}  {s['p95']:>7.2f}  {s['p99']:>7.2f}  "
                f"{s['max']:>7.2f}  {s['n']:>5}")
    lines.append(lat_row("ours  queued -> claimed (events)", ours_lat["queued_to_claimed_ms"]))
    lines.append(lat_row("ours  queued -> launched (events)", ours_lat["queued_to_launched_ms"]))
    if "latency" in pgq:
        lines.append(lat_row("pgq   queued -> picked (its log)",
                             pgq["latency"]["queued_to_picked_ms_server"]))
        lines.append(lat_row("pgq   enqueue -> handler start",
                             pgq["latency"]["enqueue_to_handler_start_ms"]))
    else:
        lines.append(f"{'pgq   latency':<36}  not measured: {short(pgq.get('latency_error'))}")
    lines.append("")
    lines.append(f"Throughput (claim + noop launch), median of {results['repeat']} trial(s)"
                 "              /s     min..max     exactly-once")
    def tp_row(label, median, lo, hi, tail):
        if not median:
            return f"{label:<58}     n/a  {tail}"
        return f"{label:<58}{median:>8.1f}  {lo:>6.0f}..{hi:<6.0f}  {tail}"
    for tp in results["ours"]["throughput"]:
        label = (f"ours  {tp['processes']} dispatcher(s) x batch {tp['batch_size']}, "
                 f"N={tp['runs']} runs")
        tail = ("yes" if tp["exactly_once"] else "NO") + (" (TIMED OUT)" if tp["timed_out"] else "")
        lines.append(tp_row(label, tp["runs_per_s"], tp["runs_per_s_min"], tp["runs_per_s_max"],
                            tail))
    for drain in pgq.get("drains", []):
        label = (f"pgq   drain, {drain['consumers']} consumer(s) x batch {drain['batch_size']}, "
                 f"N={drain['jobs']} jobs")
        lines.append(tp_row(label, drain["jobs_per_s"], drain["jobs_per_s_min"] or 0,
                            drain["jobs_per_s_max"] or 0,
                            "jobs/s" if drain["jobs_per_s"] else short(pgq.get("drain_error"))))
    lines.append("")
    for tp in results["ours"]["throughput"]:
        lines.append(f"  ours {tp['processes']}x{tp['batch_size']}: claims per dispatcher "
                     f"{tp['claims_per_dispatcher'][0]}, SIGTERM -> all exited in "
                     f"{tp['dispatchers_stop_s']} s, log warnings "
                     f"{len(tp['dispatcher_log_problems'])}")
    lines.append(f"  ours latency dispatcher: SIGTERM -> exited in "
                 f"{ours_lat['dispatcher_stop_s']} s")
    lines.append("")
    lines.append("Ratios and targets")
    for row in results["ratios"]:
        lines.append(f"  {row['what']:<66} {row['value']:>8}  {row['verdict']}")
    if pgq.get("note"):
        lines.append("")
        lines.append("Note: " + pgq["note"])
    return "\n".join(lines)


def ratios(results: dict) -> list[dict]:
    out = []
    lat = results["ours"]["latency"]["queued_to_claimed_ms"]
    out.append({"what": "ours p50 queued->claimed (target <= 10 ms)", "value": f"{lat['p50']:.2f}",
                "verdict": "PASS" if lat["p50"] <= LATENCY_P50_TARGET_MS else "FAIL"})
    out.append({"what": "ours p99 queued->claimed (target <= 50 ms)", "value": f"{lat['p99']:.2f}",
                "verdict": "PASS" if lat["p99"] <= LATENCY_P99_TARGET_MS else "FAIL"})
    pgq = results["pgqueuer"]
    if "latency" in pgq:
        theirs = pgq["latency"]["queued_to_picked_ms_server"]
        if theirs.get("n"):
            out.append({"what": "p50 latency ours/pgq (queued->claimed vs queued->picked)",
                        "value": fmt_ratio(lat['p50'], theirs['p50']), "verdict": ""})
    if "latency" in pgq:
        ours_l = results["ours"]["latency"]["queued_to_launched_ms"]
        theirs = pgq["latency"]["enqueue_to_handler_start_ms"]
        if theirs.get("n"):
            out.append({"what": "p50 latency ours/pgq (queued->launched vs enqueue->handler)",
                        "value": fmt_ratio(ours_l['p50'], theirs['p50']), "verdict": ""})
    drains = {(d["consumers"], d["batch_size"]): d["jobs_per_s"] for d in pgq.get("drains", [])}
    for tp in results["ours"]["throughput"]:
        rate, tag = tp["runs_per_s"], f"{tp['processes']} x batch {tp['batch_size']}"
        theirs = drains.get((tp["processes"], tp["batch_size"]))
        r = ratio(rate, theirs)
        out.append({"what": f"throughput {tag} / pgq drain at equal settings (target >= 1.0x)",
                    "value": fmt_ratio(rate, theirs),
                    "verdict": "PASS" if r and r >= THROUGHPUT_TARGET_RATIO else "FAIL"})
    return out


# -- main ------------------------------------------------------------------------------------
async def bench(args, work: Path) -> dict:
    import asyncpg
    import pgqueuer

    from db import migrate, repository
    from db.connection import embedded_url
    from services.common.logging import redact_text

    data_dir = work / "data"
    data_dir.mkdir()
    logs = work / "logs"
    logs.mkdir()
    children = Children(logs)
    results: dict = {
        "created_at": datetime.now(timezone.utc).isoformat(),
        "command": "python bench/queue.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "background_busy_pct": cpu_busy_pct(1.0),
                    "loadavg_start": round(os.getloadavg()[0], 2)},
        "repeat": args.repeat,
        "runs_per_trial": args.runs,
    }
    log(f"machine: {results['machine']['background_busy_pct']}% CPU busy before start, "
        f"load average {results['machine']['loadavg_start']}")
    external = os.environ.get("DATABASE_URL")
    if external:
        url, kind = external, f"DATABASE_URL {redact_text(external)}"
    else:
        log("starting an embedded Postgres (default settings)")
        url, kind = embedded_url(work), "embedded, temporary directory, default settings"
    server = Server(url)
    try:
        results["server"] = {"kind": kind, **await server.info()}
        log(f"server: Postgres {results['server']['version']}")

        template = await server.create("template")
        migrate.upgrade(server.url_for(template))
        conn = await repository.connect(server.url_for(template))
        try:
            await repository.insert_catalog(conn, catalog())
        finally:
            await conn.close()

        results["ours"] = {}
        log(f"ours: latency, {args.latency_samples} single inserts 20-50 ms apart")
        results["ours"]["latency"] = await ours_latency(
            server, template, children, data_dir, args.latency_samples, args.warmup)
        s = results["ours"]["latency"]["queued_to_claimed_ms"]
        log(f"  queued->claimed p50 {s['p50']:.2f} ms p95 {s['p95']:.2f} p99 {s['p99']:.2f}")

        results["ours"]["throughput"] = []
        for procs, batch in args.configs:
            log(f"ours: throughput, {procs} dispatcher(s) x batch {batch}, N={args.runs}")
            tp = await ours_throughput(server, template, children, data_dir, args.runs, procs,
                                       batch, args.repeat)
            results["ours"]["throughput"].append(tp)
            log(f"  {[t['runs_per_s'] for t in tp['trials']]} runs/s, "
                f"exactly once: {tp['exactly_once']}")

        pgq: dict = {
            "version": pgqueuer.__version__,
            "note": ("pgqueuer 1.6.0's wheel ships no benchmark tool (upstream tools/benchmark.py "
                     "is not part of the installed package and `pgq` has no bench command); "
                     "drains at our settings and the NOTIFY latency were run "
                     "with pgqueuer's public API (PgQueuer + AsyncpgDriver, uvloop) by this "
                     "script in a separate process."),
        }
        results["pgqueuer"] = pgq
        pgq_db = await server.create("pgqueuer")
        dsn = server.dsn_for(pgq_db)
        pgq["install_command"] = pgq_install(dsn)
        log("pgqueuer: schema installed with its CLI")

        log(f"pgqueuer: latency, {args.latency_samples} single enqueues 20-50 ms apart")
        try:
            pgq["latency"] = await pgq_latency(server, dsn, children, work,
                                               args.latency_samples, args.warmup)
            s = pgq["latency"]["enqueue_to_handler_start_ms"]
            log(f"  enqueue->handler p50 {s['p50']:.2f} ms p95 {s['p95']:.2f} p99 {s['p99']:.2f}")
        except Exception as exc:  # report, keep going
            pgq["latency_error"] = f"{type(exc).__name__}: {exc}"
            log(f"  failed: {pgq['latency_error']}")

        pgq["drains"] = []
        for procs, batch in args.configs:
            runs = []
            for rep in range(args.repeat):
                log(f"pgqueuer: drain of N={args.runs} jobs, {procs} consumer(s) x batch {batch} "
                    f"(trial {rep + 1}/{args.repeat})")
                out = work / f"pgq-drain-{procs}x{batch}-{rep}.json"
                try:
                    runs.append(await run_worker(
                        children, worker_argv("drain", dsn, out, jobs=args.runs, consumers=procs,
                                              batch_size=batch),
                        f"pgq-drain-{procs}x{batch}-{rep}", out, timeout=120))
                    runs[-1]["loadavg"] = os.getloadavg()[0]
                    log(f"  {runs[-1]['jobs_per_s']} jobs/s")
                except Exception as exc:
                    pgq["drain_error"] = f"{type(exc).__name__}: {exc}"
                    log(f"  failed: {pgq['drain_error']}")
            rates = [t["jobs_per_s"] for t in runs if t.get("jobs_per_s")]
            pgq["drains"].append({
                "consumers": procs, "batch_size": batch, "jobs": args.runs,
                "jobs_per_s": round(statistics.median(rates), 1) if rates else None,
                "jobs_per_s_min": min(rates) if rates else None,
                "jobs_per_s_max": max(rates) if rates else None, "trials": runs})
        await server.drop(pgq_db)
        await server.drop(template)
    finally:
        children.stop_all()
        for name in list(server.created):
            try:
                await server.drop(name)
            except (OSError, asyncpg.PostgresError) as exc:
                log(f"could not drop {name}: {exc}")
    results["machine"]["loadavg_end"] = round(os.getloadavg()[0], 2)
    results["ratios"] = ratios(results)
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3000, help="runs per throughput trial")
    p.add_argument("--repeat", type=int, default=3, help="trials per throughput measurement")
    p.add_argument("--latency-samples", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--configs", default="1x10,4x10,1x100,4x100",
                   help="dispatcher processes x batch size, comma separated")
    p.add_argument("--out", default=None, help="JSON output (default bench/results/queue.json)")
    p.add_argument("--tiny", action="store_true",
                   help="CI smoke run: 40 runs, 1 trial, 1x10 only, 10 latency samples")
    # internal: the pgqueuer worker processes
    p.add_argument("--pgq-worker", choices=["drain", "latency"],
                   help=argparse.SUPPRESS)
    p.add_argument("--dsn", help=argparse.SUPPRESS)
    p.add_argument("--consumers", type=int, default=5, help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--jobs", type=int, default=4000, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        args.runs, args.repeat, args.latency_samples, args.warmup = 40, 1, 10, 2
        args.configs = "1x10"
    if not args.pgq_worker:
        args.configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.pgq_worker:
        return worker_main(args)
    import warnings

    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="skutrain-bench-queue-"))
    os.chmod(work, 0o755)  # the embedded server may run as its own system user
    try:
        results = asyncio.run(bench(args, work))
    finally:
        if not os.environ.get("DATABASE_URL"):
            from db.connection import stop_embedded

            try:
                stop_embedded(work)
            except Exception as exc:  # still remove the directory
                log(f"could not stop the embedded Postgres: {exc}")
        shutil.rmtree(work, ignore_errors=True)
    results["duration_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.out) if args.out else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(render(results))
    print(f"\ntotal {results['duration_s']} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
