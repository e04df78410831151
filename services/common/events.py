"""The event contract for downstream consumers: every type, its version and its payload.

Rows of `training_events` carry (run_id, attempt, seq, type, version, payload). `seq` numbers
the events of one attempt without gaps; read with `training_events_after(txid, id, limit)` (or
`skutrain events tail`), which never skips a row committed out of id order. A payload change
that is not purely additive bumps the type's version.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EventType:
    name: str
    version: int
    writer: str
    payload: str


EVENT_TYPES: dict[str, EventType] = {
    e.name: e
    for e in [
        EventType("run.queued", 1, "insert trigger", "name, priority"),
        EventType("run.claimed", 1, "claim_runs()", "owner, lease_epoch"),
        EventType("run.launched", 1, "dispatcher", "launcher, external_job_id"),
        EventType("run.started", 1, "trainer", "total_epochs, start_epoch, model, device, amp"),
        EventType(
            "data.prepared", 1, "trainer",
            "images_per_split_domain {split: {domain: n}}, products_per_split, label_counts, "
            "skipped {reason: n}, skipped_sample [url], total_images, total_products",
        ),
        EventType("epoch.started", 1, "trainer", "epoch, num_batches"),
        EventType(
            "batch.progress", 1, "trainer (throttled, ~every 2 s)",
            "epoch, batch, num_batches, loss {total, arcface, triplet, domain}, lr",
        ),
        EventType(
            "epoch.completed", 1, "trainer",
            "epoch, loss {total, arcface, triplet, domain}, lr {group: lr}, "
            "val {recall_at_k, map, val_loss}, images_per_second, duration_s",
        ),
        EventType(
            "checkpoint.saved", 1, "trainer (after a verified upload; inserts the checkpoint row)",
            "epoch, manifest_url, size_bytes, shard_count, train_loss, val_loss, metrics",
        ),
        EventType("checkpoint.best", 1, "trainer", "epoch, metrics"),
        EventType("checkpoint.deleted", 1, "trainer (keep policy)", "epoch, manifest_url"),
        EventType(
            "eval.completed", 1, "trainer (inserts the evaluations row)",
            "epoch, split, overall, real_to_synthetic, synthetic_to_real, per_category, "
            "hard_cases",
        ),
        EventType("run.completed", 1, "trainer", "best_epoch, epochs_run, stopped_early"),
        EventType("run.failed", 1, "dispatcher or trainer", "error_code, error_message"),
        EventType("run.cancel_requested", 1, "request_cancel()", "status"),
        EventType("run.cancelled", 1, "request_cancel() or trainer", "reason"),
        EventType("run.requeued", 1, "dispatcher (shutdown) or reconciler", "reason"),
        EventType("run.resumed", 1, "request_resume()", "checkpoint_id, remaining_epochs"),
        EventType("run.deleted", 1, "request_delete()", "name"),
        EventType("model.registered", 1, "register_model()", "model_id, checkpoint_id, name"),
    ]
}
