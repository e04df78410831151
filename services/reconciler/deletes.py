"""Deletes: marked checkpoint rows lose their bytes, then their rows; marked runs without
checkpoints lose their rows; a deleted run's tombstone (request_delete or a DELETE by hand) has
its job stopped and its storage prefix removed. Every step is idempotent, so a delete that was
interrupted finishes on the next sweep, and no row ever names bytes that are gone (rows are
marked first and removed last)."""
from __future__ import annotations

import asyncio

from db import repository
from services.common.storage import ObjectRef, Storage
from services.dispatcher.launchers import JobState, Launcher, LaunchRecord
from services.common.storage_layout import BUCKET, run_prefix

MANIFEST = "manifest.json"


def delete_prefix(storage: Storage, bucket: str, prefix: str) -> int:
    """Remove every object under a known prefix, manifests last (a half-deleted checkpoint reads
    as corrupt, never as complete). Returns how many objects went."""
    refs = sorted(storage.list(bucket, prefix), key=lambda r: r.key.endswith(MANIFEST))
    for ref in refs:
        storage.delete(ref)
    return len(refs)


def checkpoint_prefix(manifest_url: str) -> ObjectRef:
    """The folder of a checkpoint (its shards, manifest and resume state)."""
    ref = ObjectRef.parse(manifest_url)
    return ObjectRef(ref.bucket, ref.key.rsplit("/", 1)[0] + "/")


async def sweep_checkpoints(conn, storage: Storage, limit: int) -> int:
    removed = 0
    for row in await repository.checkpoints_marked_for_delete(conn, limit):
        folder = checkpoint_prefix(row["manifest_url"])
        await asyncio.to_thread(delete_prefix, storage, folder.bucket, folder.key)
        if row["resume_state_url"] and not row["resume_state_url"].startswith(folder.url):
            resume = checkpoint_prefix(row["resume_state_url"])
            await asyncio.to_thread(delete_prefix, storage, resume.bucket, resume.key)
        removed += await repository.remove_checkpoint(conn, row["id"])
    return removed


async def sweep_runs(conn, limit: int) -> int:
    removed = 0
    for run_id in await repository.runs_marked_for_delete(conn, limit):
        removed += await repository.remove_run(conn, run_id)
    return removed


async def sweep_tombstones(conn, storage: Storage, launchers: dict[str, Launcher],
                           limit: int) -> int:
    """Deleted runs: a job that still runs is asked to stop (its heartbeat also finds the row
    gone) and cleaned once gone; then the run's storage prefix goes."""
    cleaned = 0
    for row in await repository.unclean_tombstones(conn, limit):
        launcher = launchers.get(row["launcher"] or "")
        if launcher is not None and row["identity"]:
            record = LaunchRecord(row["run_id"], 0, 0, row["launcher"], row["external_job_id"],
                                  row["identity"])
            if launcher.state(record) is JobState.ALIVE:
                launcher.stop(record, force=False)
                continue
        await asyncio.to_thread(delete_prefix, storage, BUCKET, run_prefix(row["run_uuid"]))
        await repository.mark_tombstone_cleaned(conn, row["run_id"])
        cleaned += 1
    return cleaned
