"""The dashboard: server-rendered pages (Jinja2) over the same repository calls as the API.

Pages render the current state; the browser then follows the events stream and calls the JSON
API for every write (static/dashboard.js). Every asset is in this package (no CDN).
"""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from db import repository
from services.api.auth import COOKIE_NAME
from services.api.routes import API_PREFIX, RUN_STATUSES, evaluations_with_names
from services.api.stream import event_id
from services.common.events import EVENT_TYPES
from services.trainer.config import TrainingConfig, config_json_schema, example_config

TEMPLATES = Jinja2Templates(directory=Path(__file__).with_name("templates"))
# The create form follows the schema's field order; Jinja's tojson sorts keys by default.
TEMPLATES.env.policies["json.dumps_kwargs"] = {"sort_keys": False}
DEFAULT_EPOCHS = TrainingConfig().epochs
FINAL_STATUSES = ("completed", "failed", "cancelled")
PAGE_SIZE = 50

router = APIRouter(include_in_schema=False)


def _guard(request: Request) -> None:
    auth = request.app.state.auth
    if auth.reads_need_token and not auth.authenticated(request, write=False):
        raise HTTPException(303, headers={"Location": f"/login?next={quote(request.url.path)}"})


def _page(request: Request, template: str, **context) -> HTMLResponse:
    auth = request.app.state.auth
    return TEMPLATES.TemplateResponse(request, template, {
        "api": API_PREFIX, "logged_in": auth.authenticated(request, write=False),
        "event_types": ",".join(EVENT_TYPES), **context})


def _config_epochs(config) -> int | None:
    """training.epochs of a stored config when it is a usable number (configs are user input)."""
    training = config.get("training") if isinstance(config, dict) else None
    epochs = training.get("epochs") if isinstance(training, dict) else None
    return epochs if isinstance(epochs, int) and epochs > 0 else None


def run_view(row: dict, latest_epoch: dict | None) -> dict:
    """What a runs-list row shows."""
    total = row.get("total_epochs") or row.get("config_epochs") or DEFAULT_EPOCHS
    latest = latest_epoch or {}
    # a completed run that stopped early is done: its bar is full
    stopped_early = row["status"] == "completed" and row["current_epoch"] < total
    return {**row, "total": total, "stopped_early": stopped_early,
            "epoch_percent": 100 if stopped_early else round(100 * min(row["current_epoch"] / total, 1)),
            "latest_loss": (latest.get("loss") or {}).get("total"),
            "latest_r1": (latest.get("val") or {}).get("recall_at_1"),
            "final": row["status"] in FINAL_STATUSES}


async def _run_views(conn, rows) -> list[dict]:
    latest = await repository.latest_epochs(conn, [r["id"] for r in rows])
    return [run_view(dict(r), latest.get(r["id"])) for r in rows]


@router.get("/", response_class=HTMLResponse)
async def runs_page(request: Request, status: str | None = Query(default=None),
                    cursor: int | None = Query(default=None)):
    _guard(request)
    statuses = [status] if status in RUN_STATUSES else None
    async with request.app.state.pool.acquire() as conn:
        head = await repository.events_head(conn)  # before the rows: replays, never misses
        rows = await repository.list_runs_page(conn, statuses=statuses, before_id=cursor,
                                               limit=PAGE_SIZE)
        runs = await _run_views(conn, rows)
    next_cursor = runs[-1]["id"] if len(runs) == PAGE_SIZE else None
    return _page(request, "runs.html", runs=runs, statuses=RUN_STATUSES, status=status,
                 next_cursor=next_cursor, event_cursor=event_id(head),
                 schema=config_json_schema(), defaults=example_config())


@router.get("/ui/runs/{run_id}/row", response_class=HTMLResponse)
async def run_row(request: Request, run_id: int):
    """One runs-list row, re-rendered when the stream says the run changed."""
    _guard(request)
    async with request.app.state.pool.acquire() as conn:
        rows = await repository.list_runs_page(conn, statuses=None, before_id=run_id + 1, limit=1)
        if not rows or rows[0]["id"] != run_id:
            return Response(status_code=404)
        (run,) = await _run_views(conn, rows)
    return _page(request, "_run_row.html", run=run)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run_page(request: Request, run_id: int):
    _guard(request)
    async with request.app.state.pool.acquire() as conn:
        head = await repository.events_head(conn)
        row = await repository.get_run(conn, run_id)
        if row is None:
            response = _page(request, "not_found.html", what=f"training run {run_id}")
            response.status_code = 404
            return response
        run = dict(row)
        checkpoints = [dict(r) for r in await repository.run_checkpoints_for_api(conn, run_id)]
        evaluations = await evaluations_with_names(conn, run_id)
        linked = [dict(r) for r in await repository.run_linked_models(conn, run_id)]
        latest = (await repository.latest_epochs(conn, [run_id])).get(run_id)
    view = run_view({**run, "config_epochs": _config_epochs(run["config"])}, latest)
    evaluated = {e["checkpoint_id"] for e in evaluations}
    return _page(request, "run.html", run=view, checkpoints=checkpoints, evaluations=evaluations,
                 evaluated=evaluated, linked_models=linked, event_cursor=event_id(head),
                 config_json=json.dumps(run["config"], indent=2))


@router.get("/models", response_class=HTMLResponse)
async def models_page(request: Request):
    _guard(request)
    async with request.app.state.pool.acquire() as conn:
        models = [dict(r) for r in await repository.registered_models(conn)]
    return _page(request, "models.html", models=models)


@router.get("/models/compare", response_class=HTMLResponse)
async def compare_page(request: Request, ids: list[int] = Query(default=[])):
    _guard(request)
    return _page(request, "compare.html", ids=list(dict.fromkeys(ids)))


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str = "/"):
    return _page(request, "login.html", next=_local_path(next), error=None)


@router.post("/login")
async def login(request: Request, token: str = Form(...), next: str = Form("/")):
    auth = request.app.state.auth
    if not auth.matches(token):
        response = _page(request, "login.html", next=_local_path(next),
                         error="That token is not the server's API token.")
        response.status_code = 401
        return response
    response = RedirectResponse(_local_path(next), status_code=303)
    response.set_cookie(COOKIE_NAME, token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout():
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE_NAME)
    return response


def _local_path(path: str) -> str:
    """Only redirect within this site."""
    return path if path.startswith("/") and not path.startswith("//") else "/"
