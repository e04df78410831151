"""`/api/v1/training/`: the JSON API. Every write calls the same SQL functions as the CLI
(db/queries.sql through db/repository.py), so the queue, the guards and the fencing apply."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from db import repository
from services.api.auth import require_read, require_write
from services.api.stream import event_stream, parse_event_id
from services.common.logging import cap_text
from services.trainer.config import RunConfig, config_json_schema

API_PREFIX = "/api/v1/training"
RUN_STATUSES = ("queued", "claimed", "running", "completed", "failed", "cancelled")
COMPARE_MIN, COMPARE_MAX = 2, 5
MAX_ERRORS, MAX_ERROR_TEXT = 20, 300

reads = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_read)])
writes = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_write)])


class RunCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    config: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=-1000, le=1000)


class ModelRegister(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class FieldErrors(Exception):
    """A 422 whose body names every bad field: {error_code, message, errors: [{field, message}]}."""

    def __init__(self, code: str, errors: list[dict[str, str]]):
        super().__init__(code)
        self.code, self.errors = code, errors

    def response(self) -> JSONResponse:
        message = "; ".join(f"{e['field']}: {e['message']}" for e in self.errors)
        return JSONResponse(status_code=422, content={
            "error_code": self.code, "message": message, "errors": self.errors})


def pydantic_field_errors(exc: ValidationError, prefix: tuple[str, ...]) -> list[dict[str, str]]:
    """One {field, message} per problem, capped in number and length (a megabyte key must not
    make a megabyte answer)."""
    return [{"field": cap_text(".".join(str(p) for p in (*prefix, *err["loc"])), MAX_ERROR_TEXT),
             "message": cap_text(err["msg"].removeprefix("Value error, "), MAX_ERROR_TEXT)}
            for err in exc.errors(include_input=False, include_url=False)[:MAX_ERRORS]]


def _pool(request: Request):
    return request.app.state.pool


def _json(value: Any) -> Any:
    return jsonable_encoder(value)


async def _run_or_404(conn, run_id: int) -> dict:
    row = await repository.get_run(conn, run_id)
    if row is None:
        raise HTTPException(404, detail=f"training run {run_id} does not exist")
    return dict(row)


# -- runs ------------------------------------------------------------------------------------
@reads.get("/runs")
async def list_runs(request: Request, status: list[str] | None = Query(default=None),
                    limit: int = Query(default=50, ge=1, le=500),
                    cursor: int | None = Query(default=None, ge=1,
                                               description="next_cursor of the previous page")):
    """Runs newest first; filter by one or more `status`; page with `cursor`."""
    unknown = sorted(set(status or ()) - set(RUN_STATUSES))
    if unknown:
        raise FieldErrors("invalid_request", [{"field": "status", "message":
                          f"unknown status {', '.join(unknown)}; use one of {', '.join(RUN_STATUSES)}"}])
    async with _pool(request).acquire() as conn:
        rows = await repository.list_runs_page(conn, statuses=status, before_id=cursor, limit=limit)
    items = [dict(r) for r in rows]
    next_cursor = str(items[-1]["id"]) if len(items) == limit else None
    return _json({"items": items, "next_cursor": next_cursor})


@writes.post("/runs", status_code=201)
async def create_run(request: Request, body: RunCreate):
    """Queue a run. The config is checked against the run config model first; a bad one gets a
    422 naming every field (the queue would otherwise fail the run with invalid_config)."""
    try:
        RunConfig.model_validate(body.config)
    except ValidationError as exc:
        raise FieldErrors("invalid_config", pydantic_field_errors(exc, ("config",))) from exc
    except RecursionError:
        raise FieldErrors("invalid_config", [{"field": "config",
                                              "message": "nested too deeply to read"}]) from None
    async with _pool(request).acquire() as conn:
        run_id = await repository.insert_run(conn, body.name, body.config, body.priority)
        return _json(await _run_or_404(conn, run_id))


@reads.get("/runs/{run_id}")
async def get_run(request: Request, run_id: int):
    async with _pool(request).acquire() as conn:
        run = await _run_or_404(conn, run_id)
        run["linked_models"] = [dict(r) for r in await repository.run_linked_models(conn, run_id)]
    return _json(run)


@writes.delete("/runs/{run_id}")
async def delete_run(request: Request, run_id: int, force: bool = False):
    """Delete a run (request_delete). Refused with 409 while a trained model links to one of
    its checkpoints, unless `force`."""
    async with _pool(request).acquire() as conn:
        return {"run_id": run_id, "status": await repository.request_delete(conn, run_id, force)}


@writes.post("/runs/{run_id}/cancel")
async def cancel_run(request: Request, run_id: int):
    async with _pool(request).acquire() as conn:
        return {"run_id": run_id, "status": await repository.request_cancel(conn, run_id)}


@writes.post("/runs/{run_id}/resume")
async def resume_run(request: Request, run_id: int):
    """Queue a failed or cancelled run again from its last checkpoint (request_resume)."""
    async with _pool(request).acquire() as conn:
        return {"run_id": run_id, "status": await repository.request_resume(conn, run_id)}


@reads.get("/runs/{run_id}/checkpoints")
async def run_checkpoints(request: Request, run_id: int):
    async with _pool(request).acquire() as conn:
        await _run_or_404(conn, run_id)
        return _json([dict(r) for r in await repository.run_checkpoints_for_api(conn, run_id)])


@reads.get("/runs/{run_id}/evaluations")
async def run_evaluations(request: Request, run_id: int):
    """Test evaluations; hard cases carry product names when the run classifies by product."""
    async with _pool(request).acquire() as conn:
        await _run_or_404(conn, run_id)
        return _json(await evaluations_with_names(conn, run_id))


async def evaluations_with_names(conn, run_id: int) -> list[dict]:
    names = await repository.run_label_names(conn, run_id)
    out = []
    for row in await repository.run_evaluations_for_api(conn, run_id):
        evaluation = dict(row)
        hard = evaluation.get("hard_cases") or {}
        for case in hard.get("worst_products") or []:
            case["name"] = names.get(str(case["label"]), str(case["label"]))
        for pair in hard.get("most_confused_pairs") or []:
            pair["names"] = [names.get(str(label), str(label)) for label in pair["labels"]]
        out.append(evaluation)
    return out


@reads.get("/runs/{run_id}/metrics-history")
async def run_metrics_history(request: Request, run_id: int):
    """One row per completed epoch: loss components, learning rates, validation metrics."""
    from services.models.history import metrics_history

    async with _pool(request).acquire() as conn:
        await _run_or_404(conn, run_id)
        return _json(await metrics_history(conn, run_id))


def _stream(request: Request, run_id: int | None, last_event_id: str | None,
            after: str | None) -> StreamingResponse:
    try:
        cursor = parse_event_id(last_event_id) or parse_event_id(after)
    except ValueError as exc:
        raise FieldErrors("invalid_request", [{"field": "Last-Event-ID", "message": str(exc)}])
    return StreamingResponse(_events_from(request, cursor, run_id),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events_from(request: Request, cursor, run_id: int | None):
    pool = _pool(request)
    if cursor is None:
        async with pool.acquire() as conn:
            cursor = await repository.events_head(conn)
    async def finished() -> bool:
        return request.app.state.closing or await request.is_disconnected()

    async for message in event_stream(pool, cursor, run_id=run_id, finished=finished,
                                      poll=request.app.state.stream_poll):
        yield message


@reads.get("/runs/{run_id}/events")
async def run_events(request: Request, run_id: int,
                     last_event_id: str | None = Header(default=None),
                     after: str | None = Query(default=None, description="txid:id")):
    """Server-sent events of one run. Resumes after `Last-Event-ID` (or `after`); without
    either it starts at the newest event."""
    async with _pool(request).acquire() as conn:
        await _run_or_404(conn, run_id)
    return _stream(request, run_id, last_event_id, after)


@reads.get("/events")
async def all_events(request: Request, last_event_id: str | None = Header(default=None),
                     after: str | None = Query(default=None, description="txid:id")):
    """Server-sent events of every run (what the runs list follows)."""
    return _stream(request, None, last_event_id, after)


# -- checkpoints and models ------------------------------------------------------------------
@writes.post("/checkpoints/{checkpoint_id}/register", status_code=201)
async def register_model(request: Request, checkpoint_id: int, body: ModelRegister):
    """Register a trained model from a checkpoint that has a test evaluation."""
    async with _pool(request).acquire() as conn:
        model_id = await repository.register_model(conn, checkpoint_id, body.name)
    return {"id": model_id, "name": body.name, "checkpoint_id": checkpoint_id}


@writes.delete("/checkpoints/{checkpoint_id}")
async def delete_checkpoint(request: Request, checkpoint_id: int, force: bool = False):
    """Delete one checkpoint (request_checkpoint_delete: the row and its stored files). Refused
    with 409 while a trained model links to it, unless `force`."""
    async with _pool(request).acquire() as conn:
        status = await repository.request_checkpoint_delete(conn, checkpoint_id, force)
    return {"checkpoint_id": checkpoint_id, "status": status}


@reads.get("/models")
async def list_models(request: Request):
    """The models usable for extraction (what a model dropdown offers)."""
    async with _pool(request).acquire() as conn:
        return _json([dict(r) for r in await repository.registered_models(conn)])


@reads.get("/models/compare")
async def compare_models(request: Request, ids: list[int] = Query(
        description=f"{COMPARE_MIN} to {COMPARE_MAX} model ids, e.g. ?ids=1&ids=2")):
    """The models' test metrics aligned side by side, best per metric marked."""
    from services.models.compare import compare_models as compare

    ids = list(dict.fromkeys(ids))
    if not COMPARE_MIN <= len(ids) <= COMPARE_MAX:
        raise FieldErrors("invalid_request", [{"field": "ids", "message":
                          f"compare {COMPARE_MIN} to {COMPARE_MAX} distinct models, got {len(ids)}"}])
    async with _pool(request).acquire() as conn:
        return _json(await compare(conn, ids))


@reads.get("/config/schema")
async def config_schema():
    """The JSON schema of a run's `config` (the create form is built from it)."""
    return config_json_schema()
