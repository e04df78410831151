-- Queue and event functions of schema revision 0001. Applied by alembic/versions/0001_initial.py.
-- Every state change writes its event in the same transaction (the events table is the outbox).

-- Append one event to a run's current attempt, numbering it from the run's per-attempt counter.
CREATE FUNCTION emit_run_event(p_run_id bigint, p_type text, p_payload jsonb DEFAULT '{}'::jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_attempt int;
  v_seq int;
  v_id bigint;
BEGIN
  UPDATE training_runs SET event_seq = event_seq + 1
   WHERE id = p_run_id RETURNING attempt, event_seq INTO v_attempt, v_seq;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'training run % does not exist', p_run_id USING ERRCODE = 'no_data_found';
  END IF;
  INSERT INTO training_events (run_id, attempt, seq, type, payload)
  VALUES (p_run_id, v_attempt, v_seq, p_type, coalesce(p_payload, '{}'::jsonb))
  RETURNING id INTO v_id;
  RETURN v_id;
END $$;

-- A plain INSERT is the user's way to queue a run: the row always starts queued, attempt 0.
CREATE FUNCTION training_runs_before_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.status := 'queued';
  NEW.attempt := 0;
  NEW.lease_epoch := 0;
  NEW.lease_owner := NULL;
  NEW.lease_expires_at := NULL;
  NEW.launched_attempt := NULL;
  NEW.event_seq := 1;
  NEW.trainer_seq := 0;
  NEW.config := coalesce(NEW.config, '{}'::jsonb);
  RETURN NEW;
END $$;

CREATE TRIGGER training_runs_before_insert BEFORE INSERT ON training_runs
FOR EACH ROW EXECUTE FUNCTION training_runs_before_insert();

CREATE FUNCTION training_runs_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO training_events (run_id, attempt, seq, type, payload)
  VALUES (NEW.id, 0, 1, 'run.queued', jsonb_build_object('name', NEW.name, 'priority', NEW.priority));
  RETURN NULL;
END $$;

CREATE TRIGGER training_runs_after_insert AFTER INSERT ON training_runs
FOR EACH ROW EXECUTE FUNCTION training_runs_after_insert();

-- One NOTIFY per statement, not per row. NOTIFY is a hint: dispatchers also poll.
CREATE FUNCTION training_runs_notify_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('skutrain_runs', 'queued');
  RETURN NULL;
END $$;

CREATE TRIGGER training_runs_notify_queued AFTER INSERT ON training_runs
FOR EACH STATEMENT EXECUTE FUNCTION training_runs_notify_queued();

-- The claim: one statement, SKIP LOCKED, lease + attempt + fencing token set in the UPDATE.
CREATE FUNCTION claim_runs(p_owner text, p_limit int, p_lease_seconds double precision)
RETURNS SETOF training_runs LANGUAGE sql AS $$
  WITH candidates AS (
    SELECT id FROM training_runs
     WHERE status = 'queued'
     ORDER BY priority DESC, created_at, id
     LIMIT p_limit
     FOR UPDATE SKIP LOCKED
  ), claimed AS (
    UPDATE training_runs r
       SET status = 'claimed',
           attempt = r.attempt + 1,
           lease_epoch = r.lease_epoch + 1,
           lease_owner = p_owner,
           lease_expires_at = now() + make_interval(secs => p_lease_seconds),
           claimed_at = now(),
           updated_at = now(),
           launcher = NULL,
           external_job_id = NULL,
           event_seq = 1,
           trainer_seq = 0
      FROM candidates c
     WHERE r.id = c.id
    RETURNING r.*
  ), events AS (
    INSERT INTO training_events (run_id, attempt, seq, type, payload)
    SELECT id, attempt, 1, 'run.claimed',
           jsonb_build_object('owner', lease_owner, 'lease_epoch', lease_epoch)
      FROM claimed
  )
  SELECT * FROM claimed ORDER BY priority DESC, created_at, id
$$;

-- Record a launch once per (run, attempt); fenced on the lease epoch.
CREATE FUNCTION mark_launched(p_run_id bigint, p_lease_epoch bigint, p_launcher text,
                              p_external_job_id text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  UPDATE training_runs
     SET launcher = p_launcher, external_job_id = p_external_job_id,
         launched_attempt = attempt, updated_at = now()
   WHERE id = p_run_id AND lease_epoch = p_lease_epoch
     AND status IN ('claimed', 'running')
     AND launched_attempt IS DISTINCT FROM attempt;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM emit_run_event(p_run_id, 'run.launched',
    jsonb_build_object('launcher', p_launcher, 'external_job_id', p_external_job_id));
  RETURN true;
END $$;

-- Put a claimed but never launched run back in the queue (dispatcher shutdown).
CREATE FUNCTION release_run(p_run_id bigint, p_lease_epoch bigint, p_reason text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  UPDATE training_runs
     SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
   WHERE id = p_run_id AND lease_epoch = p_lease_epoch AND status = 'claimed'
     AND launched_attempt IS DISTINCT FROM attempt;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM emit_run_event(p_run_id, 'run.requeued', jsonb_build_object('reason', p_reason));
  PERFORM pg_notify('skutrain_runs', 'queued');
  RETURN true;
END $$;

-- The trainer takes over the lease it was launched with.
CREATE FUNCTION start_run(p_run_id bigint, p_lease_epoch bigint, p_lease_seconds double precision,
                          p_payload jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  UPDATE training_runs
     SET status = 'running', started_at = coalesce(started_at, now()), updated_at = now(),
         lease_expires_at = now() + make_interval(secs => p_lease_seconds),
         total_epochs = coalesce((p_payload ->> 'total_epochs')::int, total_epochs)
   WHERE id = p_run_id AND lease_epoch = p_lease_epoch AND status IN ('claimed', 'running');
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM emit_run_event(p_run_id, 'run.started', coalesce(p_payload, '{}'::jsonb));
  RETURN true;
END $$;

-- Extend the lease; tell the holder whether it still owns the run and whether to cancel.
CREATE FUNCTION heartbeat_run(p_run_id bigint, p_lease_epoch bigint,
                              p_lease_seconds double precision,
                              OUT owned boolean, OUT cancel_requested boolean)
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE training_runs
     SET lease_expires_at = now() + make_interval(secs => p_lease_seconds)
   WHERE id = p_run_id AND lease_epoch = p_lease_epoch AND status IN ('claimed', 'running')
  RETURNING true, cancel_requested_at IS NOT NULL INTO owned, cancel_requested;
  IF NOT FOUND THEN
    owned := false;
    cancel_requested := false;
  END IF;
END $$;

-- End a run. Fenced: a stale holder changes nothing and gets false.
CREATE FUNCTION finish_run(p_run_id bigint, p_lease_epoch bigint, p_status text,
                           p_error_code text DEFAULT NULL, p_error_message text DEFAULT NULL,
                           p_payload jsonb DEFAULT '{}'::jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF p_status NOT IN ('completed', 'failed', 'cancelled') THEN
    RAISE EXCEPTION 'finish_run: % is not a final status', p_status
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  UPDATE training_runs
     SET status = p_status, error_code = p_error_code, error_message = p_error_message,
         finished_at = now(), updated_at = now(), lease_owner = NULL, lease_expires_at = NULL
   WHERE id = p_run_id AND lease_epoch = p_lease_epoch AND status IN ('claimed', 'running');
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM emit_run_event(p_run_id, 'run.' || p_status,
    coalesce(p_payload, '{}'::jsonb)
    || jsonb_strip_nulls(jsonb_build_object('error_code', p_error_code,
                                            'error_message', p_error_message)));
  RETURN true;
END $$;

-- Derived state that a trainer event carries into rows, in the event's own transaction.
CREATE FUNCTION project_trainer_event(p_run_id bigint, p_attempt int, p_type text, p_payload jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_epoch int := (p_payload ->> 'epoch')::int;
  v_checkpoint_id bigint;
BEGIN
  IF p_type = 'data.prepared' THEN
    UPDATE training_runs SET data_summary = p_payload, updated_at = now() WHERE id = p_run_id;
  ELSIF p_type = 'epoch.completed' THEN
    UPDATE training_runs SET current_epoch = greatest(current_epoch, v_epoch), updated_at = now()
     WHERE id = p_run_id;
  ELSIF p_type = 'checkpoint.saved' THEN
    INSERT INTO checkpoints (run_id, attempt, epoch, manifest_url, size_bytes, shard_count,
                             train_loss, val_loss, val_recall_at_1, val_recall_at_5,
                             val_recall_at_10, val_map, metrics)
    VALUES (p_run_id, p_attempt, v_epoch, p_payload ->> 'manifest_url',
            (p_payload ->> 'size_bytes')::bigint, (p_payload ->> 'shard_count')::int,
            (p_payload ->> 'train_loss')::float8, (p_payload ->> 'val_loss')::float8,
            (p_payload #>> '{metrics,recall_at_1}')::float8,
            (p_payload #>> '{metrics,recall_at_5}')::float8,
            (p_payload #>> '{metrics,recall_at_10}')::float8,
            (p_payload #>> '{metrics,map}')::float8,
            coalesce(p_payload -> 'metrics', '{}'::jsonb))
    ON CONFLICT (run_id, epoch) DO UPDATE
       SET attempt = excluded.attempt, manifest_url = excluded.manifest_url,
           size_bytes = excluded.size_bytes, shard_count = excluded.shard_count,
           train_loss = excluded.train_loss, val_loss = excluded.val_loss,
           val_recall_at_1 = excluded.val_recall_at_1, val_recall_at_5 = excluded.val_recall_at_5,
           val_recall_at_10 = excluded.val_recall_at_10, val_map = excluded.val_map,
           metrics = excluded.metrics, created_at = now();
  ELSIF p_type = 'checkpoint.best' THEN
    UPDATE checkpoints SET is_best = false WHERE run_id = p_run_id AND is_best AND epoch <> v_epoch;
    UPDATE checkpoints SET is_best = true WHERE run_id = p_run_id AND epoch = v_epoch
    RETURNING id INTO v_checkpoint_id;
    UPDATE training_runs
       SET best_checkpoint_id = v_checkpoint_id,
           best_val_recall_at_1 = (p_payload #>> '{metrics,recall_at_1}')::float8,
           updated_at = now()
     WHERE id = p_run_id;
  ELSIF p_type = 'checkpoint.deleted' THEN
    DELETE FROM checkpoints WHERE run_id = p_run_id AND epoch = v_epoch AND NOT is_best;
  ELSIF p_type = 'eval.completed' THEN
    SELECT id INTO v_checkpoint_id FROM checkpoints WHERE run_id = p_run_id AND epoch = v_epoch;
    INSERT INTO evaluations (run_id, checkpoint_id, split, overall, real_to_synthetic,
                             synthetic_to_real, per_category, hard_cases)
    VALUES (p_run_id, v_checkpoint_id, coalesce(p_payload ->> 'split', 'test'),
            p_payload -> 'overall', p_payload -> 'real_to_synthetic',
            p_payload -> 'synthetic_to_real', p_payload -> 'per_category',
            p_payload -> 'hard_cases');
    UPDATE training_runs SET test_metrics = p_payload -> 'overall', updated_at = now()
     WHERE id = p_run_id;
  END IF;
END $$;

-- The trainer's event stream: batched, ordered and idempotent on the trainer's own sequence
-- numbers (a retried batch is a no-op), fenced on the lease epoch. Returns the last stored
-- trainer sequence number.
CREATE FUNCTION append_trainer_events(p_run_id bigint, p_lease_epoch bigint, p_first_seq int,
                                      p_types text[], p_payloads jsonb[])
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
  v_attempt int;
  v_event_seq int;
  v_trainer_seq int;
  v_n int := coalesce(array_length(p_types, 1), 0);
  v_skip int;
  i int;
BEGIN
  SELECT attempt, event_seq, trainer_seq INTO v_attempt, v_event_seq, v_trainer_seq
    FROM training_runs WHERE id = p_run_id AND lease_epoch = p_lease_epoch FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'lease lost: run % is no longer held at lease epoch %', p_run_id, p_lease_epoch
      USING ERRCODE = 'SK001';
  END IF;
  IF p_first_seq > v_trainer_seq + 1 THEN
    RAISE EXCEPTION 'event gap: run % expects trainer seq %, got %', p_run_id, v_trainer_seq + 1,
      p_first_seq USING ERRCODE = 'SK002';
  END IF;
  v_skip := greatest(v_trainer_seq - p_first_seq + 1, 0);
  IF v_skip >= v_n THEN
    RETURN v_trainer_seq;
  END IF;
  FOR i IN v_skip + 1 .. v_n LOOP
    v_event_seq := v_event_seq + 1;
    INSERT INTO training_events (run_id, attempt, seq, type, payload)
    VALUES (p_run_id, v_attempt, v_event_seq, p_types[i], p_payloads[i]);
    PERFORM project_trainer_event(p_run_id, v_attempt, p_types[i], p_payloads[i]);
  END LOOP;
  UPDATE training_runs SET event_seq = v_event_seq, trainer_seq = p_first_seq + v_n - 1
   WHERE id = p_run_id;
  RETURN p_first_seq + v_n - 1;
END $$;

-- Cancel: a queued run at once; a claimed or running one is flagged for its holder.
CREATE FUNCTION request_cancel(p_run_id bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  v_status text;
  v_requested timestamptz;
BEGIN
  SELECT status, cancel_requested_at INTO v_status, v_requested
    FROM training_runs WHERE id = p_run_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'training run % does not exist', p_run_id USING ERRCODE = 'no_data_found';
  END IF;
  IF v_status IN ('completed', 'failed', 'cancelled') OR v_requested IS NOT NULL THEN
    RETURN v_status;
  END IF;
  UPDATE training_runs SET cancel_requested_at = now(), updated_at = now() WHERE id = p_run_id;
  PERFORM emit_run_event(p_run_id, 'run.cancel_requested', jsonb_build_object('status', v_status));
  IF v_status = 'queued' THEN
    UPDATE training_runs SET status = 'cancelled', finished_at = now() WHERE id = p_run_id;
    PERFORM emit_run_event(p_run_id, 'run.cancelled', jsonb_build_object('reason', 'cancelled while queued'));
    RETURN 'cancelled';
  END IF;
  PERFORM pg_notify('skutrain_cancel', p_run_id::text);
  RETURN v_status;
END $$;

-- Commit-safe consumption: rows strictly after the (txid, id) cursor whose transaction is
-- older than every transaction still in progress, so no later commit can land behind it.
CREATE FUNCTION training_events_after(p_txid xid8, p_id bigint, p_limit int DEFAULT 100)
RETURNS SETOF training_events LANGUAGE sql STABLE AS $$
  SELECT * FROM training_events
   WHERE (txid, id) > (p_txid, p_id)
     AND txid < pg_snapshot_xmin(pg_current_snapshot())
   ORDER BY txid, id
   LIMIT p_limit
$$;
