"""A run's training curves from its epoch.completed events (the run_metrics_history view)."""
from __future__ import annotations

from typing import Any, Sequence

from db import repository

COLUMNS = (("epoch", "epoch", "{}"), ("attempt", "att", "{}"), ("loss_total", "loss", "{:.4f}"),
           ("loss_arcface", "arcface", "{:.4f}"), ("loss_triplet", "triplet", "{:.4f}"),
           ("loss_domain", "domain", "{:.4f}"), ("val_loss", "val loss", "{:.4f}"),
           ("val_recall_at_1", "val R@1", "{:.3f}"), ("val_recall_at_5", "val R@5", "{:.3f}"),
           ("val_map", "val mAP", "{:.3f}"), ("images_per_second", "img/s", "{:.1f}"))


async def metrics_history(conn, run_id: int) -> list[dict]:
    """One JSON-ready row per epoch.completed event of the run (every attempt), by epoch."""
    rows = []
    for r in await repository.metrics_history_rows(conn, run_id):
        row = dict(r)
        row["created_at"] = row["created_at"].isoformat()
        rows.append(row)
    return rows


def curves(history: Sequence[dict]) -> list[dict]:
    """One row per epoch: the latest attempt's (a resumed attempt that redid an epoch wins)."""
    latest: dict[int, dict] = {}
    for row in history:
        if row["epoch"] not in latest or row["attempt"] >= latest[row["epoch"]]["attempt"]:
            latest[row["epoch"]] = row
    return [latest[e] for e in sorted(latest)]


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def history_table(history: Sequence[dict]) -> str:
    """The history as an aligned text table, with the lr per parameter group last."""
    header = [title for _, title, _ in COLUMNS] + ["lr"]
    body = [[_cell(row.get(key), fmt) for key, _, fmt in COLUMNS]
            + [" ".join(f"{g}={v:.2e}" for g, v in sorted((row.get("lr") or {}).items()))]
            for row in history]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *body]]
    return "\n".join(lines)
