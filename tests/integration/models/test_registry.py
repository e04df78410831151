"""Registry and on-demand evaluation on a really trained tiny model."""
from __future__ import annotations

import asyncio
import json

import pytest

from db import repository
from services import cli
from services.common.errors import NotFound, Refused
from services.models import registry
from services.models.evaluate import evaluate_checkpoint

pytestmark = pytest.mark.slow


async def _checkpoints(conn, run_id):
    return await repository.run_checkpoints(conn, run_id)


async def test_end_of_run_evaluation_is_stored_with_depth(trained, mconn):
    (evaluation,) = await mconn.fetch(
        "SELECT * FROM evaluations WHERE run_id = $1 AND NOT on_demand", trained.run_id)
    assert evaluation["split_digest"] and evaluation["num_images"] > 0
    pairs = evaluation["domain_pairs"]
    assert {"real->synthetic", "synthetic->real", "cutout->real"} <= set(pairs)
    assert all(v["num_queries"] > 0 for v in pairs.values())
    worst = evaluation["hard_cases"]["worst_queries"]
    assert worst and all(w["product_name"].startswith("Product") or w["product_name"]
                         for w in worst)
    assert all(len(w["top"]) == 10 for w in worst)
    assert all(w["label_info"]["name"] == w["product_name"] for w in worst)


async def test_register_refuses_an_unevaluated_checkpoint_and_says_how(trained, mconn):
    unevaluated = next(c for c in await _checkpoints(mconn, trained.run_id) if not c["is_best"])
    with pytest.raises(Refused, match=rf"skutrain evaluate {unevaluated['id']}"):
        await registry.register(mconn, unevaluated["id"], "never")
    with pytest.raises(NotFound):
        await registry.register(mconn, 10**9, "missing")
    assert await mconn.fetchval("SELECT count(*) FROM trained_models WHERE name = 'never'") == 0


async def test_on_demand_evaluation_then_register(trained, mconn):
    ckpt = next(c for c in await _checkpoints(mconn, trained.run_id) if not c["is_best"])
    evaluation_id, doc = await evaluate_checkpoint(
        mconn, ckpt["id"], storage=trained.storage, cache_dir=trained.data_dir / "cache")
    stored = await mconn.fetchrow("SELECT * FROM evaluations WHERE id = $1", evaluation_id)
    assert stored["on_demand"] and stored["checkpoint_id"] == ckpt["id"]
    assert stored["overall"] == doc["overall"]
    end_of_run = await mconn.fetchrow(
        "SELECT * FROM evaluations WHERE run_id = $1 AND NOT on_demand", trained.run_id)
    assert stored["split_digest"] == end_of_run["split_digest"]
    events = [e for e in await repository.run_events(mconn, trained.run_id)
              if e["type"] == "evaluation.recorded"]
    assert events[-1]["payload"]["evaluation_id"] == evaluation_id

    val_id, _ = await evaluate_checkpoint(mconn, ckpt["id"], split="val", storage=trained.storage,
                                          cache_dir=trained.data_dir / "cache")
    assert await mconn.fetchval("SELECT split FROM evaluations WHERE id = $1", val_id) == "val"

    model = await registry.register(mconn, ckpt["id"], "epoch-one")
    assert model["evaluation_id"] == evaluation_id  # the latest *test* evaluation
    assert model["test_metrics"] == doc["overall"]
    assert model["cross_domain_metrics"]["pairs"] == doc["domain_pairs"]
    assert model["per_category"] == doc["per_category"]
    with pytest.raises(Refused, match="already registered"):
        await registry.register(mconn, ckpt["id"], "epoch-one")
    listed = await registry.list_models(mconn)
    assert any(m["id"] == model["id"] and m["run_uuid"] == model["run_uuid"] for m in listed)
    registered = [e for e in await repository.run_events(mconn, trained.run_id)
                  if e["type"] == "model.registered"]
    assert registered[-1]["payload"]["model_id"] == model["id"]


async def test_evaluation_of_the_best_checkpoint_repeats_the_end_of_run_numbers(trained, mconn):
    best = next(c for c in await _checkpoints(mconn, trained.run_id) if c["is_best"])
    _, doc = await evaluate_checkpoint(mconn, best["id"], storage=trained.storage,
                                       cache_dir=trained.data_dir / "cache")
    run = await repository.get_run(mconn, trained.run_id)
    for key, value in run["test_metrics"].items():
        assert doc["overall"][key] == pytest.approx(value, abs=1e-5), key


async def test_models_and_evaluate_commands(trained, mconn, cli_env, capsys):
    ckpt = next(c for c in await _checkpoints(mconn, trained.run_id) if not c["is_best"])
    if await mconn.fetchval("SELECT 1 FROM trained_models WHERE checkpoint_id = $1", ckpt["id"]):
        ckpt = next(c for c in await _checkpoints(mconn, trained.run_id) if c["is_best"])
    assert await asyncio.to_thread(
        cli.main, ["evaluate", str(ckpt["id"]), "--split", "val"]) == 0
    assert "(val): recall_at_1=" in capsys.readouterr().out
    # a val evaluation is not a test evaluation: registering needs the test one
    if not await mconn.fetchval("SELECT 1 FROM evaluations WHERE checkpoint_id = $1 "
                                "AND split = 'test'", ckpt["id"]):
        assert await asyncio.to_thread(
            cli.main, ["models", "register", str(ckpt["id"]), "cli-model"]) == 1
        assert f"skutrain evaluate {ckpt['id']}" in capsys.readouterr().err
        assert await asyncio.to_thread(cli.main, ["evaluate", str(ckpt["id"])]) == 0
    assert await asyncio.to_thread(
        cli.main, ["models", "register", str(ckpt["id"]), "cli-model"]) == 0
    shown = capsys.readouterr().out
    assert "'cli-model'" in shown and "real_to_synthetic" in shown
    model_id = await mconn.fetchval("SELECT id FROM trained_models WHERE name = 'cli-model'")
    assert await asyncio.to_thread(cli.main, ["models", "list"]) == 0
    assert any(line.split()[:2] == [str(model_id), "cli-model"]
               for line in capsys.readouterr().out.splitlines())
    assert await asyncio.to_thread(cli.main, ["models", "show", str(model_id), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["checkpoint_id"] == ckpt["id"] and doc["test_metrics"]["recall_at_1"] is not None


async def test_delete_guards_cover_registered_models(trained, mconn):
    """A registered model's checkpoint is not deleted without force; forced, the model leaves
    the extraction list."""
    best = await mconn.fetchval("SELECT best_checkpoint_id FROM training_runs WHERE id = $1",
                                trained.run_id)
    model = await registry.register(mconn, best, "guarded")
    with pytest.raises(Exception, match="guarded") as refused:
        await mconn.fetchval("SELECT request_checkpoint_delete($1)", best)
    assert refused.value.sqlstate == "SK010"
    assert any(m["id"] == model["id"] for m in await registry.list_models(mconn))
    await mconn.fetchval("SELECT request_checkpoint_delete($1, true)", best)
    assert all(m["id"] != model["id"] for m in await registry.list_models(mconn))
