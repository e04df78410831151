"""PNG charts (matplotlib, Agg backend: no display needed): a run's training curves and a
side-by-side comparison of models."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from services.models.history import curves  # noqa: E402

LOSSES = ("loss_total", "loss_arcface", "loss_triplet", "loss_domain", "val_loss")
VAL_METRICS = ("val_recall_at_1", "val_recall_at_5", "val_recall_at_10", "val_map")


def _series(rows: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_history(history: Sequence[dict], path: Path, title: str) -> Path:
    """Losses, validation metrics, lr per group and throughput per epoch."""
    rows = curves(history)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax, keys, name in ((axes[0, 0], LOSSES, "loss"), (axes[0, 1], VAL_METRICS, "validation")):
        for key in keys:
            x, y = _series(rows, key)
            if x:
                ax.plot(x, y, marker="o", label=key)
        ax.set_title(name)
        ax.legend(fontsize=7)
    groups = sorted({g for r in rows for g in (r.get("lr") or {})})
    for group in groups:
        x = [r["epoch"] for r in rows if group in (r.get("lr") or {})]
        axes[1, 0].plot(x, [r["lr"][group] for r in rows if group in (r.get("lr") or {})],
                        marker="o", label=group)
    axes[1, 0].set_yscale("log")
    axes[1, 0].set_title("learning rate (end of epoch)")
    if groups:
        axes[1, 0].legend(fontsize=7)
    x, y = _series(rows, "images_per_second")
    axes[1, 1].bar(x, y)
    axes[1, 1].set_title("images / s")
    for ax in axes.flat:
        ax.set_xlabel("epoch")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_comparison(doc: Mapping[str, Any], histories: Mapping[int, Sequence[dict]],
                    path: Path) -> Path:
    """The compared metrics side by side (grouped bars) and each model's validation R@1."""
    models = doc["models"]
    metrics = [m for m in doc["metrics"] if m["kind"] == "metric"]
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(14, 5.5), constrained_layout=True)
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        xs = [j + i * width for j in range(len(metrics))]
        bars.bar(xs, [m["values"][i] or 0.0 for m in metrics], width, label=model["name"])
    bars.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))],
                    [m["name"] for m in metrics], rotation=60, ha="right", fontsize=7)
    bars.set_title("test metrics" + (" (test splits differ!)" if doc["test_splits_differ"] else ""))
    bars.legend(fontsize=7)
    for model in models:
        x, y = _series(curves(histories.get(model["id"], [])), "val_recall_at_1")
        lines.plot(x, y, marker="o", label=model["name"])
    lines.set_title("validation Recall@1")
    lines.set_xlabel("epoch")
    lines.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
