"""Orphans: stored run prefixes that no run row names (a crash between an upload and its row,
a tombstone cleaned while a late upload landed). A prefix is deleted only when it was seen
orphaned in sweeps at least `grace` seconds apart, so an upload in flight is never touched."""
from __future__ import annotations

import asyncio
import time
import uuid

from db import repository
from services.common.storage import Storage
from services.common.storage_layout import BUCKET, run_prefix
from services.reconciler.deletes import delete_prefix


def stored_run_uuids(storage: Storage) -> set[str]:
    found = set()
    for ref in storage.list(BUCKET, "runs/"):
        part = ref.key.split("/")[1] if ref.key.count("/") >= 2 else ""
        try:
            found.add(str(uuid.UUID(part)))
        except ValueError:
            continue
    return found


class OrphanSweep:
    def __init__(self, grace: float):
        self.grace = grace
        self._first_seen: dict[str, float] = {}

    async def run(self, conn, storage: Storage) -> int:
        stored = await asyncio.to_thread(stored_run_uuids, storage)
        orphans = stored - await repository.existing_run_uuids(conn, sorted(stored))
        now = time.monotonic()
        self._first_seen = {u: self._first_seen.get(u, now) for u in orphans}
        removed = 0
        for run_uuid, seen in list(self._first_seen.items()):
            if now - seen >= self.grace:
                await asyncio.to_thread(delete_prefix, storage, BUCKET, run_prefix(run_uuid))
                del self._first_seen[run_uuid]
                removed += 1
        return removed
