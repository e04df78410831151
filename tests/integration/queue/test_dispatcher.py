"""The dispatcher against a real Postgres: NOTIFY wake-up, listener recovery, invalid configs,
preflight failures, and several dispatcher processes sharing one queue."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from db import repository
from services.dispatcher.launchers import NoopLauncher
from services.dispatcher.service import Dispatcher, DispatcherConfig
from tests.conftest import catalog_rows


async def wait_for(predicate, timeout=20.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


async def status_of(conn, run_id):
    return (await repository.get_run(conn, run_id))["status"]


@pytest.fixture
async def dispatcher(db_url, catalog_conn):
    """An idle dispatcher that only NOTIFY (not its 60 s poll) can wake quickly."""
    d = Dispatcher(db_url, NoopLauncher(), DispatcherConfig(poll_interval=60, listener_check_interval=0.5))
    await d.start()
    task = asyncio.create_task(d.wait())
    await wait_for(lambda: asyncio.sleep(0, d.listener_connects >= 1))
    yield d
    d.stop()
    await task


async def test_notify_wakes_idle_dispatcher_and_listener_recovers(dispatcher, catalog_conn):
    conn = catalog_conn
    await asyncio.sleep(0.3)  # let the first immediate poll pass: the dispatcher is now idle
    started = time.monotonic()
    run_id = await repository.insert_run(conn, "wake", {})
    await wait_for(lambda: _launched(conn, run_id), timeout=5)
    assert time.monotonic() - started < 2.0  # far below the 60 s poll: NOTIFY woke it

    killed = await conn.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE query ILIKE 'LISTEN%' OR query = 'SELECT 1'")
    assert killed >= 1
    await wait_for(lambda: asyncio.sleep(0, dispatcher.listener_connects >= 2), timeout=10)
    run_id = await repository.insert_run(conn, "after-kill", {})
    await wait_for(lambda: _launched(conn, run_id), timeout=5)


async def _launched(conn, run_id):
    row = await repository.get_run(conn, run_id)
    return row["launched_attempt"] == row["attempt"] == 1 and row["launcher"] == "noop"


INVALID_CONFIGS = {
    "wrong_type_epochs": ({"training": {"epochs": "ten"}}, "training.epochs"),
    "negative_epochs": ({"training": {"epochs": -1}}, "training.epochs"),
    "zero_batch": ({"training": {"batch_size": 0}, "sampler": {"type": "random"}}, "training.batch_size"),
    "unknown_top_key": ({"modle": "dinov2-base"}, "modle"),
    "unknown_nested_key": ({"training": {"epoch": 3}}, "training.epoch"),
    "unknown_model": ({"model": "resnet50"}, "model"),
    "ratios_not_one": ({"split": {"train_ratio": 0.8, "val_ratio": 0.15, "test_ratio": 0.15}}, "split"),
    "ratio_zero": ({"split": {"train_ratio": 0.85, "val_ratio": 0.15, "test_ratio": 0.0}}, "split.test_ratio"),
    "missing_dataset_id": ({"data_source": {"type": "dataset"}}, "dataset_id"),
    "selected_without_ids": ({"data_source": {"type": "selected"}}, "product_ids"),
    "unknown_source": ({"data_source": {"type": "everything"}}, "data_source.type"),
    "unknown_domain": ({"image_config": {"image_types": ["synthetic", "thermal"]}}, "image_config.image_types"),
    "empty_domains": ({"image_config": {"image_types": []}}, "image_config.image_types"),
    "bad_frame_selection": ({"image_config": {"frame_selection": "random"}}, "image_config.frame_selection"),
    "zero_interval": ({"image_config": {"frame_interval": 0}}, "image_config.frame_interval"),
    "llrd_above_one": ({"training": {"llrd_decay": 1.5}}, "training.llrd_decay"),
    "negative_lr": ({"training": {"learning_rate": -0.001}}, "training.learning_rate"),
    "min_lr_above_lr": ({"training": {"learning_rate": 1e-5, "min_lr": 1e-3}}, "min_lr"),
    "unknown_amp": ({"training": {"amp": "fp8"}}, "training.amp"),
    "unknown_loss": ({"loss": {"type": "contrastive"}}, "loss.type"),
    "batch_not_pk": ({"training": {"batch_size": 30}}, "sampler.p * sampler.k"),
    "tiny_checkpoint_objects": ({"checkpoint": {"max_object_bytes": 10}}, "checkpoint.max_object_bytes"),
    "k_zero": ({"evaluation": {"k_values": [0, 5]}}, "k_values"),
    "label_field": ({"label_config": {"label_field": "color"}}, "label_config.label_field"),
    "not_an_object": ([1, 2, 3], "JSON object"),
    "warmup_too_long": ({"training": {"epochs": 2, "warmup_epochs": 5}}, "warmup_epochs"),
}


async def test_invalid_configs_fail_with_code_and_message(dispatcher, catalog_conn):
    conn = catalog_conn
    ids = {}
    for name, (config, _) in INVALID_CONFIGS.items():
        ids[name] = await conn.fetchval(
            "INSERT INTO training_runs (name, config) VALUES ($1, $2::text::jsonb) RETURNING id",
            name, json.dumps(config))
    good = await repository.insert_run(conn, "valid", {})

    async def all_done():
        failed = await conn.fetchval("SELECT count(*) FROM training_runs WHERE status = 'failed'")
        return failed == len(ids) and await _launched(conn, good)

    await wait_for(all_done, timeout=20)
    assert len(INVALID_CONFIGS) >= 20
    for name, (_, field) in INVALID_CONFIGS.items():
        row = await repository.get_run(conn, ids[name])
        assert row["status"] == "failed", name
        assert row["error_code"] == "invalid_config", name
        assert field in row["error_message"], (name, row["error_message"])
        events = [e["type"] for e in await repository.run_events(conn, ids[name])]
        assert events == ["run.queued", "run.claimed", "run.failed"], name
    assert await _launched(conn, good)  # the dispatcher kept going


async def test_error_message_names_every_bad_field(dispatcher, catalog_conn):
    run_id = await repository.insert_run(
        catalog_conn, "many", {"training": {"epochs": 0, "llrd_decay": 2}, "colour": 1})
    await wait_for(lambda: _status_is(catalog_conn, run_id, "failed"))
    message = (await repository.get_run(catalog_conn, run_id))["error_message"]
    for field in ("training.epochs", "training.llrd_decay", "colour"):
        assert field in message


async def _status_is(conn, run_id, status):
    return await status_of(conn, run_id) == status


async def test_preflight_data_minimums(dispatcher, catalog_conn):
    conn = catalog_conn
    few_products = await repository.insert_run(conn, "few-products", {
        "data_source": {"type": "selected", "product_ids": [1, 2, 3]}})
    few_images = await repository.insert_run(conn, "few-images", {
        "image_config": {"image_types": ["synthetic"], "frame_selection": "key_frames"}})
    no_dataset = await repository.insert_run(conn, "no-dataset", {
        "data_source": {"type": "dataset", "dataset_id": 999}})
    for run_id in (few_products, few_images, no_dataset):
        await wait_for(lambda: _status_is(conn, run_id, "failed"))
    rows = {r: await repository.get_run(conn, r) for r in (few_products, few_images, no_dataset)}
    assert rows[few_products]["error_code"] == "insufficient_products"
    assert "only 3 products" in rows[few_products]["error_message"]
    assert rows[few_images]["error_code"] == "insufficient_images"
    assert "only 48 usable images" in rows[few_images]["error_message"]
    assert rows[no_dataset]["error_code"] == "dataset_not_found"


async def test_stop_releases_claims_not_yet_launched(db_url, catalog_conn):
    conn = catalog_conn

    class StoppingLauncher(NoopLauncher):
        """Asks the dispatcher to stop while it launches the first run of a batch."""

        def __init__(self):
            super().__init__()
            self.dispatcher = None

        async def launch(self, request):
            self.dispatcher.stop()
            return await super().launch(request)

    launcher = StoppingLauncher()
    d = Dispatcher(db_url, launcher, DispatcherConfig(poll_interval=60))
    launcher.dispatcher = d
    ids = [await repository.insert_run(conn, f"r{i}", {}) for i in range(5)]
    await d.start()
    await asyncio.wait_for(d.wait(), 20)
    rows = [await repository.get_run(conn, i) for i in ids]
    assert sorted(r["status"] for r in rows) == ["claimed"] + ["queued"] * 4
    released = [r["id"] for r in rows if r["status"] == "queued"]
    events = [e["type"] for e in await repository.run_events(conn, released[0])]
    assert events == ["run.queued", "run.claimed", "run.requeued"]


@pytest.mark.slow
def test_four_dispatcher_processes_launch_each_run_exactly_once(db_url):
    import psycopg

    from tests.conftest import _libpq

    async def execute(work):
        conn = await repository.connect(db_url)
        try:
            await work(conn)
        finally:
            await conn.close()

    asyncio.run(execute(lambda conn: repository.insert_catalog(conn, catalog_rows())))
    env = {**os.environ, "DATABASE_URL": db_url, "SKUTRAIN_LOG_LEVEL": "WARNING"}
    procs = [subprocess.Popen([sys.executable, "-m", "services.cli", "dispatcher", "--launcher", "noop",
                               "--poll-interval", "0.2"], env=env) for _ in range(4)]
    try:
        with psycopg.connect(_libpq(db_url), autocommit=True) as pg:
            # The runs arrive once all four listen, as they would on a running system (a
            # dispatcher that starts first could otherwise drain the queue alone).
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and pg.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND query ILIKE 'LISTEN%'").fetchone()[0] < 4:
                time.sleep(0.1)
            asyncio.run(execute(lambda conn: conn.execute(
                "INSERT INTO training_runs (name, config) SELECT 'run-' || g, '{}' "
                "FROM generate_series(1, 1000) g")))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                launched = pg.execute(
                    "SELECT count(*) FROM training_events WHERE type = 'run.launched'").fetchone()[0]
                if launched >= 1000:
                    break
                time.sleep(0.2)
            time.sleep(0.5)  # give a double launch the chance to show up
            per_run = pg.execute(
                "SELECT r.id, count(e.id) FROM training_runs r LEFT JOIN training_events e "
                "ON e.run_id = r.id AND e.type = 'run.launched' GROUP BY r.id").fetchall()
            owners = pg.execute(
                "SELECT count(DISTINCT lease_owner) FROM training_runs").fetchone()[0]
            attempts = pg.execute("SELECT max(attempt) FROM training_runs").fetchone()[0]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=30) for p in procs]
    assert len(per_run) == 1000
    assert all(count == 1 for _, count in per_run)
    assert attempts == 1
    assert owners > 1  # the work was really shared
    assert codes == [0, 0, 0, 0]  # SIGTERM: clean exit
