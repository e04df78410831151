"""Fuzz: hostile documents and generated configs inserted beside good runs while a real
dispatcher process (noop launcher) runs. Every document is refused at INSERT or its run ends
with a specific error_code within seconds; every good run is launched once; the dispatcher keeps
answering SIGTERM within a second and its CPU time stays bounded."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import asyncpg
import psutil
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from db import repository

SPECIFIC_CODES = {
    "invalid_config", "insufficient_products", "insufficient_images", "insufficient_labels",
    "dataset_not_found", "products_not_found", "model_unavailable", "memory_budget_exceeded",
}
INSERT = "INSERT INTO training_runs (name, config) VALUES ($1, $2::text::jsonb) RETURNING id"


def nested(depth: int, key: str = "a") -> str:
    return f'{{"{key}":' * depth + "1" + "}" * depth


HOSTILE: dict[str, str] = {
    "deep_5000": nested(5000),
    "deep_3000_under_training": '{"training": ' + nested(3000) + "}",
    "deep_arrays": '{"evaluation": {"k_values": ' + "[" * 3000 + "]" * 3000 + "}}",
    "epochs_5001_digits": '{"training": {"epochs": ' + "9" * 5001 + "}}",
    "float_5001_digits": '{"training": {"learning_rate": 0.' + "1" * 5001 + "}}",
    "key_1mb": '{"' + "k" * 1_000_000 + '": 1}',
    "value_1mb": '{"model_path": "' + "p" * 1_000_000 + '"}',
    "model_path_100kb": '{"model_path": "' + "/x" * 50_000 + '"}',
    "model_path_name_too_long": json.dumps({"model_path": "/m/" + "n" * 300}),
    "model_path_missing": json.dumps({"model_path": "/nonexistent/\u202eevil"}),
    "dataset_id_1e20": '{"data_source": {"type": "dataset", "dataset_id": 100000000000000000000}}',
    "dataset_id_bigint_max": json.dumps({"data_source": {"type": "dataset",
                                                         "dataset_id": 2**63 - 1}}),
    "product_id_1e20": '{"data_source": {"type": "selected", "product_ids": [1, 1e20]}}',
    "product_ids_missing": json.dumps({"data_source": {"type": "selected",
                                                       "product_ids": [1, 2, 999999]}}),
    "product_ids_30001": json.dumps({"data_source": {"type": "selected",
                                                     "product_ids": list(range(1, 30_002))}}),
    "seed_negative": json.dumps({"training": {"seed": -1}}),
    "seed_1e30": '{"training": {"seed": 1000000000000000000000000000000}}',
    "seed_2_32": json.dumps({"split": {"seed": 2**32}}),
    "nan_string": json.dumps({"training": {"learning_rate": "NaN"}}),
    "infinity_string": json.dumps({"training": {"warmup_epochs": "Infinity"}}),
    "huge_float": '{"loss": {"arcface_scale": 1e300}}',
    "wrong_types": json.dumps({"training": {"epochs": [1], "batch_size": {"a": 1}},
                               "sampler": "pk", "model": 7}),
    "unicode_keys": json.dumps({"trаining": {}, "\u202emodel": "x", "\U0001F600": True}),
    "nul_in_string": '{"model": "dinov2\\u0000base"}',
    "not_an_object": "[1, 2, 3]",
    "null_document": "null",
    "string_document": '"dinov2-base"',
    "pk_2x1000_semihard": json.dumps({"sampler": {"p": 2, "k": 1000},
                                      "training": {"batch_size": 2000}}),
    "pk_2x1000_batch_hard": json.dumps({"sampler": {"p": 2, "k": 1000},
                                        "training": {"batch_size": 2000},
                                        "loss": {"miner": "batch_hard"}}),
    "p_above_labels": json.dumps({"sampler": {"p": 10, "k": 4}, "training": {"batch_size": 40}}),
    "many_errors": json.dumps({f"extra_{i}": i for i in range(5000)}),
}

# Hostile-looking but valid: a float of 5,001 digits is just 0.111..., JSON null is the defaults
VALID_HOSTILE = {"float_5001_digits", "null_document"}  # JSON null: the defaults
GOOD = [{}, {"training": {"epochs": 2}}, {"model": "tiny-dinov2", "training": {"image_size": 64}},
        {"loss": {"miner": "batch_hard"}}, {"split": {"seed": 2**32 - 1}}]

_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["NaN", "Infinity", "-1", "1e999", "dinov2-base", "pk", "dataset"]),
)
_section_keys = {
    "training": ["epochs", "batch_size", "learning_rate", "seed", "image_size", "amp", "x"],
    "sampler": ["type", "p", "k"],
    "data_source": ["type", "dataset_id", "product_ids"],
    "loss": ["type", "miner", "triplet_margin"],
    "split": ["train_ratio", "seed"],
    "image_config": ["image_types", "frame_interval"],
}
_values = st.one_of(_leaf, st.lists(_leaf, max_size=3))
generated_config = st.fixed_dictionaries({}, optional={
    **{section: st.dictionaries(st.sampled_from(keys), _values, max_size=3)
       for section, keys in _section_keys.items()},
    "model": _leaf, "model_path": _leaf,
})


async def _insert_all(conn, documents: dict[str, str]) -> tuple[dict[str, int], list[str]]:
    ids, refused = {}, []
    for name, text in documents.items():
        try:
            ids[name] = await conn.fetchval(INSERT, name[:200], text)
        except asyncpg.PostgresError as exc:
            assert exc.sqlstate[:2] in ("22", "23", "54"), (name, exc.sqlstate, str(exc)[:200])
            refused.append(name)
    return ids, refused


def _start_dispatcher(db_url: str) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": db_url, "SKUTRAIN_LOG_LEVEL": "WARNING",
           "SKUTRAIN_WORKER_MEMORY_BYTES": str(16 * 1024**3)}
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "dispatcher", "--launcher", "noop",
         "--poll-interval", "0.2", "--batch-size", "10"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def _settled(conn, ids: list[int], timeout: float) -> list[asyncpg.Record]:
    deadline = time.monotonic() + timeout
    while True:
        rows = await conn.fetch(
            "SELECT id, name, status, error_code, error_message, attempt, launched_attempt "
            "FROM training_runs WHERE id = ANY($1::bigint[])", ids)
        done = [r for r in rows if r["status"] == "failed" or r["launched_attempt"] is not None]
        if len(done) == len(ids) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.1)


def generated_configs(count: int = 60) -> list[dict]:
    """`count` configs drawn by hypothesis (deterministic: derandomized, no shrinking)."""
    drawn: list[dict] = []

    @settings(max_examples=count, deadline=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), database=None)
    @given(generated_config)
    def draw(config):
        drawn.append(config)

    draw()
    return drawn


def test_hostile_and_generated_configs_beside_good_runs(db_url):
    asyncio.run(_fuzz(db_url, generated_configs()))


async def _fuzz(db_url: str, generated: list[dict]) -> None:
    from tests.conftest import catalog_rows

    conn = await repository.connect(db_url)
    dispatcher = _start_dispatcher(db_url)
    try:
        if not await conn.fetchval("SELECT count(*) FROM products"):
            await repository.insert_catalog(conn, catalog_rows())
        documents = dict(HOSTILE)
        documents.update({f"gen_{i}": json.dumps(c) for i, c in enumerate(generated)})
        for i, good in enumerate(GOOD * 2):
            documents[f"good_{i}"] = json.dumps(good)
        started = time.monotonic()
        ids, refused = await _insert_all(conn, documents)
        rows = await _settled(conn, list(ids.values()), timeout=30)
        settle_seconds = time.monotonic() - started
        by_name = {r["name"]: r for r in rows}
        for name, run_id in ids.items():
            row = by_name[name]
            if name.startswith("good_") or name in VALID_HOSTILE:
                assert row["launched_attempt"] == row["attempt"] == 1, (name, dict(row))
                events = [e["type"] for e in await repository.run_events(conn, run_id)]
                assert events.count("run.launched") == 1, (name, events)
            elif row["launched_attempt"] is None:
                assert row["status"] == "failed", (name, dict(row))
                assert row["error_code"] in SPECIFIC_CODES, (name, row["error_code"],
                                                             row["error_message"][:300])
                assert len(row["error_message"]) < 5000, name
            else:  # a generated config that is valid and fits: launched once
                assert name.startswith("gen_") and row["attempt"] == 1, (name, dict(row))
        for name in ("deep_5000", "deep_3000_under_training", "epochs_5001_digits", "key_1mb",
                     "dataset_id_1e20", "seed_1e30", "nul_in_string"):
            assert name in refused, name
        assert by_name["pk_2x1000_semihard"]["error_code"] == "invalid_config"
        assert by_name["pk_2x1000_batch_hard"]["error_code"] == "memory_budget_exceeded"
        assert by_name["p_above_labels"]["error_code"] == "insufficient_labels"
        assert by_name["product_ids_missing"]["error_code"] == "products_not_found"
        assert by_name["dataset_id_bigint_max"]["error_code"] == "dataset_not_found"
        assert by_name["model_path_missing"]["error_code"] == "model_unavailable"
        assert by_name["seed_negative"]["error_code"] == "invalid_config"
        assert settle_seconds < 30
        assert dispatcher.poll() is None, dispatcher.stderr.read().decode()[-3000:]
        cpu = psutil.Process(dispatcher.pid).cpu_times()
        assert cpu.user + cpu.system < 20, cpu  # startup imports included
        signalled = time.monotonic()
        dispatcher.send_signal(signal.SIGTERM)
        assert dispatcher.wait(timeout=5) == 0
        assert time.monotonic() - signalled < 1.0
        outcomes = Counter(r["error_code"] or "launched" for r in rows)
        assert outcomes["launched"] > len(GOOD) * 2 and outcomes["invalid_config"] > 20
        print(f"fuzz: {dict(outcomes)}")
        print(f"fuzz: {len(documents)} documents, {len(refused)} refused at INSERT, "
              f"{len(ids)} runs settled in {settle_seconds:.1f}s, dispatcher CPU "
              f"{cpu.user + cpu.system:.1f}s")
    finally:
        if dispatcher.poll() is None:
            dispatcher.kill()
            dispatcher.wait()
        await conn.close()
