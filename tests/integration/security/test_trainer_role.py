"""The skutrain_trainer role (revision 0005), connected as a login role that is a member of it:
a training attempt's real path works, everything else is refused.

The fence is the lease epoch the worker was launched with: a run at another epoch, a finished
or a queued run cannot be changed. Lease epochs are per-run counters, so a hostile worker that
reads another in-flight run's epoch (it may read in-flight run rows) could still write to it;
what stops that is an unguessable per-attempt lease token, not a database role."""
from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from db import repository
from services.catalog.generate import generate_catalog
from services.common.errors import LeaseLost
from services.common.storage import S3Options, S3Storage, s3_client
from services.trainer.event_writer import EventWriterConfig
from services.trainer.runner import TrainerEnvironment, run_attempt
from tests.integration.data.conftest import s3_endpoint  # noqa: F401  (the moto S3 server)

LEASE = 60.0


@pytest.fixture
async def worker_url(db_url, conn):
    """The URL of a fresh login role granted skutrain_trainer (what README tells a deployment
    to create for its workers)."""
    name, password = f"worker_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    await conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE skutrain_trainer")
    yield make_url(db_url).set(username=name, password=password).render_as_string(
        hide_password=False)
    await conn.execute(f"DROP OWNED BY {name}")
    await conn.execute(f"DROP ROLE {name}")


@pytest.fixture
async def worker_conn(worker_url):
    worker = await repository.connect(worker_url)
    yield worker
    await worker.close()


async def _claim(conn, run_id: int) -> int:
    """Claim queued run `run_id` (the only one queued) as a dispatcher; its lease epoch."""
    [claimed] = await repository.claim_runs(conn, "dispatcher-1", 1, LEASE)
    assert claimed.id == run_id
    return claimed.lease_epoch


@pytest.fixture
async def runs(catalog_conn):
    """Runs in every situation: `held` is the worker's; `other` runs at a later lease epoch;
    `done` completed; `queued` waits."""
    conn = catalog_conn
    done = await repository.insert_run(conn, "done", {})
    await repository.finish_run(conn, done, await _claim(conn, done), "completed")
    other = await repository.insert_run(conn, "other", {})
    await repository.release_run(conn, other, await _claim(conn, other), "test")
    other_epoch = await _claim(conn, other)  # attempt 2
    held = await repository.insert_run(conn, "held", {})
    held_epoch = await _claim(conn, held)
    queued = await repository.insert_run(conn, "queued", {})
    assert other_epoch > held_epoch
    return {"held": (held, held_epoch), "other": (other, other_epoch), "done": done,
            "queued": queued, "admin": conn}


def _checkpoint_event(epoch: int) -> tuple[str, dict]:
    return "checkpoint.saved", {
        "epoch": epoch, "manifest_url": f"storage://checkpoints/runs/u/attempt-1/epoch-{epoch:03d}/manifest.json",
        "resume_state_url": None, "size_bytes": 1000, "shard_count": 1, "train_loss": 0.5,
        "val_loss": 0.4, "metrics": {"recall_at_1": 0.5}}


async def test_a_training_attempt_works_as_the_trainer_role(runs, worker_conn):
    admin, worker = runs["admin"], worker_conn
    run_id, epoch = runs["held"]

    row = await repository.get_run(worker, run_id)
    assert row["lease_epoch"] == epoch and row["config"] == {}
    # The RunPod worker's gate: it reads whether the dispatcher recorded its launch.
    assert await repository.launch_recorded(worker, run_id, 1, epoch) is False
    assert await repository.mark_launched(admin, run_id, epoch, "runpod", "job-1")
    assert await repository.launch_recorded(worker, run_id, 1, epoch) is True
    assert await repository.start_run(worker, run_id, epoch, LEASE, {"total_epochs": 1})
    beat = await repository.heartbeat_run(worker, run_id, epoch, LEASE, step=3)
    assert beat.owned and not beat.cancel_requested

    products = await repository.select_products(worker, "all_products")
    images = await repository.product_images_for(worker, [p["id"] for p in products])
    assert len(products) == 12 and len(images) == 96
    rows = [{"split": "train", "product_id": i["product_id"], "url": i["url"], "domain": i["domain"],
             "frame_index": None, "label": str(i["product_id"]), "category": "c", "brand": "b",
             "source_key": None} for i in images[:5]]
    await repository.store_run_images(worker, run_id, rows)
    await repository.store_run_images(worker, run_id, rows)  # replacing is allowed too
    assert len(await repository.run_images(worker, run_id)) == 5

    last = await repository.append_trainer_events(worker, run_id, epoch, 1, [
        ("epoch.completed", {"epoch": 1, "val": {"recall_at_1": 0.5}}),
        _checkpoint_event(1),
        ("eval.completed", {"epoch": 1, "split": "test", "overall": {"recall_at_1": 0.4}}),
    ])
    assert last == 3
    manifest = await repository.checkpoint_manifest_for_epoch(worker, run_id, 1)
    assert manifest and manifest.endswith("epoch-001/manifest.json")
    assert await repository.finish_run(worker, run_id, epoch, "completed")

    run = await repository.get_run(admin, run_id)
    assert run["status"] == "completed" and run["progress_step"] == 3
    assert len(await repository.run_checkpoints(admin, run_id)) == 1
    assert len(await repository.run_evaluations(admin, run_id)) == 1
    assert await repository.get_run(worker, run_id) is None  # finished: no longer visible
    assert await repository.launch_recorded(worker, run_id, 1, epoch) is None


async def test_the_fence_keeps_the_trainer_off_other_runs(runs, worker_conn):
    admin, worker = runs["admin"], worker_conn
    held_epoch = runs["held"][1]
    other = runs["other"][0]
    before = dict(await repository.get_run(admin, other))

    with pytest.raises(LeaseLost):
        await repository.append_trainer_events(worker, other, held_epoch, 1, [_checkpoint_event(1)])
    assert not (await repository.heartbeat_run(worker, other, held_epoch, LEASE)).owned
    assert not await repository.finish_run(worker, other, held_epoch, "failed")
    assert not await repository.start_run(worker, other, held_epoch, LEASE, {})
    for finished_or_queued in (runs["done"], runs["queued"]):
        assert not await repository.finish_run(worker, finished_or_queued, 1, "failed")
        assert not await repository.finish_run(worker, finished_or_queued, 0, "failed")

    after = dict(await repository.get_run(admin, other))
    assert after == before
    assert (await repository.get_run(admin, runs["done"]))["status"] == "completed"
    assert (await repository.get_run(admin, runs["queued"]))["status"] == "queued"


REFUSED = [
    "UPDATE training_runs SET status = 'failed'",
    "UPDATE training_runs SET config = '{{}}' WHERE id = {other}",
    "DELETE FROM training_runs WHERE id = {done}",
    "DELETE FROM training_events",
    "INSERT INTO training_events (run_id, attempt, seq, type) VALUES ({held}, 1, 99, 'run.completed')",
    "UPDATE checkpoints SET is_best = true",
    "DELETE FROM checkpoints",
    "INSERT INTO checkpoints (run_id, attempt, epoch, manifest_url) VALUES ({held}, 1, 9, 'x')",
    "DELETE FROM evaluations",
    "UPDATE products SET product_name = 'x'",
    "DELETE FROM product_images",
    "UPDATE run_images SET label = 'x'",
    "SELECT * FROM trained_models",
    "SELECT * FROM training_events",
    "SELECT * FROM evaluations",
    "SELECT * FROM run_launches",
    "SELECT request_cancel({other})",
    "SELECT * FROM claim_runs('rogue', 10, 60)",
    "SELECT request_delete({done}, true)",
    "CREATE TABLE loot (x int)",
]


async def test_anything_else_is_refused(runs, worker_conn):
    ids = {"held": runs["held"][0], "other": runs["other"][0], "done": runs["done"]}
    for statement in REFUSED:
        with pytest.raises(asyncpg.PostgresError) as err:
            await worker_conn.execute(statement.format(**ids))
        assert err.value.sqlstate == "42501", (statement, err.value)  # insufficient_privilege


async def test_finished_queued_and_other_runs_data_is_out_of_sight(runs, worker_conn):
    admin, worker = runs["admin"], worker_conn
    done, queued, held = runs["done"], runs["queued"], runs["held"][0]
    for run_id in (done, queued):
        assert await repository.get_run(worker, run_id) is None
    await admin.execute("INSERT INTO run_images (run_id, idx, split, product_id, url, domain, label)"
                        " SELECT $1, 0, 'train', min(id), 'u', 'real', 'l' FROM products", done)
    assert await repository.run_images(worker, done) == []
    assert await worker.execute("DELETE FROM run_images WHERE run_id = $1", done) == "DELETE 0"
    with pytest.raises(asyncpg.PostgresError) as err:  # the row-level check refuses it
        await worker.execute("INSERT INTO run_images (run_id, idx, split, product_id, url, domain,"
                             " label) SELECT $1, 1, 'train', min(id), 'u', 'real', 'l' FROM products",
                             done)
    assert err.value.sqlstate == "42501"
    visible = {r["id"] for r in await worker.fetch("SELECT id FROM training_runs")}
    assert held in visible and not visible & {done, queued}


@pytest.mark.slow
async def test_a_real_attempt_as_the_trainer_role_with_s3_checkpoints(conn, worker_url, s3_endpoint,
                                                                      tmp_path):
    """run_attempt, the code a RunPod worker runs, logged in as the trainer role, its catalog
    and checkpoints in S3 (moto) under a 1 MB per-object limit."""
    bucket, limit = f"b-{uuid.uuid4().hex[:12]}", 1_000_000
    client = s3_client(endpoint_url=s3_endpoint, region="us-east-1", access_key_id="k",
                       secret_access_key="s", addressing_style="path")
    storage = S3Storage(client, S3Options(bucket=bucket, max_object_bytes=limit))
    products = await asyncio.to_thread(generate_catalog, storage, 12, 6, seed=3, image_size=48)
    await repository.insert_catalog(conn, products)
    run_id = await repository.insert_run(conn, "as-trainer", {
        "model": "tiny-dinov2", "checkpoint": {"max_object_bytes": limit},
        "training": {"epochs": 2, "batch_size": 16, "image_size": 32, "embedding_dim": 32,
                     "num_workers": 0, "early_stopping": {"enabled": False}},
        "sampler": {"p": 4, "k": 4}})
    [claimed] = await repository.claim_runs(conn, "dispatcher-1", 1, LEASE)
    assert await repository.mark_launched(conn, run_id, claimed.lease_epoch, "test", None)

    env = TrainerEnvironment(
        database_url=worker_url, storage=storage, cache_dir=tmp_path / "cache", device="cpu",
        progress_interval=0,
        writer=EventWriterConfig(flush_interval=0.05, heartbeat_interval=0.2, lease_seconds=30))
    status = await asyncio.to_thread(run_attempt, env, run_id, claimed.attempt,
                                     claimed.lease_epoch)
    run = await repository.get_run(conn, run_id)
    assert status == "completed", run["error_message"]
    assert run["status"] == "completed" and run["best_checkpoint_id"] is not None
    assert len(await repository.run_checkpoints(conn, run_id)) == 2
    assert len(await repository.run_evaluations(conn, run_id)) == 1
    objects = list(storage.list("checkpoints", f"runs/{run['run_uuid']}/"))
    assert objects and all(storage.size(o) <= limit for o in objects)
    assert list((tmp_path / "cache" / "decoded").rglob("*.npy"))  # decoded once, reused
