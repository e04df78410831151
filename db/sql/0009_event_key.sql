-- Schema revision 0009: an event's key is (run_id, attempt, seq). Applied by
-- alembic/versions/0009_event_key.py; undone by 0009_event_key.down.sql.
--
-- Every event had three index entries: the primary key on `id`, the unique (run_id, attempt,
-- seq) and the cursor (txid, id). Nothing looks an event up by `id` alone (consumers page with
-- the (txid, id) cursor, readers of a run with (run_id, attempt, seq)), so the natural key becomes
-- the primary key and the `id` index goes: one index write fewer for every event, two for every
-- launched run (run.claimed, run.launched). `id` stays an identity column, unique as drawn, the
-- cursor's tie-breaker within a transaction.
ALTER TABLE training_events DROP CONSTRAINT training_events_pkey;
ALTER TABLE training_events DROP CONSTRAINT uq_training_events_run_attempt_seq;
ALTER TABLE training_events ADD CONSTRAINT pk_training_events PRIMARY KEY (run_id, attempt, seq);
