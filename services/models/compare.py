"""Compare 2 to 5 registered models: one aligned table of the metrics they all have (same
names and K), the best value per metric marked, and a flag when their test splits differ.

Test metrics are only comparable on the same images: each registered evaluation carries the
digest of its split's (product, url) list. When the digests differ (or one is unknown) the
document says so (`test_splits_differ`, with a warning naming the models of each split) and
marks no best value, since a higher number on other images does not make a better model.
Metrics that some models lack (another K, no synthetic images) are listed as omitted.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from db import repository
from services.common.errors import NotFound, Refused
from services.models.history import curves, metrics_history

MIN_MODELS, MAX_MODELS = 2, 5
COUNT_KEYS = ("num_queries", "queries_without_relevant")


def _is_score(key: str) -> bool:
    return key.startswith("recall_at_") or key.startswith("map")


def flatten_metrics(model: Mapping[str, Any]) -> dict[str, tuple[str, float | int]]:
    """name -> (kind, value): test, cross-domain, domain-pair and per-category scores
    ('metric'), and their query counts ('count')."""
    sections = {"test": model.get("test_metrics") or {}}
    cross = model.get("cross_domain_metrics") or {}
    for name in ("real_to_synthetic", "synthetic_to_real"):
        if cross.get(name):
            sections[name] = cross[name]
    for pair, values in (cross.get("pairs") or {}).items():
        sections[pair] = values
    for category, values in (model.get("per_category") or {}).items():
        sections[f"category:{category}"] = values
    out: dict[str, tuple[str, float | int]] = {}
    for section, values in sections.items():
        for key, value in values.items():
            if value is None:
                continue
            if _is_score(key):
                out[f"{section}.{key}"] = ("metric", value)
            elif key in COUNT_KEYS or key == "count":
                out[f"{section}.{key}"] = ("count", value)
    return out


def compare_documents(models: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The comparison of already loaded model rows (pure: see the module docstring)."""
    flat = [flatten_metrics(m) for m in models]
    shared = set(flat[0]).intersection(*flat[1:])
    digests = [m.get("test_split_digest") for m in models]
    differ = None in digests or len(set(digests)) > 1
    warnings = []
    if differ:
        by_split: dict[str, list[str]] = {}
        for m, d in zip(models, digests):
            by_split.setdefault(d or "unknown", []).append(m["name"])
        warnings.append("test splits differ, so the metrics are not measured on the same images "
                        "and no best is marked: " + "; ".join(
                            f"split {d[:8]}: {', '.join(names)}" for d, names in by_split.items()))
    rows = []
    for name in sorted(shared, key=lambda n: (not n.startswith("test."), n)):
        kind = flat[0][name][0]
        values = [f[name][1] for f in flat]
        best = None
        if kind == "metric" and not differ:
            top = max(values)
            best = [m["id"] for m, v in zip(models, values) if v == top]
        rows.append({"name": name, "kind": kind, "values": values, "best": best})
    omitted = sorted(set().union(*flat) - shared)
    return {
        "models": [{key: m.get(key) for key in (
            "id", "name", "run_id", "run_uuid", "run_name", "checkpoint_id", "epoch",
            "test_split_digest", "test_images")} for m in models],
        "test_splits_differ": differ,
        "warnings": warnings,
        "metrics": rows,
        "omitted_metrics": omitted,
    }


async def compare_models(conn, model_ids: list[int]) -> dict:
    """The comparison document of `skutrain models compare --json` (and the API), with each
    model's validation curve (val metrics per epoch of its run)."""
    if not MIN_MODELS <= len(model_ids) <= MAX_MODELS:
        raise Refused(f"compare takes {MIN_MODELS} to {MAX_MODELS} models, got {len(model_ids)}")
    if len(set(model_ids)) != len(model_ids):
        raise Refused("compare needs different models; a model id is repeated")
    models = []
    for model_id in model_ids:
        row = await repository.registered_model(conn, model_id)
        if row is None:
            raise NotFound(f"model {model_id} is not registered")
        models.append(dict(row))
    doc = compare_documents(models)
    doc["val_curves"] = {}
    for m in models:
        doc["val_curves"][str(m["id"])] = [
            {key: r[key] for key in ("epoch", "val_recall_at_1", "val_recall_at_5", "val_map",
                                     "val_loss")}
            for r in curves(await metrics_history(conn, m["run_id"]))
        ]
    return doc


def comparison_table(doc: Mapping[str, Any]) -> str:
    """The aligned text table; `*` marks the best value of a metric."""
    names = [m["name"] for m in doc["models"]]
    header = ["metric", *names]
    body = []
    for row in doc["metrics"]:
        cells = []
        for model, value in zip(doc["models"], row["values"]):
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            cells.append(text + ("*" if row["best"] and model["id"] in row["best"] else " "))
        body.append([row["name"], *cells])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [*doc["warnings"]] if doc["warnings"] else []
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(r, widths))).rstrip() for r in [header, *body]]
    if doc["omitted_metrics"]:
        lines.append(f"not in every model (left out): {', '.join(doc['omitted_metrics'])}")
    return "\n".join(lines)
