"""The database refuses config documents no service can decode, at INSERT and UPDATE."""
from __future__ import annotations

import json
import time

import asyncpg
import pytest

INSERT = "INSERT INTO training_runs (name, config) VALUES ($1, $2::text::jsonb) RETURNING id"


def nested(depth: int, leaf: str = "1") -> str:
    return '{"a":' * depth + leaf + "}" * depth


@pytest.mark.parametrize("document, message", [
    (nested(5000), "nested more than 8 levels"),
    ('{"training": ' + nested(3000) + "}", "nested more than 8 levels"),
    ('[' * 5000 + ']' * 5000, "nested more than 8 levels"),
    ('{"training": {"epochs": ' + "9" * 5001 + "}}", "outside the 64-bit integer range"),
    ('{"data_source": {"dataset_id": 100000000000000000000}}', "outside the 64-bit integer range"),
    ('{"a": [[[[[[[[[1]]]]]]]]]}', "nested more than 8 levels"),
    ('{"' + "k" * 1_000_000 + '": 1}', "the limit is 262144 bytes"),
])
async def test_hostile_documents_are_refused_with_the_limit(conn, document, message):
    started = time.perf_counter()
    with pytest.raises(asyncpg.CheckViolationError) as info:
        await conn.fetchval(INSERT, "hostile", document)
    assert message in str(info.value)
    assert time.perf_counter() - started < 2.0
    assert await conn.fetchval("SELECT count(*) FROM training_runs") == 0


async def test_real_configs_and_limits_pass(conn):
    full = {"data_source": {"type": "selected", "product_ids": list(range(1, 20_000))},
            "training": {"early_stopping": {"patience": 3}, "seed": 2**63 - 1}}
    assert await conn.fetchval(INSERT, "ok", json.dumps(full))
    assert await conn.fetchval(INSERT, "deep-ok", nested(8))
    assert await conn.fetchval(INSERT, "defaults", "{}")


async def test_updates_are_held_to_the_same_limits(conn):
    run_id = await conn.fetchval(INSERT, "ok", "{}")
    with pytest.raises(asyncpg.CheckViolationError, match="nested more than"):
        await conn.execute("UPDATE training_runs SET config = $2::text::jsonb WHERE id = $1",
                           run_id, nested(100))


@pytest.mark.parametrize("name", ["", "x" * 201])
async def test_run_names_have_a_length(conn, name):
    with pytest.raises(asyncpg.CheckViolationError, match="ck_training_runs_name_length"):
        await conn.fetchval(INSERT, name, "{}")


async def test_stored_error_messages_are_redacted_and_capped(conn):
    from db import repository
    from services.common.logging import MAX_TEXT

    await conn.fetchval(INSERT, "r", "{}")
    [run] = await repository.claim_runs(conn, "test", 1, 60)
    message = "postgresql://u:hunter2@h/db " + "x" * 100_000
    assert await repository.finish_run(conn, run.id, run.lease_epoch, "failed",
                                       error_code="launch_failed", error_message=message)
    stored = await conn.fetchval("SELECT error_message FROM training_runs WHERE id = $1", run.id)
    assert len(stored) < MAX_TEXT + 40 and stored.endswith("characters]")
    assert "hunter2" not in stored
