"""One attempt of one run, end to end: the I/O shell around the pure training loop.

Reads the run, takes over its lease (`start_run`), prepares the data, trains through
`engine.Trainer` with hooks that stream events and save verified checkpoints, evaluates the best
checkpoint on the test split and ends the run. The same function serves the local subprocess and
the RunPod worker: it needs only the run id, attempt and fencing token, and reads its secrets
from its own environment (never from a job payload).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from db import repository
from services.common.errors import SkutrainError, TrainingFailed
from services.common.logging import get_logger, redact_text
from services.common.storage import ObjectRef, Storage
from services.models.evaluate import evaluate_images
from services.trainer import checkpoints
from services.trainer.best import EpochScore, best_epoch
from services.trainer.config import RunConfig, parse_config
from services.trainer.data.dataset import ProductImageDataset
from services.trainer.engine import Trainer
from services.trainer.event_writer import EventWriter, EventWriterConfig
from services.trainer.losses import build_loss
from services.trainer.model import build_embedding_model, preprocessing
from services.trainer.prepare import prepare_data


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


def _metrics(val: dict[str, Any]) -> dict[str, Any]:
    """Engine metric names (recall@1) as stored names (recall_at_1)."""
    return {k.replace("@", "_at_"): v for k, v in val.items()}


class RunHooks:
    """TrainingHooks that stream events through the EventWriter and save checkpoints."""

    def __init__(self, writer: EventWriter, env: TrainerEnvironment, run_id: int,
                 config: RunConfig, label_map: dict[str, Any]):
        self.writer, self.env, self.run_id = writer, env, run_id
        self.config, self.label_map = config, label_map
        self._last_progress = 0.0
        self.scores: list[EpochScore] = []
        self.best: int | None = None
        self.manifests: dict[int, str] = {}
        self.val_metrics: dict[int, dict[str, Any]] = {}

    def on_epoch_start(self, epoch: int) -> None:
        self.writer.emit("epoch.started", {"epoch": epoch})

    def on_batch(self, progress: dict[str, Any]) -> None:
        now = time.monotonic()
        last = progress["batch"] == progress["num_batches"]
        if now - self._last_progress >= self.env.progress_interval or progress["batch"] == 1 or last:
            self._last_progress = now
            self.writer.emit("batch.progress", {
                "epoch": progress["epoch"], "batch": progress["batch"],
                "num_batches": progress["num_batches"], "loss": progress["losses"],
                "lr": progress["lr"], "at": time.time(),
            })

    def should_stop(self) -> str | None:
        return self.writer.stop_reason()

    def save_checkpoint(self, epoch: int, model, summary: dict[str, Any],
                        resume_state: dict[str, Any]) -> None:
        metrics = _metrics(summary["val"])
        manifest, ref = checkpoints.save_epoch(
            self.env.storage, model, resume_state, run_id=str(self.run_id), epoch=epoch,
            model_name=self.config.model, preprocessing=preprocessing(self.config),
            label_map=self.label_map, metrics=metrics,
            max_object_bytes=self.config.checkpoint.max_object_bytes,
        )
        self.manifests[epoch] = ref.url
        self.writer.emit("checkpoint.saved", {
            "epoch": epoch, "manifest_url": ref.url, "size_bytes": manifest.total_bytes,
            "shard_count": len(manifest.shards), "train_loss": summary["train_loss"]["total"],
            "val_loss": summary["val"].get("loss"), "metrics": metrics,
        })
        self.record_epoch(epoch, summary["val"])
        best = best_epoch(self.scores)
        if best is not None and best.epoch != self.best:
            self.best = best.epoch
            self.writer.emit("checkpoint.best", {"epoch": best.epoch,
                                                 "metrics": self.val_metrics[best.epoch]})
        self._apply_keep_policy(epoch)

    def record_epoch(self, epoch: int, val: dict[str, Any]) -> None:
        """An epoch's validation result, for the best-checkpoint choice (earlier attempts too)."""
        self.scores.append(EpochScore(epoch, val.get("recall@1"), val.get("loss")))
        self.val_metrics[epoch] = _metrics(val)

    def _apply_keep_policy(self, epoch: int) -> None:
        if self.config.checkpoint.keep != "best_and_last":
            return
        for old, url in list(self.manifests.items()):
            if old not in (epoch, self.best):
                checkpoints.delete_checkpoint(self.env.storage, ObjectRef.parse(url))
                del self.manifests[old]
                self.writer.emit("checkpoint.deleted", {"epoch": old, "manifest_url": url})

    def on_epoch_end(self, summary: dict[str, Any]) -> None:
        self.writer.emit("epoch.completed", {
            "epoch": summary["epoch"], "loss": summary["train_loss"], "lr": summary["lr"],
            "val": _metrics(summary["val"]), "images_per_second": summary["images_per_second"],
            "duration_s": summary["duration_seconds"], "early_stop": summary["early_stop"],
        })


def run_attempt(env: TrainerEnvironment, run_id: int, attempt: int, lease_epoch: int) -> str:
    """Train one attempt; returns the final status ('completed', 'failed', 'cancelled' or
    'lease_lost'). Every failure a person can act on ends the run with its error_code."""
    log = get_logger("trainer", run_id=run_id, attempt=attempt)
    writer = EventWriter(env.database_url, run_id, lease_epoch, env.writer)
    writer.start()
    db = writer.call
    try:
        row = db(lambda c: repository.get_run(c, run_id))
        if row is None or row["lease_epoch"] != lease_epoch:
            log.warning("trainer.not_lease_holder")
            return "lease_lost"
        try:
            config = parse_config(row["config"])
        except SkutrainError as exc:
            return _finish(writer, db, run_id, lease_epoch, "failed", exc.code, exc.message)
        started = db(lambda c: repository.start_run(c, run_id, lease_epoch,
                                                    writer.config.lease_seconds, {
            "total_epochs": config.training.epochs, "model": config.model,
            "device": env.device, "amp": config.training.amp}))
        if not started:
            return "lease_lost"
        return _train(env, writer, db, run_id, lease_epoch, config, log)
    except SkutrainError as exc:
        log.warning("run.failed", error_code=exc.code, error=exc.message)
        return _finish(writer, db, run_id, lease_epoch, "failed", exc.code, exc.message)
    except Exception as exc:  # a bug or an unexpected library error: still end the run clearly
        log.exception("run.crashed")
        return _finish(writer, db, run_id, lease_epoch, "failed", TrainingFailed.code,
                       redact_text(f"{type(exc).__name__}: {exc}"))
    finally:
        writer.close()


def _train(env, writer, db, run_id, lease_epoch, config: RunConfig, log) -> str:
    torch.manual_seed(config.training.seed)
    data = prepare_data(db, run_id, config, storage=env.storage, cache_dir=env.cache_dir)
    writer.emit("data.prepared", data.summary)
    if (reason := writer.stop_reason()) is not None:
        return _stopped(writer, db, run_id, lease_epoch, reason)

    size = config.training.image_size
    train = ProductImageDataset(data.splits["train"], size, train=True)
    val = ProductImageDataset(data.splits["val"], size, train=False)
    model = build_embedding_model(config, hf_token=env.hf_token)
    loss = build_loss(config.loss, num_classes=len(train.label_to_index),
                      embedding_dim=config.training.embedding_dim)
    resume = checkpoints.load_resume_state(env.storage, run_id=str(run_id))
    hooks = RunHooks(writer, env, run_id, config, label_map=train.label_to_index)
    trainer = Trainer(model, loss, train, val, config, device=env.device, hooks=hooks,
                      resume_state=resume)
    for past in trainer.history:  # epochs of an earlier attempt count for the best choice
        hooks.record_epoch(past["epoch"], past["val"])
    result = trainer.run()
    if result.status == "stopped":
        return _stopped(writer, db, run_id, lease_epoch, result.stop_reason)

    best = result.best_epoch
    manifest_url = hooks.manifests.get(best) or _stored_manifest(db, run_id, best)
    best_model, _ = checkpoints.load_embedding_model(env.storage, ObjectRef.parse(manifest_url))
    test_images = data.splits["test"]
    products = db(lambda c: repository.products_info(
        c, sorted({image.record.product_id for image in test_images})))
    evaluation = evaluate_images(best_model, test_images, config,
                                 device=torch.device(env.device), products=products)
    writer.emit("eval.completed", {"epoch": best, "split": "test", **evaluation})
    log.info("run.evaluated", best_epoch=best, test=evaluation["overall"])
    return _finish(writer, db, run_id, lease_epoch, "completed", payload={
        "best_epoch": best, "epochs_run": len(result.epochs),
        "stopped_early": result.status == "early_stopped",
        "test": evaluation["overall"],
    })



def _stored_manifest(db, run_id: int, epoch: int) -> str:
    rows = db(lambda c: repository.run_checkpoints(c, run_id))
    return next(r["manifest_url"] for r in rows if r["epoch"] == epoch)


def _stopped(writer, db, run_id, lease_epoch, reason: str) -> str:
    if reason == "cancelled":
        return _finish(writer, db, run_id, lease_epoch, "cancelled",
                       payload={"reason": "cancel requested"})
    return "lease_lost"  # a newer attempt owns the run: write nothing more


def _finish(writer, db, run_id, lease_epoch, status, error_code=None, error_message=None,
            payload=None) -> str:
    """Store every queued event first, then end the run (fenced)."""
    if not writer.flush(120):
        return "lease_lost"
    db(lambda c: repository.finish_run(c, run_id, lease_epoch, status, error_code=error_code,
                                       error_message=error_message, payload=payload))
    return status
