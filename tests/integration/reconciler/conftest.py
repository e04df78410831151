"""Reconciler fixtures: runs brought to `running` through the real SQL functions, checkpoints
stored through the trainer's event path with their objects in local storage, real processes."""
import subprocess
import sys

import pytest

from db import repository
from services.common.storage import LocalStorage, ObjectRef
from services.common.storage_layout import BUCKET, attempt_prefix
from services.dispatcher.launchers import LocalLauncher, process_identity
from services.reconciler.service import Reconciler, ReconcilerConfig


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "storage")


@pytest.fixture
def launcher(tmp_path):
    return LocalLauncher(log_dir=tmp_path / "logs")


@pytest.fixture
def make_reconciler(db_url, launcher, storage):
    def make(**config):
        config.setdefault("orphan_grace", 0.0)
        config.setdefault("orphan_interval", 0.0)
        return Reconciler(db_url, [launcher], storage, ReconcilerConfig(**config))
    return make


@pytest.fixture
def sleeper():
    """A real process in its own session, as the local launcher starts trainers."""
    procs = []

    def start():
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                start_new_session=True)
        procs.append(proc)
        return proc
    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


async def start_running(conn, name="r", epochs=3, identity=None, launcher="local"):
    """Insert, claim, launch and start a run; returns its claimed row."""
    run_id = await repository.insert_run(conn, name, {"training": {"epochs": epochs}})
    (run,) = [r for r in await repository.claim_runs(conn, "test", 10, 60) if r.id == run_id]
    assert await repository.mark_launched(conn, run.id, run.lease_epoch, launcher,
                                          f"job-{run.id}", identity or {})
    assert await repository.start_run(conn, run.id, run.lease_epoch, 60, {"total_epochs": epochs})
    return run


async def save_checkpoints(conn, storage, run, epochs, recalls=None, first_seq=1):
    """Store checkpoint.saved events (and their objects) for `epochs` of the run's attempt."""
    run_uuid = str(await conn.fetchval("SELECT run_uuid FROM training_runs WHERE id = $1", run.id))
    events = []
    for i, epoch in enumerate(epochs):
        folder = f"{attempt_prefix(run_uuid, run.attempt)}epoch-{epoch:03d}/"
        for key in ("model-00001-of-00001.safetensors", "manifest.json", "resume/part-000",
                    "resume/manifest.json"):
            storage.put(ObjectRef(BUCKET, folder + key), b"x")
        recall = recalls[i] if recalls else 0.1 * epoch
        events.append(("checkpoint.saved", {
            "epoch": epoch, "manifest_url": ObjectRef(BUCKET, folder + "manifest.json").url,
            "resume_state_url": ObjectRef(BUCKET, folder + "resume/manifest.json").url,
            "size_bytes": 1, "shard_count": 1, "train_loss": 1.0, "val_loss": 1.0 - recall,
            "metrics": {"recall_at_1": recall}}))
    await repository.append_trainer_events(conn, run.id, run.lease_epoch, first_seq, events)
    return run_uuid


def stored_keys(storage, run_uuid):
    return [r.key for r in storage.list(BUCKET, f"runs/{run_uuid}/")]


def identity_of(proc):
    return process_identity(proc.pid)
