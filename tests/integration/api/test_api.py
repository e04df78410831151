import asyncio
import json

import httpx

from db import repository
from services.trainer.config import config_json_schema
from tests.integration.api.live import TOKEN, scripted_training, serving


async def test_writes_need_the_token_and_a_refused_write_changes_nothing(api, conn):
    body = {"name": "r", "config": {}}
    assert (await api.post("/runs", json=body)).status_code == 401
    wrong = await api.post("/runs", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert wrong.json()["error_code"] == "unauthorized" and TOKEN not in wrong.text
    # the dashboard's cookie alone is not enough for a write (a cross-site form could send it)
    browser = httpx.AsyncClient(base_url=api.base_url, cookies={"skutrain_token": TOKEN})
    assert (await browser.post("/runs", json=body)).status_code == 401
    assert await conn.fetchval("SELECT count(*) FROM training_runs") == 0
    run_id = await repository.insert_run(conn, "queued", {})
    assert (await api.post(f"/runs/{run_id}/cancel")).status_code == 401
    assert (await api.delete(f"/runs/{run_id}")).status_code == 401
    assert (await repository.get_run(conn, run_id))["status"] == "queued"
    ok = await browser.post("/runs", json=body, headers={"X-Skutrain-Request": "1"})
    assert ok.status_code == 201
    await browser.aclose()
    assert (await api.get("/runs")).status_code == 200  # loopback: reads are open


async def test_reads_need_the_token_unless_bound_to_loopback(db_url):
    async with serving(db_url, reads_need_token=True) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/api/v1/training/runs")).status_code == 401
            assert (await client.get("/api/v1/training/config/schema")).status_code == 401
            page = await client.get("/")
            assert page.status_code == 303 and page.headers["location"] == "/login?next=/"
            good = {"Authorization": f"Bearer {TOKEN}"}
            assert (await client.get("/api/v1/training/runs", headers=good)).status_code == 200
            login = await client.post("/login", data={"token": "wrong", "next": "/"})
            assert login.status_code == 401 and "not the server" in login.text
            login = await client.post("/login", data={"token": TOKEN, "next": "/runs/1"})
            assert login.status_code == 303 and login.headers["location"] == "/runs/1"
            assert "HttpOnly" in login.headers["set-cookie"]
            assert "samesite=strict" in login.headers["set-cookie"].lower()
            assert (await client.get("/")).status_code == 200  # the session cookie


async def test_create_validates_the_config_and_names_every_bad_field(api, conn):
    bad = {"name": "bad", "config": {"training": {"epochs": 0, "batch_size": 32},
                                     "loss": {"type": "focal"}, "split": {"train_ratio": 0.9},
                                     "colour": "red"}}
    response = await api.post("/runs", json=bad, headers=api.auth_headers)
    assert response.status_code == 422
    body = response.json()
    fields = {e["field"] for e in body["errors"]}
    assert {"config.training.epochs", "config.loss.type", "config.colour",
            "config.split"} <= fields, body
    assert body["error_code"] == "invalid_config" and "config.training.epochs" in body["message"]
    no_name = await api.post("/runs", json={"config": {}}, headers=api.auth_headers)
    assert no_name.status_code == 422 and no_name.json()["errors"][0]["field"] == "name"
    assert await conn.fetchval("SELECT count(*) FROM training_runs") == 0

    created = await api.post("/runs", json={"name": "s1", "config": {"model": "dinov2-base",
                             "training": {"epochs": 5}}}, headers=api.auth_headers)
    assert created.status_code == 201
    run = created.json()
    assert run["status"] == "queued" and run["config"]["training"]["epochs"] == 5
    assert (await api.get(f"/runs/{run['id']}")).json()["linked_models"] == []


async def test_list_filters_by_status_and_pages_with_a_cursor(api, conn):
    ids = [await repository.insert_run(conn, f"r{i}", {}) for i in range(7)]
    for run_id in ids[:3]:
        await repository.request_cancel(conn, run_id)
    page = (await api.get("/runs", params={"limit": 3})).json()
    assert [r["id"] for r in page["items"]] == ids[::-1][:3]
    seen = [r["id"] for r in page["items"]]
    while page["next_cursor"]:
        page = (await api.get("/runs", params={"limit": 3, "cursor": page["next_cursor"]})).json()
        seen += [r["id"] for r in page["items"]]
    assert seen == ids[::-1]
    cancelled = (await api.get("/runs", params={"status": "cancelled"})).json()["items"]
    assert sorted(r["id"] for r in cancelled) == ids[:3]
    both = (await api.get("/runs", params=[("status", "cancelled"), ("status", "queued")])).json()
    assert len(both["items"]) == 7
    unknown = await api.get("/runs", params={"status": "done"})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "status"


async def test_cancel_and_missing_runs(api, conn):
    run_id = await repository.insert_run(conn, "c", {})
    cancel = await api.post(f"/runs/{run_id}/cancel", headers=api.auth_headers)
    assert cancel.json() == {"run_id": run_id, "status": "cancelled"}
    missing = await api.post("/runs/999999/cancel", headers=api.auth_headers)
    assert missing.status_code == 404 and "999999" in missing.json()["message"]
    assert (await api.get("/runs/999999")).status_code == 404
    assert (await api.get("/runs/999999/checkpoints")).status_code == 404


async def _read_events(response: httpx.Response, count: int) -> list[tuple[str, dict]]:
    """(event id, data) of the next `count` events of an open stream."""
    events, current = [], {}
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            current["id"] = line[4:]
        elif line.startswith("data: "):
            current["data"] = json.loads(line[6:])
        elif line == "" and "data" in current:
            events.append((current["id"], current["data"]))
            current = {}
            if len(events) == count:
                return events
    raise AssertionError(f"stream ended after {len(events)} events")


async def test_event_stream_is_resumable_with_last_event_id(api, conn):
    other = await repository.insert_run(conn, "other", {})
    run_id = await repository.insert_run(conn, "watched", {})
    async with api.stream("GET", f"/runs/{run_id}/events", params={"after": "0:0"}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        first = await asyncio.wait_for(_read_events(stream, 1), 10)
    assert first[0][1]["type"] == "run.queued" and first[0][1]["run_id"] == run_id
    await repository.request_cancel(conn, run_id)
    await repository.request_cancel(conn, other)
    async with api.stream("GET", f"/runs/{run_id}/events",
                          headers={"Last-Event-ID": first[0][0]}) as stream:
        rest = await asyncio.wait_for(_read_events(stream, 2), 10)
    assert [(d["run_id"], d["seq"], d["type"]) for _, d in rest] == [
        (run_id, 2, "run.cancel_requested"), (run_id, 3, "run.cancelled")]
    txid, event_id = rest[-1][0].split(":")
    assert int(event_id) == rest[-1][1]["id"] and int(txid) > 0
    # a fresh stream starts at the newest event: only what happens next arrives
    async with api.stream("GET", "/events") as stream:
        reader = asyncio.ensure_future(_read_events(stream, 1))
        await asyncio.sleep(0.3)
        new = await repository.insert_run(conn, "new", {})
        (_, data), = await asyncio.wait_for(reader, 10)
    assert (data["run_id"], data["type"]) == (new, "run.queued")
    bad = await api.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "latest"})
    assert bad.status_code == 422


async def test_checkpoints_evaluations_with_product_names(api, catalog_conn):
    conn = catalog_conn
    products = await conn.fetch("SELECT id, product_name FROM products ORDER BY id LIMIT 2")
    run_id = await repository.insert_run(conn, "scripted", {})
    await scripted_training(conn, run_id, [0.4, 0.7, 0.6], test_r1=0.65)
    checkpoints = (await api.get(f"/runs/{run_id}/checkpoints")).json()
    assert [(c["epoch"], c["is_best"]) for c in checkpoints] == [(1, False), (2, True), (3, False)]
    (evaluation,) = (await api.get(f"/runs/{run_id}/evaluations")).json()
    assert evaluation["overall"]["recall_at_1"] == 0.65
    assert evaluation["domain_pairs"]["cutout->real"]["recall_at_1"] == 0.45
    hard = evaluation["hard_cases"]
    assert hard["worst_products"][0]["name"] == products[0]["product_name"]
    assert hard["most_confused_pairs"][0]["names"] == [p["product_name"] for p in products]
    run = (await api.get(f"/runs/{run_id}")).json()
    assert run["status"] == "completed" and run["best_val_recall_at_1"] == 0.7
    history = (await api.get(f"/runs/{run_id}/metrics-history")).json()
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[1]["val_recall_at_1"] == 0.7 and history[0]["loss"]["arcface"] == 1.5
    assert history[2]["lr"] == {"backbone": 1e-4 / 3, "head": 1e-3 / 3}


async def _trained(conn, name: str, val_r1: list[float], test_r1: float) -> tuple[int, dict]:
    run_id = await repository.insert_run(conn, name, {})
    await scripted_training(conn, run_id, val_r1, test_r1=test_r1)
    checkpoints = await repository.run_checkpoints(conn, run_id)
    return run_id, {c["epoch"]: c["id"] for c in checkpoints}


async def test_register_list_and_compare_models(api, catalog_conn):
    conn, auth = catalog_conn, api.auth_headers
    run_a, ckpt_a = await _trained(conn, "a", [0.5, 0.6], 0.62)
    run_b, ckpt_b = await _trained(conn, "b", [0.7, 0.8], 0.71)
    assert (await api.post(f"/checkpoints/{ckpt_a[2]}/register", json={"name": "m-a"})).status_code == 401
    a = await api.post(f"/checkpoints/{ckpt_a[2]}/register", json={"name": "m-a"}, headers=auth)
    b = await api.post(f"/checkpoints/{ckpt_b[2]}/register", json={"name": "m-b"}, headers=auth)
    assert a.status_code == b.status_code == 201
    taken = await api.post(f"/checkpoints/{ckpt_b[2]}/register", json={"name": "m-a"}, headers=auth)
    assert taken.status_code == 409 and "already registered" in taken.json()["message"]
    unevaluated = await api.post(f"/checkpoints/{ckpt_a[1]}/register", json={"name": "m-1"},
                                 headers=auth)
    assert unevaluated.status_code == 409 and "no test evaluation" in unevaluated.json()["message"]
    missing = await api.post("/checkpoints/999999/register", json={"name": "x"}, headers=auth)
    assert missing.status_code == 404
    models = (await api.get("/models")).json()
    assert [(m["name"], m["run_id"], m["epoch"]) for m in models] == [("m-a", run_a, 2), ("m-b", run_b, 2)]
    assert [m["name"] for m in (await api.get(f"/runs/{run_a}")).json()["linked_models"]] == ["m-a"]

    ids = [a.json()["id"], b.json()["id"]]
    doc = (await api.get("/models/compare", params=[("ids", i) for i in ids])).json()
    assert [m["name"] for m in doc["models"]] == ["m-a", "m-b"] and not doc["test_splits_differ"]
    r1 = next(m for m in doc["metrics"] if m["name"] == "test.recall_at_1")
    assert r1["values"] == [0.62, 0.71] and r1["best"] == [ids[1]]
    one = await api.get("/models/compare", params={"ids": ids[0]})
    assert one.status_code == 422 and one.json()["errors"][0]["field"] == "ids"
    six = await api.get("/models/compare", params=[("ids", i) for i in range(1, 7)])
    assert six.status_code == 422
    gone = await api.get("/models/compare", params=[("ids", ids[0]), ("ids", 999999)])
    assert gone.status_code == 404


async def test_delete_is_refused_while_models_link_then_forced(api, catalog_conn):
    conn, auth = catalog_conn, api.auth_headers
    run_id, ckpt = await _trained(conn, "linked", [0.5], 0.5)
    await repository.register_model(conn, ckpt[1], "keep-me")
    refused = await api.delete(f"/runs/{run_id}", headers=auth)
    assert refused.status_code == 409 and "keep-me" in refused.json()["message"]
    row = await repository.get_run(conn, run_id)
    assert row["delete_requested_at"] is None
    assert await conn.fetchval("SELECT count(*) FROM trained_models") == 1
    forced = await api.delete(f"/runs/{run_id}", params={"force": "true"}, headers=auth)
    assert forced.status_code == 200 and forced.json()["status"] == "delete_requested"
    assert await conn.fetchval("SELECT count(*) FROM trained_models") == 0
    assert run_id not in [r["id"] for r in (await api.get("/runs")).json()["items"]]
    assert (await api.delete("/runs/999999", headers=auth)).status_code == 404


async def test_resume_a_cancelled_run_and_refuse_a_queued_one(api, conn):
    auth = api.auth_headers
    queued = await repository.insert_run(conn, "q", {})
    refused = await api.post(f"/runs/{queued}/resume", headers=auth)
    assert refused.status_code == 409 and "only a failed or cancelled run" in refused.json()["message"]
    await repository.request_cancel(conn, queued)
    resumed = await api.post(f"/runs/{queued}/resume", headers=auth)
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    assert (await repository.get_run(conn, queued))["status"] == "queued"


async def test_openapi_and_config_schema_are_served(api):
    schema = (await api.get("/config/schema")).json()
    assert schema == json.loads(json.dumps(config_json_schema()))
    async with httpx.AsyncClient(base_url=str(api.base_url).removesuffix("/api/v1/training/")
                                 .removesuffix("/api/v1/training")) as root:
        document = (await root.get("/openapi.json")).json()
    paths = document["paths"]
    assert document["components"]["securitySchemes"]["SKUTRAIN_API_TOKEN"]["scheme"] == "bearer"
    assert paths["/api/v1/training/runs"]["post"]["security"] == [{"SKUTRAIN_API_TOKEN": []}]
    for path in ("/api/v1/training/runs", "/api/v1/training/runs/{run_id}/events",
                 "/api/v1/training/runs/{run_id}/resume", "/api/v1/training/models/compare",
                 "/api/v1/training/checkpoints/{checkpoint_id}/register"):
        assert path in paths
    assert not any(p.startswith("/ui/") or p == "/login" for p in paths)


async def test_delete_a_checkpoint_refused_while_linked_then_forced(api, catalog_conn):
    conn, auth = catalog_conn, api.auth_headers
    run_id, ckpt = await _trained(conn, "ckpts", [0.5, 0.6], 0.5)
    await repository.register_model(conn, ckpt[2], "uses-epoch-2")
    plain = await api.delete(f"/checkpoints/{ckpt[1]}", headers=auth)
    assert plain.json() == {"checkpoint_id": ckpt[1], "status": "delete_requested"}
    refused = await api.delete(f"/checkpoints/{ckpt[2]}", headers=auth)
    assert refused.status_code == 409 and "uses-epoch-2" in refused.json()["message"]
    listed = {c["epoch"]: c["delete_requested_at"] for c in
              (await api.get(f"/runs/{run_id}/checkpoints")).json()}
    assert listed[1] is not None and listed[2] is None
    forced = await api.delete(f"/checkpoints/{ckpt[2]}", params={"force": "true"}, headers=auth)
    assert forced.status_code == 200
    assert await conn.fetchval("SELECT count(*) FROM trained_models") == 0
    assert (await api.delete("/checkpoints/999999", headers=auth)).status_code == 404


async def test_oversized_and_hostile_bodies_get_short_answers(api, conn):
    huge = await api.post("/runs", headers={**api.auth_headers, "Content-Type": "application/json"},
                          content=b'{"name": "x", "config": {"' + b"k" * 2_000_000 + b'": 1}}')
    assert huge.status_code == 413 and huge.json()["error_code"] == "too_large"
    many = {f"unknown_{i}_{'x' * 5000}": i for i in range(100)}
    response = await api.post("/runs", json={"name": "x", "config": many}, headers=api.auth_headers)
    assert response.status_code == 422 and len(response.json()["errors"]) == 20
    assert len(response.content) < 20_000
    nested = await api.post("/runs", content=b'{"name": "x", "config": {"d": ' + b"[" * 20000
                            + b"]" * 20000 + b"}}",
                            headers={**api.auth_headers, "Content-Type": "application/json"})
    assert nested.status_code == 400 and nested.json()["error_code"] == "bad_request"
    assert await conn.fetchval("SELECT count(*) FROM training_runs") == 0
