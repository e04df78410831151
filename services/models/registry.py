"""The model registry: register a checkpoint as a model (SQL register_model refuses one
without a test evaluation), list the models usable for extraction, show one."""
from __future__ import annotations

from typing import Any

from db import repository
from services.common.errors import NotFound


def _json_ready(row) -> dict[str, Any]:
    doc = dict(row)
    for key, value in doc.items():
        if hasattr(value, "isoformat"):
            doc[key] = value.isoformat()
    return doc


async def register(conn, checkpoint_id: int, name: str) -> dict[str, Any]:
    """Register the checkpoint; the new model's document."""
    model_id = await repository.register_model(conn, checkpoint_id, name)
    return await model_document(conn, model_id)


async def model_document(conn, model_id: int) -> dict[str, Any]:
    row = await repository.registered_model(conn, model_id)
    if row is None:
        raise NotFound(f"model {model_id} is not registered; `skutrain models list` shows the "
                       "registered ones")
    doc = _json_ready(row)
    doc.pop("config")
    return doc


async def list_models(conn) -> list[dict[str, Any]]:
    """The extraction_models view: active models whose checkpoint is not being deleted."""
    return [_json_ready(r) for r in await repository.registered_models(conn)]


def model_summary(doc: dict[str, Any]) -> str:
    """`skutrain models show` text: identity, test metrics, cross-domain, categories."""
    test = doc.get("test_metrics") or {}
    lines = [f"model {doc['id']} {doc['name']!r}: run {doc['run_id']} ({doc['run_uuid']}) "
             f"epoch {doc['epoch']}, checkpoint {doc['checkpoint_id']}",
             f"test split {str(doc.get('test_split_digest'))[:12]} "
             f"({doc.get('test_images')} images): " + _scores(test)]
    cross = doc.get("cross_domain_metrics") or {}
    for name in ("real_to_synthetic", "synthetic_to_real"):
        if cross.get(name):
            lines.append(f"  {name}: {_scores(cross[name])}")
    for pair, values in sorted((cross.get("pairs") or {}).items()):
        lines.append(f"  {pair}: {_scores(values)}")
    for category, values in sorted((doc.get("per_category") or {}).items()):
        lines.append(f"  category {category}: {_scores(values)}")
    return "\n".join(lines)


def _scores(values: dict[str, Any]) -> str:
    parts = [f"{k}={v:.4f}" for k, v in values.items()
             if isinstance(v, float) and (k.startswith("recall") or k.startswith("map"))]
    count = values.get("num_queries", values.get("count"))
    return " ".join(parts) + (f" (n={count})" if count is not None else "")
