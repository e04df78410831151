"""The skutrain_trainer role (revisions 0005 and 0006), connected as a login role that is a member
of it: a training attempt's real path works, everything else is refused.

The role's only way to a run is the claim's lease token (random per claim): it cannot read runs,
checkpoints or image manifests directly, cannot call the lease_epoch-fenced functions (epochs are
per-run counters anyone can guess), and a token opens only its own run, only until the run is
claimed again."""
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


async def _claim(conn, run_id: int) -> repository.ClaimedRun:
    """Claim queued run `run_id` (the only one queued) as a dispatcher."""
    [claimed] = await repository.claim_runs(conn, "dispatcher-1", 1, LEASE)
    assert claimed.id == run_id
    return claimed


def _lease(claimed: repository.ClaimedRun) -> repository.Lease:
    return repository.Lease(claimed.id, claimed.lease_token)


@pytest.fixture
async def runs(catalog_conn):
    """Runs in every situation: `held` is the worker's; `other` is held by another attempt;
    `done` completed; `queued` waits. Claimed runs come back as their ClaimedRun."""
    conn = catalog_conn
    done = await repository.insert_run(conn, "done", {})
    await repository.finish_run(conn, done, (await _claim(conn, done)).lease_epoch, "completed")
    other = await repository.insert_run(conn, "other", {})
    await repository.release_run(conn, other, (await _claim(conn, other)).lease_epoch, "test")
    other_claim = await _claim(conn, other)  # attempt 2
    held = await repository.insert_run(conn, "held", {})
    held_claim = await _claim(conn, held)
    queued = await repository.insert_run(conn, "queued", {})
    return {"held": held_claim, "other": other_claim, "done": done, "queued": queued,
            "admin": conn}


def _checkpoint_event(epoch: int) -> tuple[str, dict]:
    return "checkpoint.saved", {
        "epoch": epoch, "manifest_url": f"storage://checkpoints/runs/u/attempt-1/epoch-{epoch:03d}/manifest.json",
        "resume_state_url": None, "size_bytes": 1000, "shard_count": 1, "train_loss": 0.5,
        "val_loss": 0.4, "metrics": {"recall_at_1": 0.5}}


def _image_rows(images) -> list[dict]:
    return [{"split": "train", "product_id": i["product_id"], "url": i["url"],
             "domain": i["domain"], "frame_index": None, "label": str(i["product_id"]),
             "category": "c", "brand": "b", "source_key": None} for i in images]


async def test_a_training_attempt_works_as_the_trainer_role(runs, worker_conn):
    admin, worker, held = runs["admin"], worker_conn, runs["held"]
    run_id, lease = held.id, _lease(held)

    row = await repository.trainer_run(worker, lease)
    assert (row["attempt"], row["lease_epoch"], row["config"]) == (1, held.lease_epoch, {})
    # The RunPod worker's gate: it reads whether the dispatcher recorded its launch.
    assert await repository.trainer_launch_recorded(worker, lease, 1) is False
    assert await repository.mark_launched(admin, run_id, held.lease_epoch, "runpod", "job-1")
    assert await repository.trainer_launch_recorded(worker, lease, 1) is True
    assert await repository.trainer_start_run(worker, lease, LEASE, {"total_epochs": 1})
    beat = await repository.trainer_heartbeat(worker, lease, LEASE, step=3)
    assert beat.owned and not beat.cancel_requested

    products = await repository.select_products(worker, "all_products")
    images = await repository.product_images_for(worker, [p["id"] for p in products])
    assert len(products) == 12 and len(images) == 96
    assert await repository.trainer_store_run_images(worker, lease, _image_rows(images[:5])) == 5
    assert await repository.trainer_store_run_images(worker, lease, _image_rows(images[:3])) == 3
    stored = await repository.trainer_run_images(worker, lease)  # replaced, in order
    assert [(r["idx"], r["url"]) for r in stored] == [(i, m["url"]) for i, m in enumerate(images[:3])]

    last = await repository.trainer_append_events(worker, lease, 1, [
        ("epoch.completed", {"epoch": 1, "val": {"recall_at_1": 0.5}}),
        _checkpoint_event(1),
        ("eval.completed", {"epoch": 1, "split": "test", "overall": {"recall_at_1": 0.4}}),
    ])
    assert last == 3
    manifest = await repository.trainer_checkpoint_manifest(worker, lease, 1)
    assert manifest and manifest.endswith("epoch-001/manifest.json")
    (checkpoint,) = await repository.run_checkpoints(admin, run_id)
    assert (await repository.trainer_checkpoint(worker, lease, checkpoint["id"]))["epoch"] == 1
    assert await repository.trainer_finish_run(worker, lease, "completed")

    run = await repository.get_run(admin, run_id)
    assert run["status"] == "completed" and run["progress_step"] == 3
    assert "lease_token" not in run.keys()  # nothing shown to readers carries the token
    assert len(await repository.run_evaluations(admin, run_id)) == 1
    assert await repository.trainer_launch_recorded(worker, lease, 1) is None  # no longer in flight


async def test_a_token_opens_its_own_run_only(runs, worker_conn):
    admin, worker, held, other = runs["admin"], worker_conn, runs["held"], runs["other"]
    wrong_run = repository.Lease(other.id, held.lease_token)  # a real token, another run
    guessed = repository.Lease(other.id, str(uuid.uuid4()))
    before = dict(await repository.get_run(admin, other.id))
    products = await repository.select_products(admin, "all_products")
    images = await repository.product_images_for(admin, [p["id"] for p in products])
    assert await repository.trainer_store_run_images(admin, _lease(other), _image_rows(images[:2]))
    for lease in (wrong_run, guessed):
        assert await repository.trainer_run(worker, lease) is None
        assert await repository.trainer_launch_recorded(worker, lease, 2) is None
        assert not await repository.trainer_start_run(worker, lease, LEASE, {})
        assert not (await repository.trainer_heartbeat(worker, lease, LEASE)).owned
        with pytest.raises(LeaseLost):
            await repository.trainer_append_events(worker, lease, 1, [_checkpoint_event(1)])
        with pytest.raises(LeaseLost):
            await repository.trainer_store_run_images(worker, lease, [])
        assert await repository.trainer_run_images(worker, lease) == []
        assert await repository.trainer_checkpoint_manifest(worker, lease, 1) is None
        assert not await repository.trainer_finish_run(worker, lease, "failed")
    assert dict(await repository.get_run(admin, other.id)) == before
    assert len(await repository.trainer_run_images(admin, _lease(other))) == 2  # untouched
    for run_id in (runs["done"], runs["queued"]):
        assert not await repository.trainer_finish_run(
            worker, repository.Lease(run_id, held.lease_token), "failed")
    assert (await repository.get_run(admin, runs["done"]))["status"] == "completed"
    assert (await repository.get_run(admin, runs["queued"]))["status"] == "queued"


async def test_a_token_dies_with_its_claim(runs, worker_conn):
    """Released (nothing to hold), claimed again, or requeued to resume (queue_resume moves the
    epoch): the old token changes nothing, and after a new claim it opens nothing."""
    admin, worker, held = runs["admin"], worker_conn, runs["held"]
    old = _lease(held)
    assert await repository.release_run(admin, held.id, held.lease_epoch, "test")
    assert not await repository.trainer_start_run(worker, old, LEASE, {})
    [again] = [c for c in await repository.claim_runs(admin, "dispatcher-2", 10, LEASE)
               if c.id == held.id]
    assert again.lease_token != held.lease_token
    assert await repository.trainer_run(worker, old) is None
    assert not await repository.trainer_start_run(worker, old, LEASE, {})
    assert await repository.trainer_start_run(worker, _lease(again), LEASE, {})
    assert await repository.recover_attempt(admin, held.id, again.lease_epoch, "stalled", "test",
                                            3) == "queued"
    assert await repository.trainer_run(worker, _lease(again)) is None


REFUSED = [
    "SELECT * FROM training_runs",
    "SELECT lease_token FROM training_runs WHERE id = {other}",
    "SELECT * FROM checkpoints",
    "SELECT * FROM run_images",
    "INSERT INTO run_images (run_id, idx, split, product_id, url, domain, label) VALUES ({other}, 0, 'train', 1, 'u', 'real', 'l')",
    "DELETE FROM run_images",
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
    "SELECT * FROM trained_models",
    "SELECT * FROM training_events",
    "SELECT * FROM evaluations",
    "SELECT * FROM run_launches",
    # the lease_epoch-fenced functions are the services' own: an epoch is guessable
    "SELECT start_run({other}, 2, 60, '{{}}')",
    "SELECT * FROM heartbeat_run({other}, 2, 60)",
    "SELECT append_trainer_events({other}, 2, 1, ARRAY['epoch.started'], ARRAY['{{}}'::jsonb])",
    "SELECT finish_run({other}, 2, 'failed')",
    "SELECT lease_epoch_of({other}, gen_random_uuid())",
    "SELECT request_cancel({other})",
    "SELECT * FROM claim_runs('rogue', 10, 60)",
    "SELECT request_delete({done}, true)",
    "CREATE TABLE loot (x int)",
]


async def test_anything_else_is_refused(runs, worker_conn):
    ids = {"held": runs["held"].id, "other": runs["other"].id, "done": runs["done"]}
    for statement in REFUSED:
        with pytest.raises(asyncpg.PostgresError) as err:
            await worker_conn.execute(statement.format(**ids))
        assert err.value.sqlstate == "42501", (statement, err.value)  # insufficient_privilege


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
                                     claimed.lease_token)
    run = await repository.get_run(conn, run_id)
    assert status == "completed", run["error_message"]
    assert run["status"] == "completed" and run["best_checkpoint_id"] is not None
    assert len(await repository.run_checkpoints(conn, run_id)) == 2
    assert len(await repository.run_evaluations(conn, run_id)) == 1
    objects = list(storage.list("checkpoints", f"runs/{run['run_uuid']}/"))
    assert objects and all(storage.size(o) <= limit for o in objects)
    assert list((tmp_path / "cache" / "decoded").rglob("*.npy"))  # decoded once, reused
