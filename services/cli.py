"""`skutrain` command line. Environment variables are read here (Settings) and nowhere below."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
from pathlib import Path

from services.common.logging import (
    configure_logging, get_logger, redact_text, safe_message, terminal_safe,
)
from services.common.retry import backoff_delay
from services.common.settings import Settings, get_settings
from services.trainer.config import BIGINT_MAX


def _database_url(settings: Settings) -> str:
    from db.connection import resolve_database_url

    return resolve_database_url(settings)


# -- db ------------------------------------------------------------------------------------
def cmd_db(args, settings: Settings) -> int:
    from db import migrate
    from db.connection import stop_embedded

    if args.action == "stop":
        stopped = stop_embedded(settings.data_dir)
        print("embedded postgres stopped" if stopped else "embedded postgres was not running")
        return 0
    url = _database_url(settings)
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision or "head")
        print(f"database at {redact_text(url)} upgraded to {args.revision or 'head'}")
    elif args.action == "downgrade":
        migrate.downgrade(url, args.revision or "base")
        print(f"database at {redact_text(url)} downgraded to {args.revision or 'base'}")
    elif args.action == "url":
        print(redact_text(url))
    return 0


# -- config --------------------------------------------------------------------------------
def cmd_config(args, settings: Settings) -> int:
    from services.trainer.config import config_json_schema, example_config

    doc = config_json_schema() if args.action == "schema" else example_config()
    print(json.dumps(doc, indent=2))
    return 0


# -- dispatcher ----------------------------------------------------------------------------
def build_launcher(name: str, settings: Settings, database_url: str, max_concurrent: int):
    from services.dispatcher.launchers import LocalLauncher, NoopLauncher

    if name == "noop":
        return NoopLauncher()
    if name == "local":
        return LocalLauncher(
            log_dir=(settings.data_dir / "logs").resolve(),
            max_concurrent=max_concurrent,
            env={"DATABASE_URL": database_url,
                 "SKUTRAIN_DATA_DIR": str(settings.data_dir.resolve())},
        )
    if name == "runpod":
        from services.dispatcher.runpod_launcher import RunPodLauncher

        return RunPodLauncher.from_settings(settings, database_url, max_concurrent=max_concurrent)
    raise SystemExit(f"unknown launcher {name!r}: use 'local', 'runpod' or 'noop'")


async def run_dispatcher(database_url: str, launcher, config) -> None:
    from services.dispatcher.service import Dispatcher

    dispatcher = Dispatcher(database_url, launcher, config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, dispatcher.stop)
    await dispatcher.start()
    await dispatcher.wait()


def cmd_dispatcher(args, settings: Settings) -> int:
    from services.dispatcher.service import DispatcherConfig

    url = _database_url(settings)
    asyncio.run(require_schema(url))
    launcher = build_launcher(args.launcher, settings, url, args.max_concurrent)
    serve_metrics(settings)
    config = DispatcherConfig(batch_size=args.batch_size, poll_interval=args.poll_interval,
                              lease_seconds=args.lease_seconds,
                              max_attempts=settings.max_attempts,
                              crash_at=settings.dispatcher_crash_at)
    asyncio.run(run_dispatcher(url, launcher, config))
    return 0


# -- reconciler and checkpoints ------------------------------------------------------------
async def run_reconciler(database_url: str, launchers, storage, config) -> None:
    from services.reconciler.service import Reconciler

    reconciler = Reconciler(database_url, launchers, storage, config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, reconciler.stop)
    await reconciler.start()
    await reconciler.wait()


def reconciler_config(settings: Settings, **overrides):
    from services.reconciler.service import ReconcilerConfig

    return ReconcilerConfig(
        poll_interval=settings.reconcile_interval, stall_timeout=settings.stall_timeout,
        cancel_grace=settings.cancel_grace, max_attempts=settings.max_attempts,
        keep_latest=settings.keep_latest_checkpoints, orphan_grace=settings.orphan_grace,
        **overrides)


def cmd_reconciler(args, settings: Settings) -> int:
    from services.common.storage import storage_from_settings

    url = _database_url(settings)
    launchers = [build_launcher("local", settings, url, 1)]
    if settings.runpod_endpoint_id:  # RunPod jobs are watched (and stopped) too
        launchers.append(build_launcher("runpod", settings, url, 1))
    serve_metrics(settings)
    asyncio.run(run_reconciler(url, launchers, storage_from_settings(settings),
                               reconciler_config(settings)))
    return 0


def cmd_checkpoints(args, settings: Settings) -> int:
    from db import repository

    async def go() -> None:
        conn = await repository.connect(_database_url(settings))
        try:
            print(await repository.request_checkpoint_delete(conn, args.checkpoint_id,
                                                             args.force))
        finally:
            await conn.close()

    asyncio.run(go())
    return 0


# -- events --------------------------------------------------------------------------------
def _connection_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the database connection is gone or not there (a restart, a refusal)."""
    import asyncpg

    return (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
            asyncpg.exceptions.OperatorInterventionError)


async def tail_events(url: str, run_id: int | None, follow: bool, as_json: bool,
                      poll: float = 0.5, out=sys.stdout, err=sys.stderr,
                      reconnect_cap: float = 5.0) -> None:
    """Print events after the cursor. With `follow`, a lost connection (a Postgres restart) is
    reopened with backoff and reading goes on from the cursor: nothing skipped, nothing twice.
    Text mode escapes what the events carry (types are strings anyone can insert); JSON mode
    is ASCII with escapes."""
    from db import repository

    import asyncpg

    # InternalClientError: a connection left mid-operation by the server going away
    lost = _connection_errors() + (asyncpg.InternalClientError,)
    cursor = repository.EventCursor()
    conn = None
    failures = 0
    try:
        while True:
            try:
                if conn is None:  # a query that hangs on a half-dead socket times out too
                    conn = await repository.connect(url, command_timeout=reconnect_cap * 6)
                rows = await repository.events_after(conn, cursor, 500)
            except lost as exc:
                if not follow:
                    raise
                if conn is not None:
                    conn.terminate()
                    conn = None
                delay = backoff_delay(failures, 0.2, reconnect_cap, random.random())
                failures += 1
                print(f"skutrain: database connection lost ({_one_line(exc)}); reconnecting in "
                      f"{delay:.1f}s from the same cursor", file=err, flush=True)
                await asyncio.sleep(delay)
                continue
            failures = 0
            for row in rows:
                cursor = repository.EventCursor(row["txid"], row["id"])
                if run_id is not None and row["run_id"] != run_id:
                    continue
                if as_json:
                    record = dict(row)
                    record["created_at"] = row["created_at"].isoformat()
                    print(json.dumps(record), file=out, flush=True)
                else:
                    print(f"{row['created_at']:%H:%M:%S} run={row['run_id']} "
                          f"attempt={row['attempt']} seq={row['seq']:<4} "
                          f"{terminal_safe(row['type']):<22} "
                          f"{json.dumps(row['payload'])[:160]}", file=out, flush=True)
            if not rows:
                if not follow:
                    return
                await asyncio.sleep(poll)
    finally:
        if conn is not None:
            conn.terminate()


def cmd_events(args, settings: Settings) -> int:
    asyncio.run(tail_events(_database_url(settings), args.run, args.follow, args.json))
    return 0


# -- runs ----------------------------------------------------------------------------------
def cmd_runs(args, settings: Settings) -> int:
    from db import repository

    if args.action == "report":
        return cmd_runs_report(args, settings)

    async def go() -> None:
        conn = await repository.connect(_database_url(settings))
        try:
            if args.action == "create":
                run_id = await repository.insert_run(conn, args.name, args.config,
                                                     args.priority)
                print(run_id)
            elif args.action == "list":
                for r in await repository.list_runs(conn, args.limit):
                    r1 = "-" if r["best_val_recall_at_1"] is None else f"{r['best_val_recall_at_1']:.3f}"
                    print(f"{r['id']:>5} {r['status']:<10} epoch {r['current_epoch']}/"
                          f"{r['total_epochs'] or '?'} val R@1 {r1:<6} "
                          f"{terminal_safe(r['name'])} {terminal_safe(r['error_code'] or '')}")
            elif args.action == "cancel":
                print(await repository.request_cancel(conn, args.run_id))
            elif args.action == "resume":
                print(await repository.request_resume(conn, args.run_id))
            elif args.action == "delete":
                print(await repository.request_delete(conn, args.run_id, args.force))
        finally:
            await conn.close()

    asyncio.run(go())
    return 0


# -- catalog and demo ----------------------------------------------------------------------
def cmd_catalog(args, settings: Settings) -> int:
    from db import repository
    from services.catalog.generate import generate_catalog
    from services.common.storage import storage_from_settings

    products = generate_catalog(storage_from_settings(settings), args.products,
                                args.images_per_product, domains=args.domains, seed=args.seed,
                                image_size=args.image_size)

    async def insert() -> int:
        conn = await repository.connect(_database_url(settings))
        try:
            return await repository.insert_catalog(conn, products)
        finally:
            await conn.close()

    count = asyncio.run(insert())
    images = sum(len(p["images"]) + p["frame_count"] for p in products)
    print(f"{count} products, {images} images written")
    return 0


def cmd_demo(args, settings: Settings) -> int:
    from rich.console import Console

    from services.demo import run_demo

    # The demo shows its own progress from the events; service logs only when something is wrong.
    configure_logging("WARNING", settings.log_format)
    return asyncio.run(run_demo(settings, Console(), args.port if args.serve else None))


# -- api -----------------------------------------------------------------------------------
def cmd_api(args, settings: Settings) -> int:
    from services.api.server import serve

    token = settings.api_token.get_secret_value() if settings.api_token else None
    asyncio.run(serve(_database_url(settings), token, args.host, args.port,
                      announce=lambda line: print(line, flush=True)))
    return 0


# -- models: registry, evaluation, extraction, search, history, comparison ------------------
def _models_command(settings: Settings, work) -> int:
    """Run `work(conn)` on a database connection (errors reach `main`'s describe_error)."""
    from db import repository

    async def go():
        conn = await repository.connect(_database_url(settings))
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(go()) or 0


def _device(name: str | None):
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def cmd_models(args, settings: Settings) -> int:
    from services.models import registry

    async def work(conn) -> None:
        if args.action == "register":
            doc = await registry.register(conn, args.checkpoint_id, args.name)
            print(registry.model_summary(doc))
        elif args.action == "list":
            for m in await registry.list_models(conn):
                r1 = "-" if m["test_recall_at_1"] is None else f"{m['test_recall_at_1']:.3f}"
                print(f"{m['id']:>4} {m['name']:<24} run {m['run_id']} epoch {m['epoch']} "
                      f"{m['backbone']} dim {m['embedding_dim']} test R@1 {r1}"
                      f"{' (default)' if m['is_default'] else ''}")
        elif args.action == "show":
            doc = await registry.model_document(conn, args.model_id)
            print(json.dumps(doc, indent=2) if args.json else registry.model_summary(doc))
        elif args.action == "compare":
            await _compare(conn, args, settings)

    return _models_command(settings, work)


async def _compare(conn, args, settings: Settings) -> None:
    from services.models import compare, plots
    from services.models.history import metrics_history

    doc = await compare.compare_models(conn, args.model_ids)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(compare.comparison_table(doc))
    histories = {m["id"]: await metrics_history(conn, m["run_id"]) for m in doc["models"]}
    path = args.png or settings.data_dir / "reports" / (
        "compare-" + "-".join(str(i) for i in args.model_ids) + ".png")
    plots.plot_comparison(doc, histories, Path(path))
    print(f"chart: {path}", file=sys.stderr if args.json else sys.stdout)


def cmd_evaluate(args, settings: Settings) -> int:
    from services.common.storage import storage_from_settings
    from services.models.evaluate import evaluate_checkpoint

    async def work(conn) -> None:
        evaluation_id, doc = await evaluate_checkpoint(
            conn, args.checkpoint_id, split=args.split, storage=storage_from_settings(settings),
            cache_dir=settings.cache_dir, device=_device(args.device))
        print(f"evaluation {evaluation_id} of checkpoint {args.checkpoint_id} ({args.split}): "
              + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in doc["overall"].items()))

    return _models_command(settings, work)


def cmd_extract(args, settings: Settings) -> int:
    from rich.progress import Progress

    from services.common.storage import storage_from_settings
    from services.models.extract import extract, qdrant_client

    async def work(conn) -> None:
        client = qdrant_client(settings.qdrant_url, settings.data_dir)
        try:
            with Progress() as bar:
                task = bar.add_task("embedding", total=None)
                report = await extract(
                    conn, args.model, storage=storage_from_settings(settings), client=client,
                    cache_dir=settings.cache_dir, product_ids=args.products, domains=args.domains,
                    device=_device(args.device),
                    progress=lambda done, total: bar.update(task, completed=done, total=total))
        finally:
            client.close()
        print(f"{report.images} images of {report.products} products in collection "
              f"{report.collection} ({report.skipped} could not be downloaded)")

    return _models_command(settings, work)


def cmd_search(args, settings: Settings) -> int:
    from services.common.storage import storage_from_settings
    from services.models.extract import load_registered_model, qdrant_client
    from services.models.search import nearest_products

    async def work(conn) -> None:
        registered = await load_registered_model(conn, args.model, storage_from_settings(settings))
        client = qdrant_client(settings.qdrant_url, settings.data_dir)
        try:
            hits = nearest_products(client, registered, Path(args.image), args.k,
                                    device=_device(args.device))
        finally:
            client.close()
        for rank, hit in enumerate(hits, start=1):
            print(f"{rank}. {hit['score']:.4f} product {hit['product_id']} "
                  f"{hit['product_name'] or ''} [{hit['category'] or '-'}] "
                  f"via {hit['domain']} {hit['url']}")

    return _models_command(settings, work)


def cmd_runs_report(args, settings: Settings) -> int:
    from services.models import plots
    from services.models.history import history_table, metrics_history

    async def work(conn) -> None:
        history = await metrics_history(conn, args.run_id)
        if not history:
            print(f"run {args.run_id} has no completed epochs yet")
            return
        print(history_table(history))
        path = Path(args.png or settings.data_dir / "reports" / f"run-{args.run_id}.png")
        plots.plot_history(history, path, f"run {args.run_id}")
        print(f"chart: {path}")

    return _models_command(settings, work)


# -- arguments and errors a person can act on --------------------------------------------
async def require_schema(url: str) -> None:
    """A service on a database that was never upgraded would fail every tick: say so once."""
    from db import repository
    from services.common.errors import SchemaMissing

    conn = await repository.connect(url)
    try:
        if not await repository.schema_present(conn):
            raise SchemaMissing(f"the database at {redact_text(url)} has no skutrain schema: "
                                "run `skutrain db upgrade` first")
    finally:
        await conn.close()


def _at_least(minimum: float, kind: type = int):
    """An argparse type: a number of `kind` >= `minimum` (0 batches or 0 slots make no sense)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}")
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        if kind is int and value > BIGINT_MAX:
            raise argparse.ArgumentTypeError(f"must be at most {BIGINT_MAX}, got {text}")
        return value
    return parse


_positive_int = _at_least(1)
_positive_float = _at_least(1e-3, float)


def _json_object(text: str) -> dict:
    """An argparse type: a JSON object (a run config)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {_one_line(exc)}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _one_line(exc: BaseException) -> str:
    return terminal_safe(safe_message(str(exc).strip() or type(exc).__name__, 500))


def describe_error(exc: BaseException) -> str | None:
    """One line for an error a person can act on; None for a bug (it keeps its traceback)."""
    import asyncpg

    from services.common.errors import SkutrainError

    if isinstance(exc, SkutrainError):
        return f"{exc.code}: {_one_line(exc)}"
    if isinstance(exc, (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError)):
        return (f"the database has no skutrain schema ({_one_line(exc)}): run "
                "`skutrain db upgrade` first")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"{_one_line(exc)}: create it, or check DATABASE_URL (`skutrain db url`)"
    if isinstance(exc, (asyncpg.InvalidAuthorizationSpecificationError,
                        asyncpg.InvalidPasswordError)):
        return f"the database refused the login: {_one_line(exc)}; check DATABASE_URL"
    if isinstance(exc, _connection_errors()) or type(exc).__name__ == "OperationalError":
        return (f"cannot reach the database: {_one_line(exc)}; is it running? "
                "(`skutrain db url` shows which one)")
    if isinstance(exc, asyncpg.PostgresError) and (
            exc.sqlstate in ("P0002", "SK010")
            or exc.sqlstate[:2] in ("22", "23")):  # no such row, refused, bad data, constraint
        return _one_line(exc)
    return None


def _stdout_closed() -> int:
    """`skutrain events tail | head`: the reader left; stop quietly, as a SIGPIPE would."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


# -- runpod and metrics -------------------------------------------------------------------
def serve_metrics(settings: Settings) -> None:
    """Prometheus exposition when SKUTRAIN_METRICS_PORT is set (off by default)."""
    if settings.metrics_port is not None:
        from services.common import metrics

        port = metrics.serve(settings.metrics_port)
        get_logger("metrics").info("metrics.serving", port=port)


async def runpod_health(settings: Settings) -> tuple[dict, list[str]]:
    """The endpoint's /health document and what is wrong (missing settings, key, endpoint...)."""
    from services.common.errors import SkutrainError
    from services.dispatcher.runpod_launcher import RunPodLauncher, health_problems

    missing = [name for name, value in (("RUNPOD_API_KEY", settings.runpod_api_key),
                                        ("RUNPOD_ENDPOINT_ID", settings.runpod_endpoint_id))
               if not value]
    if missing:
        return {}, [f"{' and '.join(missing)} not set: copy them from the RunPod console "
                    "(Settings > API Keys; the endpoint's page) into the environment"]
    launcher = RunPodLauncher.from_settings(settings, database_url="")
    try:
        doc = await launcher.health()
    except SkutrainError as exc:
        return {}, [exc.message]
    finally:
        await launcher.close()
    return doc, health_problems(doc)


def cmd_runpod(args, settings: Settings) -> int:
    doc, problems = asyncio.run(runpod_health(settings))
    if doc:
        print(f"endpoint {settings.runpod_endpoint_id} at {settings.runpod_endpoint_base_url}")
        print("workers: " + ", ".join(f"{k} {v}" for k, v in doc.get("workers", {}).items()))
        print("jobs: " + ", ".join(f"{k} {v}" for k, v in doc.get("jobs", {}).items()))
    for problem in problems:
        print(f"problem: {problem}")
    if not problems:
        print("ok")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skutrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("db", help="database: migrate, show the URL, stop the embedded server")
    p.add_argument("action", choices=["upgrade", "downgrade", "url", "stop"])
    p.add_argument("revision", nargs="?")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("config", help="the run config: JSON schema or a complete example")
    p.add_argument("action", choices=["schema", "example"])
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("dispatcher", help="claim queued runs and launch their jobs")
    p.add_argument("--launcher", default="local", choices=["local", "runpod", "noop"])
    p.add_argument("--max-concurrent", type=_positive_int, default=1)
    p.add_argument("--batch-size", type=_positive_int, default=10)
    p.add_argument("--poll-interval", type=_positive_float, default=2.0)
    p.add_argument("--lease-seconds", type=_at_least(1.0, float), default=120.0)
    p.set_defaults(func=cmd_dispatcher)

    p = sub.add_parser("reconciler", help="requeue crashed or hung runs, enforce cancels, "
                       "carry out deletes, keep is_best and retention")
    p.set_defaults(func=cmd_reconciler)

    p = sub.add_parser("checkpoints", help="delete one checkpoint")
    p.add_argument("action", choices=["delete"])
    p.add_argument("checkpoint_id", type=int)
    p.add_argument("--force", action="store_true", help="deregister linked trained models first")
    p.set_defaults(func=cmd_checkpoints)

    p = sub.add_parser("events", help="read the events table")
    p.add_argument("action", choices=["tail"])
    p.add_argument("--run", type=_positive_int)
    p.add_argument("--follow", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("runs", help="queue, list and cancel training runs")
    rs = p.add_subparsers(dest="action", required=True)
    c = rs.add_parser("create")
    c.add_argument("name")
    c.add_argument("--config", type=_json_object, default="{}")
    c.add_argument("--priority", type=int, default=0)
    rs.add_parser("list").add_argument("--limit", type=_positive_int, default=20)
    rs.add_parser("cancel").add_argument("run_id", type=_positive_int)
    c = rs.add_parser("report", help="the run's metrics per epoch, and a PNG of the curves")
    c.add_argument("run_id", type=_positive_int)
    c.add_argument("--png", help="where to write the chart (default: data dir/reports/)")
    rs.add_parser("resume", help="continue a failed or cancelled run from its last checkpoint"
                  ).add_argument("run_id", type=int)
    d = rs.add_parser("delete", help="delete a run, its checkpoints and stored objects")
    d.add_argument("run_id", type=int)
    d.add_argument("--force", action="store_true", help="deregister linked trained models first")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("catalog", help="generate a product catalog into storage and the database")
    p.add_argument("action", choices=["generate"])
    p.add_argument("--products", type=_positive_int, default=40)
    p.add_argument("--images-per-product", type=_positive_int, default=10)
    p.add_argument("--domains", nargs="+", default=["synthetic", "real", "augmented", "cutout"],
                   choices=["synthetic", "real", "augmented", "cutout"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=_at_least(8), default=96)
    p.set_defaults(func=cmd_catalog)

    p = sub.add_parser("api", help="the HTTP API and the dashboard")
    p.add_argument("--host", default="127.0.0.1",
                   help="loopback (default): reads are open; any other address: every request "
                        "needs SKUTRAIN_API_TOKEN")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("models", help="register, list, show and compare trained models")
    ms = p.add_subparsers(dest="action", required=True)
    c = ms.add_parser("register", help="register a checkpoint (it needs a test evaluation)")
    c.add_argument("checkpoint_id", type=_positive_int)
    c.add_argument("name")
    ms.add_parser("list", help="the models usable for extraction")
    c = ms.add_parser("show")
    c.add_argument("model_id", type=_positive_int)
    c.add_argument("--json", action="store_true")
    c = ms.add_parser("compare", help="2 to 5 models side by side, and a PNG")
    c.add_argument("model_ids", type=_positive_int, nargs="+", metavar="MODEL")
    c.add_argument("--json", action="store_true")
    c.add_argument("--png", help="where to write the chart (default: data dir/reports/)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("evaluate", help="evaluate any checkpoint on its run's test (or val) split")
    p.add_argument("checkpoint_id", type=_positive_int)
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--device", help="torch device (default: cuda when there is one, else cpu)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("extract", help="embed catalog images with a model into Qdrant")
    p.add_argument("--model", type=_positive_int, required=True)
    p.add_argument("--products", type=_positive_int, nargs="+", help="product ids (default: all)")
    p.add_argument("--domains", nargs="+", choices=["synthetic", "real", "augmented", "cutout"])
    p.add_argument("--device")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("search", help="the products nearest to an image, by a model")
    p.add_argument("--model", type=_positive_int, required=True)
    p.add_argument("image")
    p.add_argument("--k", type=_positive_int, default=5)
    p.add_argument("--device")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("runpod", help="check the RunPod endpoint: says what is wrong")
    p.add_argument("action", choices=["health"])
    p.set_defaults(func=cmd_runpod)

    p = sub.add_parser("demo", help="a real training run end to end on the embedded defaults")
    p.add_argument("--serve", action="store_true",
                   help="then serve the dashboard on 127.0.0.1 until Ctrl-C")
    p.add_argument("--port", type=int, default=8000, help="the dashboard's port with --serve")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        return args.func(args, settings) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _stdout_closed()
    except Exception as exc:
        message = describe_error(exc)
        if message is None:
            raise
        print(f"skutrain: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
