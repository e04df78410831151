"""Pure decisions about epochs: the best checkpoint, early stopping and how often a batch is
reported (the progress throttle). Remaining epochs on resume are decided once, in SQL
(remaining_epochs(), called by queue_resume: a resume may be requested from psql alone).

Epochs are numbered from 1.
Best = highest validation Recall@1; ties go to the lower validation loss, then the earlier epoch.
A missing (None) or NaN Recall@1 ranks below every number, a missing or NaN loss above every loss.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class EpochScore:
    epoch: int
    val_recall_at_1: float | None
    val_loss: float | None


def _finite(value: float | None, default: float) -> float:
    return default if value is None or math.isnan(value) else value


def best_epoch(scores: Iterable[EpochScore]) -> EpochScore | None:
    """The epoch whose checkpoint is the best (None when there are no epochs)."""

    def key(s: EpochScore) -> tuple[float, float, int]:
        return (
            _finite(s.val_recall_at_1, -math.inf),
            -_finite(s.val_loss, math.inf),
            -s.epoch,
        )

    return max(scores, key=key, default=None)


def best_of_history(history: Iterable[dict[str, Any]]) -> int | None:
    """The best epoch among the engine's epoch summaries ({epoch, val {recall@1, loss}}); the
    one choice the engine, the trainer's events and the final evaluation all use."""
    best = best_epoch(
        EpochScore(s["epoch"], s["val"].get("recall@1"), s["val"].get("loss")) for s in history
    )
    return None if best is None else best.epoch


@dataclass
class EarlyStopping:
    """Stop after `patience` epochs without a val Recall@1 gain larger than `min_delta`."""

    patience: int
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0

    def update(self, epoch: int, value: float | None) -> bool:
        """Record one epoch's val Recall@1; True when training should stop now."""
        value = _finite(value, -math.inf)
        if self.best is None or value > self.best + self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "EarlyStopping":
        return cls(**state)


def progress_due(now: float, last_reported: float | None, interval: float, batch: int,
                 num_batches: int) -> bool:
    """Whether batch `batch` (1-based) of `num_batches` gets a batch.progress event: the first
    and last batch of every epoch, and otherwise at most one every `interval` seconds."""
    return (batch in (1, num_batches) or last_reported is None
            or now - last_reported >= interval)


def retention_deletes(checkpoints: Iterable[tuple[int, int, int]], best_id: int | None,
                      keep_latest: int | None) -> list[int]:
    """Ids of the checkpoints (id, epoch, attempt) the keep policy removes: every one but the
    best and the `keep_latest` latest (by epoch, then attempt); None keeps all."""
    if keep_latest is None:
        return []
    newest_first = sorted(checkpoints, key=lambda c: (c[1], c[2]), reverse=True)
    keep = {c[0] for c in newest_first[:keep_latest]} | {best_id}
    return [c[0] for c in newest_first if c[0] not in keep]
