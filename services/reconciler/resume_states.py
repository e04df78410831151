"""Superseded resume states: a run that no longer trains keeps the resume state of its latest
resumable checkpoint only (the one a resume would load); older ones (about 1 GB per epoch for
dinov2-base) go. Rows first (drop_superseded_resume_states nulls resume_state_url), then bytes,
so no row names deleted bytes. The bytes are found by listing the run's prefix, so a crash
between the two steps is repaired by the next pass: the run stays checkpoints_dirty until
best.settle_runs clears it after this step."""
from __future__ import annotations

import asyncio

from db import repository
from services.common.storage import Storage
from services.common.storage_layout import BUCKET, resume_folder, run_prefix
from services.reconciler.deletes import delete_prefix


def superseded_folders(keys, kept: tuple[int, int] | None) -> list[str]:
    """Resume folders among `keys` older than the kept (epoch, attempt); none without a kept
    one (a newer folder may be an upload whose row is not stored yet)."""
    if kept is None:
        return []
    folders = {found[0]: found[1:] for found in map(resume_folder, keys) if found}
    return sorted(folder for folder, position in folders.items() if position < kept)


async def drop_superseded(conn, storage: Storage, limit: int) -> int:
    """Resume folders deleted across up to `limit` runs with changed checkpoints."""
    deleted = 0
    for run_id in await repository.runs_with_dirty_checkpoints(conn, limit):
        row = await repository.drop_superseded_resume_states(conn, run_id)
        if row is None or row["kept_epoch"] is None:
            continue
        keys = [ref.key for ref in await asyncio.to_thread(
            lambda: list(storage.list(BUCKET, run_prefix(row["run_uuid"]))))]
        for folder in superseded_folders(keys, (row["kept_epoch"], row["kept_attempt"])):
            await asyncio.to_thread(delete_prefix, storage, BUCKET, folder)
            deleted += 1
    return deleted
