"""Best checkpoint and retention of a run that no longer trains, after resumes and deletes:
exactly one is_best (the trainer's own choice, services/trainer/best.py) and the keep policy
(best + latest N) applied through the delete path, never before the events are stored (it acts
on checkpoint rows, which exist only once their event is stored)."""
from __future__ import annotations

from db import repository
from services.trainer.best import EpochScore, best_epoch, retention_deletes


def choose(rows, keep_latest: int | None) -> tuple[int | None, list[int]]:
    """(best checkpoint id, ids to delete) for a run's live checkpoint rows. An epoch saved by
    several attempts counts once, as the latest attempt's row."""
    lineage = {}
    for row in rows:
        if row["epoch"] not in lineage or row["attempt"] > lineage[row["epoch"]]["attempt"]:
            lineage[row["epoch"]] = row
    best = best_epoch(EpochScore(r["epoch"], r["val_recall_at_1"], r["val_loss"])
                      for r in lineage.values())
    best_id = lineage[best.epoch]["id"] if best is not None else None
    doomed = retention_deletes([(r["id"], r["epoch"], r["attempt"]) for r in rows], best_id,
                               keep_latest)
    return best_id, [i for i in doomed if not next(r for r in rows if r["id"] == i)["linked"]]


async def settle_runs(conn, keep_latest: int | None, limit: int) -> int:
    settled = 0
    for run_id in await repository.runs_with_dirty_checkpoints(conn, limit):
        best_id, doomed = choose(await repository.live_checkpoints(conn, run_id), keep_latest)
        if await repository.settle_checkpoints(conn, run_id, best_id, doomed):
            settled += 1
    return settled
