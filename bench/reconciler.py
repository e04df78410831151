#!/usr/bin/env python
"""Reconciler benchmark: a sweep's cost must not grow with finished history.

Run: `.venv/bin/python bench/reconciler.py` (about a minute on a 2-core machine; `--tiny` is the
CI smoke run). One embedded Postgres (DATABASE_URL when set), two databases:
- "big": `--runs` runs (default 10,000) with `--checkpoints` checkpoints each (default 10, so
  100,000 rows), all finished, plus the same handful of runs that need work as "small";
- "small": `--small-runs` runs (default 100) with the same checkpoints per run, and the same
  handful of active runs (running, lease fresh), as a baseline measured in the same run.
Each database gets `--sweeps` full reconciler sweeps (every duty but the storage-listing orphan
sweep, which runs on its own timer and scales with storage, not with the database). Reported:
the median sweep time, the statements per sweep, and the table rows the sweep read
(pg_stat_user_tables: sequential + index tuples, flushed per sweep), with ratios big / small.
"""
from __future__ import annotations

import sys
from pathlib import Path

# bench/queue.py would shadow the stdlib's queue module: drop this directory from the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ACTIVE_RUNS = 5  # runs that need looking at in both databases (running, lease fresh)


class CountingConnection:
    """Counts the statements a sweep sends (every query goes through these methods)."""

    def __init__(self, conn):
        self._conn = conn
        self.statements = 0

    def __getattr__(self, name):
        attr = getattr(self._conn, name)
        if name in ("fetch", "fetchrow", "fetchval", "execute", "executemany"):
            async def counted(*args, **kwargs):
                self.statements += 1
                return await attr(*args, **kwargs)
            return counted
        return attr


async def populate(conn, runs: int, checkpoints: int) -> None:
    """`runs` finished runs with `checkpoints` checkpoints each (one best), then ACTIVE_RUNS
    running ones, written with set-based SQL (the triggers still run)."""
    await conn.execute(
        "INSERT INTO training_runs (name, config) "
        "SELECT 'hist-' || g, '{\"training\": {\"epochs\": 10}}' FROM generate_series(1, $1) g",
        runs)
    await conn.execute(
        "UPDATE training_runs SET status = 'completed', attempt = 1, lease_epoch = 1, "
        "finished_at = now(), total_epochs = $1", checkpoints)
    await conn.execute(
        "INSERT INTO checkpoints (run_id, attempt, epoch, manifest_url, size_bytes, shard_count, "
        "val_recall_at_1, val_loss, is_best) "
        "SELECT r.id, 1, e, 'storage://checkpoints/runs/' || r.run_uuid || '/attempt-1/epoch-' "
        "       || lpad(e::text, 3, '0') || '/manifest.json', 1000, 1, e / 100.0, 1.0, "
        "       e = $1 "
        "  FROM training_runs r, generate_series(1, $1) e", checkpoints)
    await conn.execute(
        "UPDATE training_runs r SET best_checkpoint_id = c.id FROM checkpoints c "
        "WHERE c.run_id = r.id AND c.is_best")
    await conn.execute(
        "INSERT INTO training_runs (name, config) "
        "SELECT 'active-' || g, '{}' FROM generate_series(1, $1) g", ACTIVE_RUNS)
    await conn.execute(
        "UPDATE training_runs SET status = 'running', attempt = 1, lease_epoch = 1, "
        "lease_expires_at = now() + interval '1 day', started_at = now() "
        "WHERE name LIKE 'active-%'")
    await conn.execute("VACUUM ANALYZE")


async def rows_read(conn) -> int:
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return await conn.fetchval(
        "SELECT coalesce(sum(coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)), 0) "
        "FROM pg_stat_user_tables")


async def measure(url: str, sweeps: int, work: Path) -> dict:
    from db import repository
    from services.common.storage import LocalStorage
    from services.dispatcher.launchers import LocalLauncher
    from services.reconciler.service import Reconciler, ReconcilerConfig

    reconciler = Reconciler(
        url, [LocalLauncher(log_dir=work / "logs")], LocalStorage(work / "storage"),
        ReconcilerConfig(orphan_interval=float("inf")))
    raw = await repository.connect(url)
    try:
        conn = CountingConnection(raw)
        await reconciler.sweep(conn)  # warm caches and plans
        times, statements, rows = [], [], []
        for _ in range(sweeps):
            before_rows, conn.statements = await rows_read(raw), 0
            started = time.perf_counter()
            result = await reconciler.sweep(conn)
            times.append((time.perf_counter() - started) * 1000)
            statements.append(conn.statements)
            rows.append(await rows_read(raw) - before_rows)
            assert not result.did_something(), result  # a steady state: nothing to repair
    finally:
        await raw.close()
    return {"sweep_ms_median": round(statistics.median(times), 3),
            "sweep_ms_max": round(max(times), 3),
            "statements_per_sweep": statistics.median(statements),
            "rows_read_per_sweep": statistics.median(rows)}


async def bench(args, work: Path) -> dict:
    import asyncpg

    from db import migrate
    from db.connection import asyncpg_dsn, embedded_url, with_database

    url = os.environ.get("DATABASE_URL") or embedded_url(work)
    admin = await asyncpg.connect(asyncpg_dsn(url))
    results = {}
    try:
        for name, runs in (("small", args.small_runs), ("big", args.runs)):
            database = f"bench_reconciler_{name}_{os.getpid()}"
            await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            await admin.execute(f"CREATE DATABASE {database}")
            db_url = with_database(url, database)
            try:
                await asyncio.to_thread(migrate.upgrade, db_url)
                conn = await asyncpg.connect(asyncpg_dsn(db_url))
                try:
                    started = time.perf_counter()
                    await populate(conn, runs, args.checkpoints)
                    print(f"{name}: {runs} finished runs x {args.checkpoints} checkpoints + "
                          f"{ACTIVE_RUNS} running, written in {time.perf_counter() - started:.1f} s",
                          flush=True)
                finally:
                    await conn.close()
                results[name] = {"runs": runs, "checkpoints": runs * args.checkpoints,
                                 **await measure(db_url, args.sweeps, work)}
            finally:
                await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    finally:
        await admin.close()
    return results


def render(results: dict) -> str:
    small, big = results["small"], results["big"]
    lines = ["", f"{'':<8}{'runs':>8}{'checkpoints':>13}{'sweep ms (median)':>19}"
                 f"{'statements':>12}{'rows read':>11}"]
    for name, r in (("small", small), ("big", big)):
        lines.append(f"{name:<8}{r['runs']:>8}{r['checkpoints']:>13}{r['sweep_ms_median']:>19.2f}"
                     f"{r['statements_per_sweep']:>12}{r['rows_read_per_sweep']:>11}")
    ratio = big["sweep_ms_median"] / small["sweep_ms_median"]
    lines.append(f"big / small: sweep time {ratio:.2f}x, statements "
                 f"{big['statements_per_sweep'] / small['statements_per_sweep']:.2f}x, rows read "
                 f"{big['rows_read_per_sweep']} vs {small['rows_read_per_sweep']} "
                 f"(history {big['runs'] // small['runs']}x larger)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10_000, help="finished runs in the big database")
    p.add_argument("--small-runs", type=int, default=100, help="finished runs in the baseline")
    p.add_argument("--checkpoints", type=int, default=10, help="checkpoints per finished run")
    p.add_argument("--sweeps", type=int, default=20)
    p.add_argument("--tiny", action="store_true", help="CI smoke run: 200 vs 20 runs, 3 sweeps")
    args = p.parse_args(argv)
    if args.tiny:
        args.runs, args.small_runs, args.checkpoints, args.sweeps = 200, 20, 3, 3
    import warnings

    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    work = Path(tempfile.mkdtemp(prefix="skutrain-bench-reconciler-"))
    os.chmod(work, 0o755)  # the embedded server may run as its own system user
    try:
        results = asyncio.run(bench(args, work))
    finally:
        if not os.environ.get("DATABASE_URL"):
            from db.connection import stop_embedded

            stop_embedded(work)
        shutil.rmtree(work, ignore_errors=True)
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
