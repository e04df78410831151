"""`skutrain demo`: a real run end to end on the embedded defaults.

Starts (or reuses) the embedded Postgres, migrates, generates a small catalog into local storage,
queues a tiny-model run with a plain INSERT, runs the dispatcher with the local launcher (the
trainer is a real subprocess), shows live progress read from the events table, and prints the
test metrics, the best epoch, a colour-histogram baseline and where the checkpoint files are.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from db import migrate, repository
from db.connection import resolve_database_url
from services.catalog.baseline import colour_baseline_metrics
from services.catalog.generate import generate_catalog
from services.common.logging import redact_text
from services.common.settings import Settings
from services.common.storage import storage_from_settings
from services.dispatcher.service import DispatcherConfig
from services.trainer.data.dataset import image_source
from services.trainer.data.download import ImageCache

# 80 products (7 categories, ~12 products sharing each palette) so the test split holds 12
# unseen products, several per palette. The tiny model learns from scratch, so it needs many
# short epochs: 30 x ~1000 images at 56 px take about 1.5 min on 2 idle cores. GeM pooling over
# the patch tokens learns faster than the CLS token here, and domain-balanced P-K batches mix
# each product's turntable frames with its photos (retrieval never matches a frame with a frame
# of its own video, see services/trainer/data/dataset.py `image_source`).
DEMO_PRODUCTS = 80
DEMO_IMAGES_PER_PRODUCT = 10
DEMO_SEED = 7
DEMO_CONFIG: dict[str, Any] = {
    "model": "tiny-dinov2",
    "image_config": {"frame_selection": "interval", "frame_interval": 3, "max_frames_per_type": 8},
    "training": {"epochs": 30, "batch_size": 32, "learning_rate": 2e-3, "min_lr": 1e-5,
                 "warmup_epochs": 1, "llrd_decay": 0.9, "image_size": 56, "embedding_dim": 128,
                 "pooling": "gem", "num_workers": 0, "early_stopping": {"patience": 6}},
    "sampler": {"p": 8, "k": 4, "domain_balance": True},
}
FINAL = {"completed", "failed", "cancelled"}


async def _ensure_catalog(conn, settings: Settings, console: Console) -> None:
    count = await conn.fetchval("SELECT count(*) FROM products")
    if count:
        console.print(f"catalog: {count} products already in the database")
        return
    started = time.monotonic()
    products = await asyncio.to_thread(
        generate_catalog, storage_from_settings(settings), DEMO_PRODUCTS,
        DEMO_IMAGES_PER_PRODUCT, seed=DEMO_SEED, image_size=96,
    )
    await repository.insert_catalog(conn, products)
    images = sum(len(p["images"]) + p["frame_count"] for p in products)
    console.print(f"catalog: generated {len(products)} products, {images} images "
                  f"in {time.monotonic() - started:.1f}s")


async def _follow(conn, run_id: int, console: Console) -> dict:
    cursor = repository.EventCursor()
    epochs = DEMO_CONFIG["training"]["epochs"]
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("queued", total=epochs, info="")
        val_r1 = None
        while True:
            for event in await repository.events_after(conn, cursor, 500):
                cursor = repository.EventCursor(event["txid"], event["id"])
                if event["run_id"] != run_id:
                    continue
                p, kind = event["payload"], event["type"]
                if kind == "batch.progress":
                    done = p["epoch"] - 1 + p["batch"] / p["num_batches"]
                    r1 = "-" if val_r1 is None else f"{val_r1:.3f}"
                    progress.update(task, completed=done, description=f"epoch {p['epoch']}/{epochs}",
                                    info=f"batch {p['batch']}/{p['num_batches']} "
                                         f"loss {p['loss']['total']:.3f} val R@1 {r1}")
                elif kind == "epoch.completed":
                    val_r1 = p["val"].get("recall_at_1")
                    progress.update(task, completed=p["epoch"])
                elif kind == "data.prepared":
                    progress.console.print(f"data: {p['images']} images, {p['domains']}, "
                                           f"skipped {p['download']['skipped']}")
                elif kind in ("run.started", "run.launched", "eval.completed"):
                    progress.console.print(f"{kind}")
            row = await repository.get_run(conn, run_id)
            if row["status"] in FINAL:
                return dict(row)
            await asyncio.sleep(0.3)


async def run_demo(settings: Settings, console: Console, serve_port: int | None = None) -> int:
    """The demo; with `serve_port`, then the dashboard on 127.0.0.1 until Ctrl-C (the
    dispatcher and reconciler keep serving the runs created there)."""
    from services.cli import build_launcher, reconciler_config, run_dispatcher, run_reconciler
    from services.common.storage import storage_from_settings

    url = resolve_database_url(settings)
    console.print(f"database: {redact_text(url)}")
    await asyncio.to_thread(migrate.upgrade, url)
    conn = await repository.connect(url)
    try:
        await _ensure_catalog(conn, settings, console)
        run_id = await conn.fetchval(
            "INSERT INTO training_runs (name, config) VALUES ('demo', $1::text::jsonb) RETURNING id",
            json.dumps(DEMO_CONFIG))
        console.print(f"queued run {run_id}: INSERT INTO training_runs (name, config) "
                      f"VALUES ('demo', '{json.dumps(DEMO_CONFIG)}')")
        launcher = build_launcher("local", settings, url, max_concurrent=1)
        services = [
            asyncio.create_task(run_dispatcher(url, launcher, DispatcherConfig(poll_interval=1))),
            asyncio.create_task(run_reconciler(url, [launcher], storage_from_settings(settings),
                                               reconciler_config(settings))),
        ]
        console.print("dispatcher and reconciler running")
        try:
            row = await _follow(conn, run_id, console)
            status = await _report(conn, row, settings, console)
            if serve_port is not None:
                await _serve_dashboard(url, settings, serve_port, console)
            return status
        finally:
            for service in services:
                service.cancel()
            await asyncio.gather(*services, return_exceptions=True)
    finally:
        await conn.close()


async def _serve_dashboard(url: str, settings: Settings, port: int, console: Console) -> None:
    from services.api.server import serve

    token = settings.api_token.get_secret_value() if settings.api_token else None
    console.print()
    await serve(url, token, "127.0.0.1", port,
                announce=lambda line: console.print(line, soft_wrap=True, highlight=False))


async def _colour_baseline(conn, run_id: int, settings: Settings) -> dict:
    """The colour-histogram baseline on the run's own test split (images from the cache), with
    the trainer's protocol: leave-one-out, an image's own source (`image_source`) excluded."""
    rows = [r for r in await repository.run_images(conn, run_id) if r["split"] == "test"]
    cache = ImageCache(settings.cache_dir)
    return await asyncio.to_thread(
        colour_baseline_metrics, [cache.lookup(r["url"]) for r in rows], [r["label"] for r in rows],
        sources=[image_source(r["domain"], r["url"], r["source_key"]) for r in rows])


async def _report(conn, row: dict, settings: Settings, console: Console) -> int:
    if row["status"] != "completed":
        console.print(f"[red]run {row['id']} {row['status']}: {row['error_code']}: "
                      f"{row['error_message']}[/red]")
        return 1
    checkpoints = await repository.run_checkpoints(conn, row["id"])
    test = row["test_metrics"]
    best = next(c for c in checkpoints if c["is_best"])
    console.print(f"\nrun {row['id']} completed: best epoch {best['epoch']} "
                  f"(val R@1 {best['val_recall_at_1']:.3f})")
    console.print("test (unseen products): " + ", ".join(
        f"{k} {test[k]:.3f}" for k in ("recall_at_1", "recall_at_5", "recall_at_10", "map")))
    baseline = await _colour_baseline(conn, row["id"], settings)
    ratio = test["recall_at_1"] / baseline["recall_at_1"] if baseline["recall_at_1"] else float("inf")
    console.print(f"colour-histogram baseline on the same test split: R@1 "
                  f"{baseline['recall_at_1']:.3f} (trained model: {ratio:.1f}x)")
    storage_root = settings.resolved_storage_dir.resolve()
    run_prefix = best["manifest_url"].removeprefix("storage://").split("/attempt-")[0]
    console.print(f"checkpoints ({len(checkpoints)}, one per epoch) under "
                  f"{storage_root}/{run_prefix}/; best: {best['manifest_url']}")
    return 0
