"""best.py: best-checkpoint choice, early stopping (remaining epochs: SQL, test_lifecycle_sql)."""
from __future__ import annotations

import math

from services.trainer.best import (
    EarlyStopping,
    EpochScore,
    best_epoch,
    best_of_history,
    progress_due,
)


def test_best_is_highest_recall_then_lower_loss_then_earlier_epoch():
    scores = [
        EpochScore(1, 0.80, 0.50),
        EpochScore(2, 0.85, 0.60),
        EpochScore(3, 0.85, 0.40),
        EpochScore(4, 0.85, 0.40),
        EpochScore(5, 0.84, 0.10),
    ]
    assert best_epoch(scores).epoch == 3


def test_best_ignores_missing_values_and_empty_history():
    assert best_epoch([]) is None
    scores = [EpochScore(1, None, 0.1), EpochScore(2, 0.2, None), EpochScore(3, math.nan, 0.0)]
    assert best_epoch(scores).epoch == 2
    assert best_epoch([EpochScore(1, 0.5, None), EpochScore(2, 0.5, 0.9)]).epoch == 2


def test_early_stopping_counts_epochs_without_a_min_delta_gain():
    es = EarlyStopping(patience=2, min_delta=0.01)
    assert es.update(1, 0.50) is False
    assert es.update(2, 0.505) is False  # gain below min_delta: a bad epoch
    assert es.update(3, 0.52) is False  # real gain resets the count
    assert es.update(4, 0.52) is False
    assert es.update(5, 0.40) is True
    assert (es.best, es.best_epoch, es.bad_epochs) == (0.52, 3, 2)


def test_early_stopping_round_trips_through_a_dict():
    es = EarlyStopping(patience=3, min_delta=0.0)
    es.update(1, 0.3)
    es.update(2, 0.2)
    restored = EarlyStopping.from_dict(es.to_dict())
    assert restored == es
    assert restored.update(3, 0.1) is False and restored.update(4, 0.1) is True


def test_best_of_history_reads_engine_summaries():
    history = [{"epoch": 1, "val": {"recall@1": 0.5, "loss": 0.3}},
               {"epoch": 2, "val": {"recall@1": 0.5, "loss": 0.2}},
               {"epoch": 3, "val": {"recall@1": math.nan, "loss": 0.1}}]
    assert best_of_history(history) == 2  # tie on recall: lower val loss
    assert best_of_history([]) is None


def test_progress_throttle():
    # first and last batch always; in between at most one per interval
    assert progress_due(100.0, 99.9, 2.0, batch=1, num_batches=10)
    assert progress_due(100.0, 99.9, 2.0, batch=10, num_batches=10)
    assert not progress_due(100.0, 99.0, 2.0, batch=5, num_batches=10)
    assert progress_due(101.0, 99.0, 2.0, batch=5, num_batches=10)
    assert progress_due(100.0, None, 2.0, batch=5, num_batches=10)  # nothing reported yet
    assert progress_due(100.0, 100.0, 0.0, batch=5, num_batches=10)  # interval 0: every batch
