"""Server-sent events on the gap-free events cursor.

Each message's `id` is the cursor position `txid:id`, so a client that reconnects with
`Last-Event-ID` (browsers do this by themselves) continues exactly after the last event it saw:
`training_events_after` never returns a row that commits behind a position already handed out.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from typing import AsyncIterator, Awaitable, Callable

from db import repository
from db.repository import EventCursor

_EVENT_ID = re.compile(r"^(\d+):(\d+)$")
PAGE_SIZE = 200


def parse_event_id(value: str | None) -> EventCursor | None:
    """`txid:id` -> cursor; None for an absent value. Raises ValueError for a malformed one."""
    if value is None or value == "":
        return None
    match = _EVENT_ID.match(value.strip())
    if match is None:
        raise ValueError(f"event id {value!r} is not of the form 'txid:id'")
    return EventCursor(match[1], int(match[2]))


def event_id(cursor: EventCursor) -> str:
    return f"{cursor.txid}:{cursor.id}"


def event_message(row) -> str:
    data = {"id": row["id"], "run_id": row["run_id"], "attempt": row["attempt"],
            "seq": row["seq"], "type": row["type"], "version": row["version"],
            "payload": row["payload"], "created_at": row["created_at"].isoformat()}
    return (f"id: {row['txid']}:{row['id']}\nevent: {row['type']}\n"
            f"data: {json.dumps(data, separators=(',', ':'))}\n\n")


async def event_stream(pool, cursor: EventCursor, *, run_id: int | None,
                       finished: Callable[[], Awaitable[bool]], poll: float = 0.5,
                       keepalive: float = 15.0) -> AsyncIterator[str]:
    """Events after `cursor` (of one run, or all), then new ones as they commit, until
    `finished()` (the client left or the server is stopping)."""
    yield "retry: 2000\n\n"
    last_sent = time.monotonic()
    while not await finished():
        async with pool.acquire() as conn:
            rows = await repository.events_after(conn, cursor, PAGE_SIZE)
        for row in rows:
            cursor = EventCursor(row["txid"], row["id"])
            if run_id is None or row["run_id"] == run_id:
                last_sent = time.monotonic()
                yield event_message(row)
        if len(rows) < PAGE_SIZE:
            if time.monotonic() - last_sent >= keepalive:
                last_sent = time.monotonic()
                # A comment keeps proxies from closing an idle stream; the position travels with it
                # only through real events, so a reconnect may re-read skipped other-run rows.
                yield ": keepalive\n\n"
            await asyncio.sleep(poll)
