"""Typed repository functions over asyncpg: the only Python that talks to the database.

Driver errors that mean something to the caller are turned into domain errors here, with the
original kept as `__cause__` (a lost lease becomes LeaseLost).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import asyncpg

from db.connection import asyncpg_dsn
from db.queries import QUERIES
from services.common.errors import LeaseLost, NotFound, Refused
from services.common.logging import safe_message

LEASE_LOST_SQLSTATE = "SK001"


async def _fetch_fenced(conn, query: str, *args):
    """fetchval of a lease holder's write; LeaseLost when the fence refused it (SK001)."""
    try:
        return await conn.fetchval(QUERIES[query], *args)
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) == LEASE_LOST_SQLSTATE:
            raise LeaseLost(str(exc)) from exc
        raise


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def connect(url: str, **kwargs) -> asyncpg.Connection:
    conn = await asyncpg.connect(asyncpg_dsn(url), **kwargs)
    await _init_connection(conn)
    return conn


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 4, **kwargs) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        asyncpg_dsn(url), min_size=min_size, max_size=max_size, init=_init_connection, **kwargs
    )


@dataclass(frozen=True)
class ClaimedRun:
    """What a lease holder needs: the run, its attempt, the fencing epoch (the services' fence)
    and the lease token (the trainer's only key to the run, handed to its job and nowhere else).
    `config` is the document's JSON text: each run decodes its own, so one bad document fails
    one run."""

    id: int
    name: str
    config: str
    attempt: int
    lease_epoch: int
    priority: int
    lease_token: str = field(repr=False)


@dataclass(frozen=True)
class Heartbeat:
    owned: bool
    cancel_requested: bool


async def claim_runs(conn, owner: str, limit: int, lease_seconds: float) -> list[ClaimedRun]:
    if limit <= 0:
        return []
    rows = await conn.fetch(QUERIES["claim_runs"], owner, limit, float(lease_seconds))
    return _claimed_runs(rows)


def _claimed_runs(rows) -> list[ClaimedRun]:
    """The runs of claim_runs' columns (rows with no id are skipped)."""
    return [
        ClaimedRun(r["id"], r["name"], r["config_text"], r["attempt"], r["lease_epoch"],
                   r["priority"], r["lease_token"])
        for r in rows if r["id"] is not None
    ]


async def mark_launched(conn, run_id: int, lease_epoch: int, launcher: str,
                        external_job_id: str | None, identity: dict | None = None) -> bool:
    return await conn.fetchval(QUERIES["mark_launched"], run_id, lease_epoch, launcher,
                               external_job_id, identity or {})


async def release_run(conn, run_id: int, lease_epoch: int, reason: str) -> bool:
    return await conn.fetchval(QUERIES["release_run"], run_id, lease_epoch, reason)


async def start_run(conn, run_id: int, lease_epoch: int, lease_seconds: float,
                    payload: dict) -> bool:
    return await conn.fetchval(QUERIES["start_run"], run_id, lease_epoch, float(lease_seconds),
                               payload)


# The lease holder's writes come in two keyings with the same parameters after the key: the
# services' (run id, lease_epoch) and the trainer's (run id, lease token, revision 0006). Each
# pair shares one body below, so both ends apply the same rules.
async def _heartbeat(conn, query: str, run_id: int, key, lease_seconds: float,
                     step: int | None) -> Heartbeat:
    row = await conn.fetchrow(QUERIES[query], run_id, key, float(lease_seconds), step)
    return Heartbeat(row["owned"], row["cancel_requested"])


async def _finish(conn, query: str, run_id: int, key, status: str, error_code: str | None,
                  error_message: str | None, payload: dict | None) -> bool:
    if error_message is not None:  # stored messages are redacted and capped (a few KB)
        error_message = safe_message(error_message)
    return await conn.fetchval(QUERIES[query], run_id, key, status, error_code, error_message,
                               payload or {})


async def _append_events(conn, query: str, run_id: int, key, first_seq: int,
                         events: Sequence[tuple[str, dict]]) -> int:
    return await _fetch_fenced(conn, query, run_id, key, first_seq, [t for t, _ in events],
                               [p for _, p in events])


async def heartbeat_run(conn, run_id: int, lease_epoch: int, lease_seconds: float, *,
                        step: int | None = None) -> Heartbeat:
    """Extend the lease; `step` (the trainer's step counter) moves progress_at when it advances."""
    return await _heartbeat(conn, "heartbeat_run", run_id, lease_epoch, lease_seconds, step)


async def finish_run(conn, run_id: int, lease_epoch: int, status: str, *,
                     error_code: str | None = None, error_message: str | None = None,
                     payload: dict | None = None) -> bool:
    return await _finish(conn, "finish_run", run_id, lease_epoch, status, error_code,
                         error_message, payload)


async def append_trainer_events(conn, run_id: int, lease_epoch: int, first_seq: int,
                                events: Sequence[tuple[str, dict]]) -> int:
    """Store events numbered first_seq.. (already stored ones are skipped); returns last seq."""
    return await _append_events(conn, "append_trainer_events", run_id, lease_epoch, first_seq,
                                events)


async def request_cancel(conn, run_id: int) -> str:
    """The run's status after the request; Refused for a run that already ended."""
    return await _refusable(conn, "request_cancel", run_id)


async def insert_run(conn, name: str, config: dict, priority: int = 0) -> int:
    return await conn.fetchval(QUERIES["insert_run"], name, config, priority)


async def get_run(conn, run_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(QUERIES["get_run"], run_id)


async def list_runs(conn, limit: int = 20) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["list_runs"], limit)


@dataclass(frozen=True)
class EventCursor:
    """Position of a consumer: (txid, id) of the last event it has processed."""

    txid: str = "0"
    id: int = 0


async def events_after(conn, cursor: EventCursor, limit: int = 100) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["events_after"], cursor.txid, cursor.id, limit)


async def run_events(conn, run_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["run_events"], run_id)


async def select_products(conn, source_type: str, *, dataset_id: int | None = None,
                          product_ids: Iterable[int] | None = None) -> list[asyncpg.Record]:
    if source_type == "all_products":
        return await conn.fetch(QUERIES["products_all"])
    if source_type == "matched_products":
        return await conn.fetch(QUERIES["products_matched"])
    if source_type == "dataset":
        return await conn.fetch(QUERIES["products_dataset"], dataset_id)
    if source_type == "selected":
        return await conn.fetch(QUERIES["products_selected"], list(product_ids or []))
    raise ValueError(f"unknown data source {source_type!r}")


async def dataset_exists(conn, dataset_id: int) -> bool:
    return await conn.fetchval(QUERIES["dataset_exists"], dataset_id)


async def product_images_for(conn, product_ids: Sequence[int]) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["product_images_for"], list(product_ids))


async def insert_catalog(conn, products: Iterable[dict]) -> int:
    """Insert generated or imported products with their images; returns the product count."""
    count = 0
    async with conn.transaction():
        for product in products:
            product_id = await conn.fetchval(
                QUERIES["insert_product"], product["barcode"], product["product_name"],
                product.get("brand_name"), product.get("category"), product.get("frames_path"),
                product.get("frame_count", 0),
            )
            await conn.executemany(
                QUERIES["insert_product_image"],
                [(product_id, img["url"], img["domain"], img.get("frame_index"),
                  img.get("source_key")) for img in product.get("images", [])],
            )
            count += 1
    return count


async def run_images(conn, run_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["run_images"], run_id)


async def run_checkpoints(conn, run_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["run_checkpoints"], run_id)


async def run_evaluations(conn, run_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["run_evaluations"], run_id)


# -- HTTP API and dashboard -------------------------------------------------------------------
async def list_runs_page(conn, *, statuses: Sequence[str] | None, before_id: int | None,
                         limit: int) -> list[asyncpg.Record]:
    """Newest runs first, optionally only some statuses, strictly below `before_id`."""
    return await conn.fetch(QUERIES["api_list_runs"], list(statuses) if statuses else None,
                            before_id, limit)


async def events_head(conn) -> EventCursor:
    """The cursor of the newest committed event (a stream started here sees only new events)."""
    row = await conn.fetchrow(QUERIES["api_events_head"])
    return EventCursor(row["txid"], row["id"]) if row else EventCursor()


async def run_linked_models(conn, run_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["api_run_linked_models"], run_id)


async def run_label_names(conn, run_id: int) -> dict[str, str]:
    """label -> product name, for runs that classify by product."""
    return {r["label"]: r["product_name"]
            for r in await conn.fetch(QUERIES["api_run_label_names"], run_id)}


async def run_checkpoints_for_api(conn, run_id: int) -> list[asyncpg.Record]:
    """Every checkpoint row of a run, those being deleted included (delete_requested_at)."""
    return await conn.fetch(QUERIES["api_run_checkpoints"], run_id)


async def run_evaluations_for_api(conn, run_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["api_run_evaluations"], run_id)


async def latest_epochs(conn, run_ids: Sequence[int]) -> dict[int, dict]:
    """run id -> payload of its last epoch.completed event."""
    rows = await conn.fetch(QUERIES["api_latest_epochs"], list(run_ids))
    return {r["run_id"]: r["payload"] for r in rows}


# -- Lifecycle: launches, leases, cancel, resume, deletes, best, retention --------------------
REFUSED_SQLSTATE = "SK010"


async def _refusable(conn, query: str, *args):
    """Run a request_* function: SK010 becomes Refused, a missing row RunNotFound."""
    try:
        return await conn.fetchval(QUERIES[query], *args)
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) == REFUSED_SQLSTATE:
            raise Refused(exc.args[0] if exc.args else str(exc)) from exc
        if isinstance(exc, asyncpg.NoDataFoundError):
            raise NotFound(exc.args[0] if exc.args else str(exc)) from exc
        raise


async def mark_launched_batch(conn, launcher: str,
                              launches: Sequence[tuple[int, int, str, dict]]) -> list[bool]:
    """Record (run id, lease epoch, external job id, identity) launches in one commit."""
    return await conn.fetchval(QUERIES["mark_launched_batch"], *_launch_args(launcher, launches))


def _launch_args(launcher: str, launches: Sequence[tuple[int, int, str, dict]]) -> tuple:
    """mark_launched_batch's parameters $1-$5: one array per field, and the launcher."""
    return ([r for r, _, _, _ in launches], [e for _, e, _, _ in launches], launcher,
            [j for _, _, j, _ in launches], [i for _, _, _, i in launches])


async def mark_launched_and_claim(conn, launcher: str,
                                  launches: Sequence[tuple[int, int, str, dict]], owner: str,
                                  limit: int, lease_seconds: float
                                  ) -> tuple[list[bool], list[ClaimedRun]]:
    """mark_launched_batch, then claim_runs up to `limit` runs for `owner`, in one commit."""
    rows = await conn.fetch(QUERIES["mark_launched_and_claim"], *_launch_args(launcher, launches),
                            owner, limit, float(lease_seconds))
    return next(r["recorded"] for r in rows if r["recorded"] is not None), _claimed_runs(rows)


async def live_launches(conn, launcher: str) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["live_launches"], launcher)


async def count_live_launches(conn, launcher: str) -> int:
    return await conn.fetchval(QUERIES["count_live_launches"], launcher)


async def end_launch(conn, run_id: int, attempt: int, reason: str) -> bool:
    return bool(await conn.fetchval(QUERIES["end_launch"], run_id, attempt, reason))


async def recover_attempt(conn, run_id: int, lease_epoch: int, error_code: str, message: str,
                          max_attempts: int) -> str | None:
    """'queued' (to resume), 'failed' (no attempts left) or None (the fence did not hold)."""
    return await conn.fetchval(QUERIES["recover_attempt"], run_id, lease_epoch, error_code,
                               message, max_attempts)


async def request_resume(conn, run_id: int) -> str:
    return await _refusable(conn, "request_resume", run_id)


async def request_delete(conn, run_id: int, force: bool = False) -> str:
    return await _refusable(conn, "request_delete", run_id, force)


async def request_checkpoint_delete(conn, checkpoint_id: int, force: bool = False) -> str:
    return await _refusable(conn, "request_checkpoint_delete", checkpoint_id, force)


async def runs_needing_attention(conn, stall_seconds: float,
                                 cancel_grace: float) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["runs_needing_attention"], float(stall_seconds),
                            float(cancel_grace))


async def cancel_stopped_run(conn, run_id: int, lease_epoch: int, reason: str) -> bool:
    return await conn.fetchval(QUERIES["cancel_stopped_run"], run_id, lease_epoch, reason)


async def checkpoints_marked_for_delete(conn, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["checkpoints_marked_for_delete"], limit)


async def remove_checkpoint(conn, checkpoint_id: int) -> bool:
    return await conn.fetchval(QUERIES["remove_checkpoint"], checkpoint_id)


async def runs_marked_for_delete(conn, limit: int) -> list[int]:
    return [r["id"] for r in await conn.fetch(QUERIES["runs_marked_for_delete"], limit)]


async def remove_run(conn, run_id: int) -> bool:
    return await conn.fetchval(QUERIES["remove_run"], run_id)


async def unclean_tombstones(conn, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["unclean_tombstones"], limit)


async def mark_tombstone_cleaned(conn, run_id: int) -> None:
    await conn.execute(QUERIES["mark_tombstone_cleaned"], run_id)


async def runs_with_dirty_checkpoints(conn, limit: int) -> list[int]:
    return [r["id"] for r in await conn.fetch(QUERIES["runs_with_dirty_checkpoints"], limit)]


async def live_checkpoints(conn, run_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["live_checkpoints"], run_id)


async def settle_checkpoints(conn, run_id: int, best_id: int | None,
                             delete_ids: Sequence[int]) -> bool:
    return await conn.fetchval(QUERIES["settle_checkpoints"], run_id, best_id, list(delete_ids))


async def drop_superseded_resume_states(conn, run_id: int) -> asyncpg.Record | None:
    """(run_uuid, kept_epoch, kept_attempt) once only the latest resumable checkpoint of run
    `run_id` names a resume state; None when the run is active or gone."""
    return await conn.fetchrow(QUERIES["drop_superseded_resume_states"], run_id)


async def existing_run_uuids(conn, uuids: Sequence[str]) -> set[str]:
    return {r[0] for r in await conn.fetch(QUERIES["existing_run_uuids"], list(uuids))}


# -- Registry: models, on-demand evaluations, extraction, metrics history ---------------------
async def register_model(conn, checkpoint_id: int, name: str) -> int:
    """The new trained_models id; Refused without a test evaluation or with a taken name,
    NotFound for a missing checkpoint."""
    return await _refusable(conn, "registry_register_model", checkpoint_id, name)


async def record_evaluation(conn, checkpoint_id: int, payload: dict) -> int:
    """Store an on-demand evaluation (and its evaluation.recorded event); returns its id."""
    return await _refusable(conn, "registry_record_evaluation", checkpoint_id, payload)


async def registry_checkpoint(conn, checkpoint_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(QUERIES["registry_checkpoint"], checkpoint_id)


async def registered_models(conn) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["registry_list_models"])


async def registered_model(conn, model_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(QUERIES["registry_model"], model_id)


async def products_info(conn, product_ids: Sequence[int]) -> dict[int, asyncpg.Record]:
    rows = await conn.fetch(QUERIES["registry_products_info"], list(product_ids))
    return {r["id"]: r for r in rows}


async def extraction_catalog(conn, product_ids: Sequence[int] | None
                             ) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """(products, their product_images rows) for building an extraction manifest."""
    products = await conn.fetch(QUERIES["registry_extraction_products"],
                                None if product_ids is None else list(product_ids))
    images = await conn.fetch(QUERIES["registry_extraction_images"], [p["id"] for p in products])
    return products, images


async def metrics_history_rows(conn, run_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["registry_metrics_history"], run_id)


async def schema_present(conn) -> bool:
    return await conn.fetchval(QUERIES["schema_present"])


# -- RunPod launcher and metrics ----------------------------------------------------------------
async def note_run_waiting(conn, run_id: int, lease_epoch: int, payload: dict) -> bool:
    """A `run.waiting` event on a claimed run whose job no worker has taken yet (fenced)."""
    return await conn.fetchval(QUERIES["note_run_waiting"], run_id, lease_epoch, payload) is not None


async def metrics_queue_depth(conn) -> dict[str, int]:
    return {r["status"]: r["runs"] for r in await conn.fetch(QUERIES["metrics_queue_depth"])}


async def metrics_trainer_throughput(conn) -> list[tuple[str, float]]:
    rows = await conn.fetch(QUERIES["metrics_trainer_throughput"])
    return [(r["run"], r["images_per_second"]) for r in rows if r["images_per_second"] is not None]


# -- Trainer: every call carries the run id and the claim's lease token (revision 0006) --------
@dataclass(frozen=True)
class Lease:
    """One attempt's hold on a run as its trainer knows it: the run and the claim's token."""

    run_id: int
    token: str = field(repr=False)


async def trainer_run(conn, lease: Lease) -> asyncpg.Record | None:
    """The run as its attempt sees it; None when the token is not the run's current one."""
    return await conn.fetchrow(QUERIES["trainer_run"], lease.run_id, lease.token)


async def trainer_launch_recorded(conn, lease: Lease, attempt: int) -> bool | None:
    """True once this attempt's launch is recorded, False while it is not yet, None when the
    lease no longer holds the run in flight (a stale job)."""
    return await conn.fetchval(QUERIES["trainer_launch_recorded"], lease.run_id, lease.token,
                               attempt)


async def trainer_start_run(conn, lease: Lease, lease_seconds: float, payload: dict) -> bool:
    return await conn.fetchval(QUERIES["trainer_start_run"], lease.run_id, lease.token,
                               float(lease_seconds), payload)


async def trainer_heartbeat(conn, lease: Lease, lease_seconds: float, *,
                            step: int | None = None) -> Heartbeat:
    return await _heartbeat(conn, "trainer_heartbeat", lease.run_id, lease.token, lease_seconds,
                            step)


async def trainer_append_events(conn, lease: Lease, first_seq: int,
                                events: Sequence[tuple[str, dict]]) -> int:
    """Store events numbered first_seq.. (already stored ones are skipped); returns last seq."""
    return await _append_events(conn, "trainer_append_events", lease.run_id, lease.token,
                                first_seq, events)


async def trainer_finish_run(conn, lease: Lease, status: str, *, error_code: str | None = None,
                             error_message: str | None = None, payload: dict | None = None) -> bool:
    return await _finish(conn, "trainer_finish_run", lease.run_id, lease.token, status,
                         error_code, error_message, payload)


async def trainer_checkpoint(conn, lease: Lease, checkpoint_id: int) -> asyncpg.Record | None:
    """A checkpoint of the lease's run (None: none with that id in this run)."""
    return await conn.fetchrow(QUERIES["trainer_checkpoint"], lease.run_id, lease.token,
                               checkpoint_id)


async def trainer_checkpoint_manifest(conn, lease: Lease, epoch: int) -> str | None:
    """The manifest URL of the run's checkpoint of `epoch` (the latest attempt's row)."""
    return await conn.fetchval(QUERIES["trainer_checkpoint_manifest"], lease.run_id, lease.token,
                               epoch)


async def trainer_run_images(conn, lease: Lease) -> list[asyncpg.Record]:
    return await conn.fetch(QUERIES["trainer_run_images"], lease.run_id, lease.token)


async def trainer_store_run_images(conn, lease: Lease, rows: Sequence[dict]) -> int:
    """Replace the run's stored manifest with `rows` (dicts with split and the image fields),
    in order; LeaseLost when the token no longer holds the run in flight."""
    columns = ("split", "product_id", "url", "domain", "frame_index", "label", "category",
               "brand", "source_key")
    return await _fetch_fenced(conn, "trainer_store_run_images", lease.run_id, lease.token,
                               *([r.get(c) for r in rows] for c in columns))
