"""Metrics history (view, table, PNG) and model comparison (aligned table, best marks, a flag
for different test splits, PNG, --json), on really trained tiny models."""
from __future__ import annotations

import asyncio
import json

import pytest

from db import repository
from services import cli
from services.common.errors import Refused
from services.models import registry
from services.models.compare import compare_documents, compare_models
from services.models.evaluate import evaluate_checkpoint
from services.models.history import metrics_history
from tests.integration.models.conftest import TINY_RUN, train_run

pytestmark = pytest.mark.slow
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def test_metrics_history_has_one_row_per_completed_epoch(trained, mconn):
    history = await metrics_history(mconn, trained.run_id)
    assert [(r["epoch"], r["attempt"]) for r in history] == [(1, 1), (2, 1)]
    for row in history:
        assert row["loss_total"] > 0 and row["images_per_second"] > 0
        assert 0.0 <= row["val_recall_at_1"] <= 1.0
        assert row["lr"] and all(v > 0 for v in row["lr"].values())
    json.dumps(history)  # JSON-ready for the API


async def test_runs_report_prints_the_table_and_writes_a_png(trained, cli_env, capsys, tmp_path):
    png = tmp_path / "curves.png"
    assert await asyncio.to_thread(
        cli.main, ["runs", "report", str(trained.run_id), "--png", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["epoch", "att", "loss"]
    assert [line.split()[0] for line in lines[1:3]] == ["1", "2"]
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000


async def _register(conn, checkpoint_id, name, storage, cache_dir):
    if not await conn.fetchval("SELECT 1 FROM evaluations WHERE checkpoint_id = $1 AND "
                               "split = 'test'", checkpoint_id):
        await evaluate_checkpoint(conn, checkpoint_id, storage=storage, cache_dir=cache_dir)
    return (await registry.register(conn, checkpoint_id, name))["id"]


async def test_compare_models_on_one_split_and_on_different_splits(trained, mconn, cli_env,
                                                                    capsys, tmp_path):
    cache = trained.data_dir / "cache"
    first, second = await repository.run_checkpoints(mconn, trained.run_id)
    a = await _register(mconn, first["id"], "cmp-epoch-1", trained.storage, cache)
    b = await _register(mconn, second["id"], "cmp-epoch-2", trained.storage, cache)

    same = await compare_models(mconn, [a, b])
    assert not same["test_splits_differ"] and not same["warnings"]
    names = [m["name"] for m in same["metrics"]]
    n_test = sum(n.startswith("test.") for n in names)
    assert all(n.startswith("test.") for n in names[:n_test])  # the test metrics come first
    assert {"test.recall_at_1", "test.recall_at_10", "real->synthetic.recall_at_1"} <= set(names)
    for row in same["metrics"]:
        if row["kind"] == "metric":
            assert row["best"] and all(
                v == max(row["values"]) for m, v in zip(same["models"], row["values"])
                if m["id"] in row["best"])
    assert set(same["val_curves"]) == {str(a), str(b)}

    # a second run with another split seed: its test set holds other products
    other_config = json.loads(json.dumps(TINY_RUN))
    other_config["split"] = {"seed": 7}
    other_run = await asyncio.to_thread(train_run, trained.db_url, trained.storage,
                                        trained.data_dir, other_config)
    best = await mconn.fetchval("SELECT best_checkpoint_id FROM training_runs WHERE id = $1",
                                other_run)
    c = await _register(mconn, best, "cmp-other-split", trained.storage, cache)
    mixed = await compare_models(mconn, [a, b, c])
    assert mixed["test_splits_differ"]
    assert "test splits differ" in mixed["warnings"][0]
    assert "cmp-other-split" in mixed["warnings"][0]
    assert all(row["best"] is None for row in mixed["metrics"])

    png = tmp_path / "compare.png"
    assert await asyncio.to_thread(
        cli.main, ["models", "compare", str(a), str(b), str(c), "--json", "--png", str(png)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["test_splits_differ"] and [m["id"] for m in doc["models"]] == [a, b, c]
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert await asyncio.to_thread(cli.main, ["models", "compare", str(a), str(b)]) == 0
    table = capsys.readouterr().out
    assert "cmp-epoch-1" in table.splitlines()[0] and "*" in table

    with pytest.raises(Refused):
        await compare_models(mconn, [a])
    with pytest.raises(Refused):
        await compare_models(mconn, [a, a])


def test_only_metrics_every_model_has_are_compared():
    def model(i, digest, test, pairs=None):
        return {"id": i, "name": f"m{i}", "test_split_digest": digest, "test_metrics": test,
                "cross_domain_metrics": {"pairs": pairs or {}}}

    doc = compare_documents([
        model(1, "d", {"recall_at_1": 0.5, "recall_at_5": 0.7, "map": 0.4, "num_queries": 10},
              {"real->synthetic": {"recall_at_1": 0.2}}),
        model(2, "d", {"recall_at_1": 0.6, "recall_at_10": 0.9, "map": 0.4, "num_queries": 10}),
    ])
    rows = {r["name"]: r for r in doc["metrics"]}
    assert set(rows) == {"test.recall_at_1", "test.map", "test.num_queries"}
    assert rows["test.recall_at_1"]["best"] == [2]
    assert rows["test.map"]["best"] == [1, 2]  # a tie marks both
    assert rows["test.num_queries"]["best"] is None  # counts are not ranked
    assert doc["omitted_metrics"] == ["real->synthetic.recall_at_1", "test.recall_at_10",
                                      "test.recall_at_5"]
