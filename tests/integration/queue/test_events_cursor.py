"""The (txid, id) cursor never skips a row committed out of id order."""
from db import repository


async def _drain(conn, cursor):
    seen = []
    while True:
        rows = await repository.events_after(conn, cursor, 2)
        if not rows:
            return seen, cursor
        for row in rows:
            seen.append(row["id"])
            cursor = repository.EventCursor(row["txid"], row["id"])


async def test_cursor_waits_for_older_open_transaction(db_url):
    setup = await repository.connect(db_url)
    run_id = await repository.insert_run(setup, "a", {})
    first = await repository.connect(db_url)
    second = await repository.connect(db_url)
    consumer = await repository.connect(db_url)
    try:
        seen, cursor = await _drain(consumer, repository.EventCursor())
        assert len(seen) == 1  # run.queued

        tx_first = first.transaction()
        await tx_first.start()
        # The older transaction takes the lower id but will commit last.
        early_id = await first.fetchval(
            "INSERT INTO training_events (run_id, attempt, seq, type) VALUES ($1, 9, 1, 'x') RETURNING id", run_id)
        late_id = await second.fetchval(
            "INSERT INTO training_events (run_id, attempt, seq, type) VALUES ($1, 9, 2, 'y') RETURNING id", run_id)
        assert late_id > early_id

        # A bigserial consumer would now read late_id and later never see early_id.
        newer, cursor = await _drain(consumer, cursor)
        assert newer == []  # held back below the oldest open transaction
        await tx_first.commit()
        newer, cursor = await _drain(consumer, cursor)
        assert sorted(newer) == [early_id, late_id]
        again, _ = await _drain(consumer, cursor)
        assert again == []
    finally:
        for c in (setup, first, second, consumer):
            await c.close()
