"""The event contract for downstream consumers: every type, its version and its payload fields.

Rows of `training_events` carry (run_id, attempt, seq, type, version, payload). `seq` numbers
the events of one attempt without gaps; read with `training_events_after(txid, id, limit)` (or
`skutrain events tail`), which never skips a row committed out of id order. A payload change
that is not purely additive bumps the type's version.

This catalogue is the truth: every type a writer emits is here with every field its payload
may carry (tests/e2e checks a real run's events against it). Payloads are valid JSON: a NaN or
infinite number is stored as null (`json_safe`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

LOSSES = "{arcface, triplet, domain, total}"
RETRIEVAL = "{recall_at_k..., map, map_at_r, num_queries, queries_without_relevant, loss}"


@dataclass(frozen=True)
class EventType:
    name: str
    version: int
    writer: str
    fields: tuple[str, ...]
    about: str = ""


def _event(name: str, writer: str, fields: str, about: str = "", version: int = 1) -> EventType:
    return EventType(name, version, writer, tuple(f.strip() for f in fields.split(",") if f),
                     about)


EVENT_TYPES: dict[str, EventType] = {
    e.name: e
    for e in [
        _event("run.queued", "insert trigger", "name, priority"),
        _event("run.claimed", "claim_runs()", "owner, lease_epoch"),
        _event("run.launched", "mark_launched() (dispatcher)", "launcher, external_job_id"),
        _event("run.waiting", "runpod launcher",
               "launcher, external_job_id, waited_s, workers, message",
               "the RunPod job waits in the endpoint's queue: no worker has taken it"),
        _event("run.started", "start_run() (trainer)",
               "total_epochs, start_epoch, model, embedding_dim, device, amp, "
               "resume_from_checkpoint_id",
               "start_epoch > 1 when the attempt resumes from checkpoint "
               "resume_from_checkpoint_id"),
        _event("data.prepared", "trainer",
               "splits, domains, images, download, manifest_images, reused_stored_manifest",
               "splits {split: {images, products, labels, images_per_domain, images_per_label "
               "{min, median, max}}}, domains {domain: n}, download {total, ok, cached, skipped, "
               "skipped_by_reason, failed_samples [{url (redacted), reason, detail}], attempts}"),
        _event("epoch.started", "trainer", "epoch, num_batches"),
        _event("batch.progress", "trainer (throttled: best.progress_due)",
               "epoch, batch, num_batches, step, loss, lr, at",
               f"loss {LOSSES}; lr: the base lr of the batch; at: unix time"),
        _event("epoch.completed", "trainer",
               "epoch, loss, lr, val, images_per_second, duration_s, early_stop",
               f"loss {LOSSES} (epoch means), lr {{param group: lr}}, val {RETRIEVAL}"),
        _event("checkpoint.saved",
               "trainer (after a verified upload, off the training thread; inserts the "
               "checkpoint row)",
               "epoch, manifest_url, resume_state_url, size_bytes, shard_count, train_loss, "
               "val_loss, metrics",
               f"metrics {RETRIEVAL}; resume_state_url names the resume state saved with it"),
        _event("checkpoint.best",
               "trainer (after the checkpoint.saved of that epoch) or settle_checkpoints() "
               "(reconciler, chosen_by 'reconciler')",
               "epoch, metrics, checkpoint_id, chosen_by"),
        _event("checkpoint.delete_requested", "request_checkpoint_delete()",
               "checkpoint_id, epoch, attempt, force"),
        _event("checkpoint.deleted", "remove_checkpoint() (reconciler: retention, delete path)",
               "checkpoint_id, epoch, attempt, manifest_url"),
        _event("eval.completed", "trainer (inserts the evaluations row)",
               "epoch, split, overall, real_to_synthetic, synthetic_to_real, domain_pairs, "
               "per_category, hard_cases",
               "hard_cases {worst_products, most_confused_pairs, worst_queries}"),
        _event("evaluation.recorded", "record_evaluation() (on-demand evaluation)",
               "evaluation_id, checkpoint_id, epoch, split, overall"),
        _event("run.completed", "finish_run() (trainer)",
               "best_epoch, epochs_run, stopped_early, test"),
        _event("run.failed", "finish_run() (trainer, dispatcher or reconciler)",
               "error_code, error_message"),
        _event("run.cancel_requested", "request_cancel()", "status"),
        _event("run.cancelled", "request_cancel() or finish_run() (trainer)", "reason"),
        _event("run.requeued", "release_run() (dispatcher shutdown) or recover_attempt() "
               "(reconciler)", "reason, message, attempt"),
        _event("run.resumed", "queue_resume() (request_resume() or the reconciler)",
               "checkpoint_id, epoch, remaining_epochs, reason"),
        _event("run.delete_requested", "request_delete()", "force"),
        _event("run.deleted", "the run row's delete trigger (remove_run() or a DELETE by hand)",
               "name, status, requested",
               "the run's last event; the reconciler then stops its job and cleans its storage"),
        _event("model.registered", "register_model()",
               "model_id, name, checkpoint_id, evaluation_id"),
    ]
}


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (jsonb rejects them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def undeclared_fields(type_: str, payload: dict) -> set[str] | None:
    """Payload keys the catalogue does not list for `type_` (None: the type is unknown)."""
    event = EVENT_TYPES.get(type_)
    return None if event is None else set(payload) - set(event.fields)
