"""One attempt of one run, end to end: the I/O shell around the pure training loop.

Reads the run, takes over its lease (`start_run`), prepares the data (cancellable), trains
through `engine.Trainer` with hooks that stream events and save verified checkpoints on a
background thread, evaluates the best checkpoint on the test split and ends the run. The same
function serves the local subprocess and the RunPod worker: it needs only the run id, attempt
and the claim's lease token, and reads its secrets from its own environment (never from a job
payload).

Everything the attempt reads and writes of its run goes through the lease token (the trainer_*
functions of revision 0006: events, start, finish, manifests; the `Attempt` object), and what it
stores lives under its own storage prefix `runs/{run_uuid}/attempt-{attempt}/`,
so a stale attempt can neither change the run's rows nor touch the live attempt's objects. The
trainer deletes nothing in storage: retention and deletes belong to the reconciler.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from db import repository
from services.common.errors import (
    CheckpointUploadFailed,
    ResumeMismatch,
    SkutrainError,
    TrainingFailed,
)
from services.common.logging import get_logger, redact_text
from services.common.storage import ObjectRef, Storage
from services.models.evaluate import evaluate_images, stored_names
from services.trainer import checkpoints
from services.trainer.best import best_of_history, progress_due
from services.trainer.config import RunConfig, parse_config
from services.trainer.data.dataset import ProductImageDataset
from services.trainer.engine import Trainer, seed_everything
from services.trainer.memory import as_out_of_memory
from services.trainer.event_writer import EventWriter, EventWriterConfig
from services.trainer.losses import build_loss
from services.trainer.model import build_embedding_model, preprocessing
from services.trainer.prepare import PreparedData, prepare_data

# The parts of a config that decide what training computes (see checkpoints.resume_fingerprint).
TRAINING_FIELDS = {"model", "model_path", "training", "loss", "sampler"}


@dataclass
class TrainerEnvironment:
    """What the process gets from its own environment (settings), never from the job."""

    database_url: str
    storage: Storage
    cache_dir: Path
    hf_token: str | None = None
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    progress_interval: float = 2.0
    writer: EventWriterConfig | None = None


class Attempt:
    """One attempt of one run: its identity, lease, event writer (and the database connection
    behind it) and storage prefix. Every read and write of the run goes through here, with the
    claim's lease token."""

    def __init__(self, env: TrainerEnvironment, lease: repository.Lease, attempt: int):
        self.lease, self.attempt = lease, attempt
        self.storage = env.storage
        self.run_uuid: str | None = None  # known once `load_run` read the row
        self.writer = EventWriter(env.database_url, lease, env.writer)
        self.log = get_logger("trainer", run_id=lease.run_id, attempt=attempt)

    @property
    def run_id(self) -> int:
        return self.lease.run_id

    @property
    def prefix(self) -> str:
        """The storage prefix this attempt writes under (and the only one)."""
        return checkpoints.attempt_prefix(self.run_uuid, self.attempt)

    def db(self, fn: Callable) -> Any:
        """Run `fn(conn)` on the attempt's connection (any thread), with retries."""
        return self.writer.call(fn)

    def emit(self, type_: str, payload: dict[str, Any]) -> int:
        return self.writer.emit(type_, payload)

    def stop_reason(self) -> str | None:
        return self.writer.stop_reason()

    def load_run(self) -> Any | None:
        """The run row, or None when this attempt no longer holds its lease."""
        row = self.db(lambda c: repository.trainer_run(c, self.lease))
        if row is None or row["attempt"] != self.attempt:
            self.log.warning("trainer.not_lease_holder")
            return None
        self.run_uuid = str(row["run_uuid"])
        return row

    def start(self, payload: dict[str, Any]) -> bool:
        return self.db(lambda c: repository.trainer_start_run(
            c, self.lease, self.writer.config.lease_seconds, payload))

    def finish(self, status: str, error_code: str | None = None,
               error_message: str | None = None, payload: dict[str, Any] | None = None) -> str:
        """Store every queued event first, then end the run; 'lease_lost' when fenced off. A run
        whose events the database refused ends failed (its record is incomplete)."""
        if not self.writer.flush(120):
            return "lease_lost"
        if (rejected := self.writer.rejected) is not None and status != "failed":
            status, error_code, error_message = "failed", rejected.code, rejected.message
            payload = None
        done = self.db(lambda c: repository.trainer_finish_run(
            c, self.lease, status, error_code=error_code,
            error_message=error_message, payload=payload))
        return status if done else "lease_lost"

    def fail(self, exc: SkutrainError) -> str:
        self.log.warning("run.failed", error_code=exc.code, error=exc.message)
        return self.finish("failed", exc.code, exc.message)

    def stopped(self, reason: str) -> str:
        """End the run for a stop reason of the writer (cancel, rejected event, lost lease)."""
        if reason == "cancelled":
            return self.finish("cancelled", payload={"reason": "cancel requested"})
        if reason == "event_rejected":
            return self.fail(self.writer.rejected)
        return "lease_lost"  # a newer attempt owns the run: write nothing more


class RunHooks:
    """TrainingHooks that stream events and save checkpoints off the training thread.

    A checkpoint is saved and verified on a BackgroundSaver; its `checkpoint.saved` (which
    inserts the row) and, when the best epoch changed, `checkpoint.best` are emitted only after
    the upload verified, so no row ever names missing bytes. The next epoch's save waits for the
    previous one, and a failed save stops training at the next batch with
    CheckpointUploadFailed.
    """

    def __init__(self, current: Attempt, env: TrainerEnvironment, config: RunConfig,
                 label_map: dict[str, Any], fingerprint: dict[str, str],
                 saver: checkpoints.BackgroundSaver, best_epoch: int | None):
        self.current, self.env, self.config = current, env, config
        self.label_map, self.fingerprint, self.saver = label_map, fingerprint, saver
        self.best = best_epoch  # the best epoch already announced (by an earlier attempt too)
        self._last_progress: float | None = None

    def on_epoch_start(self, epoch: int) -> None:
        self.current.emit("epoch.started", {"epoch": epoch})

    def on_batch(self, progress: dict[str, Any]) -> None:
        self.saver.check()
        self.current.writer.step = progress["step"]
        now = time.monotonic()
        if progress_due(now, self._last_progress, self.env.progress_interval,
                        progress["batch"], progress["num_batches"]):
            self._last_progress = now
            self.current.emit("batch.progress", {
                "epoch": progress["epoch"], "batch": progress["batch"],
                "num_batches": progress["num_batches"], "step": progress["step"],
                "loss": progress["losses"], "lr": progress["lr"], "at": time.time(),
            })

    def should_stop(self) -> str | None:
        return self.current.stop_reason()

    def save_checkpoint(self, epoch: int, model, summary: dict[str, Any],
                        resume_state: dict[str, Any]) -> None:
        self.saver.submit(self._save, epoch, model, summary, resume_state)

    def _save(self, epoch: int, model, summary: dict[str, Any],
              resume_state: dict[str, Any]) -> None:
        """On the saver thread: upload and verify, then record (events are thread-safe)."""
        metrics = stored_names(summary["val"])
        try:
            saved = checkpoints.save_epoch(
                self.current.storage, model, resume_state, prefix=self.current.prefix,
                run_id=self.current.run_uuid, epoch=epoch, model_name=self.config.model,
                preprocessing=preprocessing(self.config), label_map=self.label_map,
                metrics=metrics, fingerprint=self.fingerprint,
                max_object_bytes=self.config.checkpoint.max_object_bytes,
            )
        except Exception as exc:
            raise CheckpointUploadFailed(
                f"epoch {epoch}'s checkpoint could not be stored and verified under "
                f"{self.current.prefix}: {type(exc).__name__}: {exc}. Check the storage "
                "settings and free space, then resume the run.",
                details={"epoch": epoch}) from exc
        self.current.emit("checkpoint.saved", {
            "epoch": epoch, "manifest_url": saved.manifest_ref.url,
            "resume_state_url": saved.resume_ref.url, "size_bytes": saved.manifest.total_bytes,
            "shard_count": len(saved.manifest.shards),
            "train_loss": summary["train_loss"]["total"], "val_loss": summary["val"].get("loss"),
            "metrics": metrics,
        })
        if summary["best_epoch"] != self.best:
            self.best = summary["best_epoch"]  # only ever the epoch just saved
            self.current.emit("checkpoint.best", {"epoch": self.best, "metrics": metrics})

    def on_epoch_end(self, summary: dict[str, Any]) -> None:
        self.current.emit("epoch.completed", {
            "epoch": summary["epoch"], "loss": summary["train_loss"], "lr": summary["lr"],
            "val": stored_names(summary["val"]),
            "images_per_second": summary["images_per_second"],
            "duration_s": summary["duration_seconds"], "early_stop": summary["early_stop"],
        })


def run_attempt(env: TrainerEnvironment, run_id: int, attempt: int, lease_token: str) -> str:
    """Train one attempt of a run: the one entry point of `python -m services.trainer` and of
    the RunPod handler.

    Args:
        env: what the process reads from its own environment (database URL, storage, cache
            directory, HF token, device); never from a job payload.
        run_id: the training_runs id.
        attempt: the attempt number the run was claimed with (names the storage prefix).
        lease_token: the claim's lease token; every read and write of the run carries it.

    Returns the final status: 'completed', 'failed', 'cancelled', or 'lease_lost' when a newer
    attempt owns the run (nothing more was written). Every failure a person can act on ends the
    run with its error_code (e.g. resume_mismatch, non_finite_loss, checkpoint_upload_failed,
    event_rejected); it never raises for one.
    """
    current = Attempt(env, repository.Lease(run_id, lease_token), attempt)
    current.writer.start()
    try:
        row = current.load_run()
        if row is None:
            return "lease_lost"
        try:
            config = parse_config(row["config"])
        except SkutrainError as exc:
            return current.fail(exc)
        resume_from = _resume_checkpoint(current, row["resume_from_checkpoint_id"])
        if not current.start({
            "total_epochs": config.training.epochs, "model": config.model,
            "embedding_dim": config.training.embedding_dim,
            "device": env.device, "amp": config.training.amp,
            "start_epoch": 1 if resume_from is None else resume_from["epoch"] + 1,
            "resume_from_checkpoint_id": resume_from and resume_from["id"],
        }):
            return "lease_lost"
        return _train(env, current, config, resume_from)
    except SkutrainError as exc:
        return current.fail(exc)
    except Exception as exc:  # a bug or an unexpected library error: still end the run clearly
        if (oom := as_out_of_memory(exc)) is not None:  # the config's to fix, not a bug
            return current.fail(oom)
        current.log.exception("run.crashed")
        return current.finish("failed", TrainingFailed.code,
                              redact_text(f"{type(exc).__name__}: {exc}"))
    finally:
        current.writer.close()


def _resume_checkpoint(current: Attempt, checkpoint_id: int | None) -> Any | None:
    """The checkpoint row the database says this attempt resumes from (None: a fresh start)."""
    if checkpoint_id is None:
        return None
    row = current.db(lambda c: repository.trainer_checkpoint(c, current.lease, checkpoint_id))
    if row is None:
        raise ResumeMismatch(
            f"run {current.run_id} is set to resume from checkpoint {checkpoint_id}, which is "
            "not one of its checkpoints; resume it again with request_resume to pick its latest "
            "checkpoint")
    if row["resume_state_url"] is None:
        raise ResumeMismatch(
            f"checkpoint {checkpoint_id} (epoch {row['epoch']}) has no resume state any more "
            "(a later checkpoint superseded it); resume from the run's latest checkpoint")
    return row


def _train(env: TrainerEnvironment, current: Attempt, config: RunConfig,
           resume_from: Any | None) -> str:
    seed_everything(config.training.seed)
    data = _prepare(env, current, config)
    if (reason := current.stop_reason()) is not None:
        return current.stopped(reason)
    current.emit("data.prepared", data.summary)

    size = config.training.image_size
    train = ProductImageDataset(data.splits["train"], size, train=True)
    val = ProductImageDataset(data.splits["val"], size, train=False)
    model = build_embedding_model(config, hf_token=env.hf_token)
    loss = build_loss(config.loss, num_classes=len(train.label_to_index),
                      embedding_dim=config.training.embedding_dim)
    fingerprint = checkpoints.resume_fingerprint(
        config.model_dump(mode="json", include=TRAINING_FIELDS), _image_rows(data),
        train.label_to_index)
    resume = None if resume_from is None else checkpoints.load_resume_state(
        current.storage, ObjectRef.parse(resume_from["resume_state_url"]),
        fingerprint=fingerprint)
    saver = checkpoints.BackgroundSaver()
    hooks = RunHooks(current, env, config, train.label_to_index, fingerprint, saver,
                     best_of_history(resume["history"]) if resume else None)
    trainer = Trainer(model, loss, train, val, config, device=env.device, hooks=hooks,
                      resume_state=resume)
    with saver:
        result = trainer.run()
    if result.status == "stopped":
        return current.stopped(result.stop_reason)

    best = result.best_epoch
    if not current.writer.flush(120):  # the best epoch's checkpoint row is stored
        return "lease_lost"
    if (reason := current.stop_reason()) is not None:
        return current.stopped(reason)
    manifest_url = current.db(lambda c: repository.trainer_checkpoint_manifest(
        c, current.lease, best))
    best_model, _ = checkpoints.load_embedding_model(current.storage,
                                                     ObjectRef.parse(manifest_url))
    test_images = data.splits["test"]
    products = current.db(lambda c: repository.products_info(
        c, sorted({image.record.product_id for image in test_images})))
    evaluation = evaluate_images(best_model, test_images, config,
                                 device=torch.device(env.device), products=products)
    current.emit("eval.completed", {"epoch": best, "split": "test",
                                    **evaluation})
    current.log.info("run.evaluated", best_epoch=best, test=evaluation["overall"])
    return current.finish("completed", payload={
        "best_epoch": best, "epochs_run": len(result.epochs),
        "stopped_early": result.status == "early_stopped",
        "test": evaluation["overall"],
    })


def _prepare(env: TrainerEnvironment, current: Attempt, config: RunConfig) -> PreparedData | None:
    """Prepare the data on a daemon thread, watching for a stop request meanwhile: a cancel
    during a long download ends the attempt at once (None, with `stop_reason` set) instead of
    after it; the abandoned download dies with the process."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["data"] = prepare_data(current.db, current.lease, config,
                                           storage=env.storage, cache_dir=env.cache_dir)
        except BaseException as exc:  # handed to the attempt's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="data-prepare", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        if current.stop_reason() is not None:
            return None
    if "error" in outcome:
        raise outcome["error"]
    return outcome["data"]


def _image_rows(data: PreparedData) -> list[dict[str, Any]]:
    """The image manifest a resume state is fingerprinted with."""
    return [{"split": split, "url": i.record.url, "product_id": i.record.product_id,
             "label": i.record.label, "domain": i.record.domain}
            for split, images in data.splits.items() for i in images]

