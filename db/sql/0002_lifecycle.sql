-- Schema revision 0002: run lifecycle (reconciler, leases, resume, deletes). Applied by
-- alembic/versions/0002_lifecycle.py; undone by 0002_lifecycle.down.sql.

-- Run identity, training progress and immutable checkpoints.
ALTER TABLE training_runs
  ADD COLUMN run_uuid uuid NOT NULL DEFAULT gen_random_uuid(),
  ADD COLUMN progress_step bigint,
  ADD COLUMN progress_at timestamptz,
  ADD COLUMN delete_requested_at timestamptz,
  ADD CONSTRAINT uq_training_runs_run_uuid UNIQUE (run_uuid);

ALTER TABLE checkpoints
  DROP CONSTRAINT uq_checkpoints_run_epoch,
  ADD CONSTRAINT uq_checkpoints_run_attempt_epoch UNIQUE (run_id, attempt, epoch),
  ADD COLUMN resume_state_url text,
  ADD COLUMN delete_requested_at timestamptz;

-- A checkpoint was saved or removed: the reconciler re-checks is_best and retention.
ALTER TABLE training_runs ADD COLUMN checkpoints_dirty boolean NOT NULL DEFAULT false;
CREATE INDEX ix_training_runs_checkpoints_dirty ON training_runs (id) WHERE checkpoints_dirty;

-- Sweeps read only rows that need work: runs and checkpoints marked for deletion.
CREATE INDEX ix_training_runs_delete_requested ON training_runs (delete_requested_at)
 WHERE delete_requested_at IS NOT NULL;
CREATE INDEX ix_checkpoints_delete_requested ON checkpoints (delete_requested_at)
 WHERE delete_requested_at IS NOT NULL;

-- One launch per (run, attempt): which launcher started the job and what identifies it
-- (local: host, pid and process start time), so any dispatcher or reconciler can tell after a
-- restart whether it still runs. ended_at is set once the job is seen gone.
CREATE TABLE run_launches (
  run_id bigint NOT NULL REFERENCES training_runs (id) ON DELETE CASCADE,
  attempt integer NOT NULL,
  lease_epoch bigint NOT NULL,
  launcher text NOT NULL,
  owner text,
  external_job_id text,
  identity jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  launched_at timestamptz,
  ended_at timestamptz,
  end_reason text,
  CONSTRAINT pk_run_launches PRIMARY KEY (run_id, attempt)
);
CREATE INDEX ix_run_launches_live ON run_launches (launcher) WHERE ended_at IS NULL;

-- A run row deleted (by request_delete's sweep or by hand) leaves a tombstone naming its
-- storage prefix and last launch, so the reconciler stops its job and cleans its objects.
CREATE TABLE deleted_runs (
  run_id bigint NOT NULL,
  run_uuid uuid NOT NULL,
  name text NOT NULL,
  launcher text,
  external_job_id text,
  identity jsonb,
  deleted_at timestamptz NOT NULL DEFAULT now(),
  cleaned_at timestamptz,
  CONSTRAINT pk_deleted_runs PRIMARY KEY (run_id)
);
CREATE INDEX ix_deleted_runs_unclean ON deleted_runs (deleted_at) WHERE cleaned_at IS NULL;

-- A run's checkpoint of one epoch: the row of the highest attempt that saved it.
CREATE FUNCTION checkpoint_for_epoch(p_run_id bigint, p_epoch int) RETURNS bigint
LANGUAGE sql STABLE AS $$
  SELECT id FROM checkpoints WHERE run_id = p_run_id AND epoch = p_epoch
   ORDER BY attempt DESC LIMIT 1
$$;

-- Trainer event projections, one function per event type, so a later revision replaces the
-- projection of one event without copying the others.
CREATE FUNCTION project_data_prepared(p_run_id bigint, p_attempt int, p_payload jsonb)
RETURNS void LANGUAGE sql AS $$
  UPDATE training_runs SET data_summary = p_payload, updated_at = now() WHERE id = p_run_id;
$$;

CREATE FUNCTION project_epoch_completed(p_run_id bigint, p_attempt int, p_payload jsonb)
RETURNS void LANGUAGE sql AS $$
  UPDATE training_runs
     SET current_epoch = greatest(current_epoch, (p_payload ->> 'epoch')::int), updated_at = now()
   WHERE id = p_run_id;
$$;

-- Checkpoint rows are immutable: an epoch saved again by a later attempt is a new row, and the
-- same (run, attempt, epoch) stored twice (a retried batch) is a no-op. A saved checkpoint also
-- tells the reconciler to re-check the run's best and retention (checkpoints_dirty).
CREATE FUNCTION project_checkpoint_saved(p_run_id bigint, p_attempt int, p_payload jsonb)
RETURNS void LANGUAGE sql AS $$
  INSERT INTO checkpoints (run_id, attempt, epoch, manifest_url, size_bytes, shard_count,
                           train_loss, val_loss, val_recall_at_1, val_recall_at_5,
                           val_recall_at_10, val_map, metrics, resume_state_url)
  VALUES (p_run_id, p_attempt, (p_payload ->> 'epoch')::int, p_payload ->> 'manifest_url',
          (p_payload ->> 'size_bytes')::bigint, (p_payload ->> 'shard_count')::int,
          (p_payload ->> 'train_loss')::float8, (p_payload ->> 'val_loss')::float8,
          (p_payload #>> '{metrics,recall_at_1}')::float8,
          (p_payload #>> '{metrics,recall_at_5}')::float8,
          (p_payload #>> '{metrics,recall_at_10}')::float8,
          (p_payload #>> '{metrics,map}')::float8,
          coalesce(p_payload -> 'metrics', '{}'::jsonb), p_payload ->> 'resume_state_url')
  ON CONFLICT (run_id, attempt, epoch) DO NOTHING;
  UPDATE training_runs SET checkpoints_dirty = true WHERE id = p_run_id AND NOT checkpoints_dirty;
$$;

CREATE FUNCTION project_checkpoint_best(p_run_id bigint, p_attempt int, p_payload jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_epoch int := (p_payload ->> 'epoch')::int;
  v_checkpoint_id bigint;
BEGIN
  v_checkpoint_id := checkpoint_for_epoch(p_run_id, v_epoch);
  UPDATE checkpoints SET is_best = false
   WHERE run_id = p_run_id AND is_best AND id IS DISTINCT FROM v_checkpoint_id;
  UPDATE checkpoints SET is_best = true WHERE id = v_checkpoint_id;
  UPDATE training_runs
     SET best_checkpoint_id = v_checkpoint_id,
         best_val_recall_at_1 = (p_payload #>> '{metrics,recall_at_1}')::float8,
         updated_at = now()
   WHERE id = p_run_id;
END $$;

CREATE FUNCTION project_checkpoint_deleted(p_run_id bigint, p_attempt int, p_payload jsonb)
RETURNS void LANGUAGE sql AS $$
  DELETE FROM checkpoints
   WHERE run_id = p_run_id AND attempt = p_attempt AND epoch = (p_payload ->> 'epoch')::int
     AND NOT is_best;
$$;

CREATE FUNCTION project_eval_completed(p_run_id bigint, p_attempt int, p_payload jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_checkpoint_id bigint;
BEGIN
  v_checkpoint_id := checkpoint_for_epoch(p_run_id, (p_payload ->> 'epoch')::int);
  INSERT INTO evaluations (run_id, checkpoint_id, split, overall, real_to_synthetic,
                           synthetic_to_real, per_category, hard_cases)
  VALUES (p_run_id, v_checkpoint_id, coalesce(p_payload ->> 'split', 'test'),
          p_payload -> 'overall', p_payload -> 'real_to_synthetic',
          p_payload -> 'synthetic_to_real', p_payload -> 'per_category',
          p_payload -> 'hard_cases');
  UPDATE training_runs SET test_metrics = p_payload -> 'overall', updated_at = now()
   WHERE id = p_run_id;
END $$;

CREATE OR REPLACE FUNCTION project_trainer_event(p_run_id bigint, p_attempt int, p_type text,
                                                 p_payload jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  CASE p_type
    WHEN 'data.prepared' THEN PERFORM project_data_prepared(p_run_id, p_attempt, p_payload);
    WHEN 'epoch.completed' THEN PERFORM project_epoch_completed(p_run_id, p_attempt, p_payload);
    WHEN 'checkpoint.saved' THEN PERFORM project_checkpoint_saved(p_run_id, p_attempt, p_payload);
    WHEN 'checkpoint.best' THEN PERFORM project_checkpoint_best(p_run_id, p_attempt, p_payload);
    WHEN 'checkpoint.deleted' THEN PERFORM project_checkpoint_deleted(p_run_id, p_attempt, p_payload);
    WHEN 'eval.completed' THEN PERFORM project_eval_completed(p_run_id, p_attempt, p_payload);
    ELSE NULL;
  END CASE;
END $$;

-- The heartbeat also reports training progress: progress_at moves only when the step advances,
-- so a live process that no longer trains is seen as stalled.
DROP FUNCTION heartbeat_run(bigint, bigint, double precision);
CREATE FUNCTION heartbeat_run(p_run_id bigint, p_lease_epoch bigint,
                              p_lease_seconds double precision, p_step bigint DEFAULT NULL,
                              OUT owned boolean, OUT cancel_requested boolean)
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE training_runs
     SET lease_expires_at = now() + make_interval(secs => p_lease_seconds),
         progress_at = CASE WHEN p_step > coalesce(progress_step, -1) THEN now()
                            ELSE progress_at END,
         progress_step = greatest(progress_step, p_step)
   WHERE id = p_run_id AND lease_epoch = p_lease_epoch AND status IN ('claimed', 'running')
  RETURNING true, cancel_requested_at IS NOT NULL INTO owned, cancel_requested;
  IF NOT FOUND THEN
    owned := false;
    cancel_requested := false;
  END IF;
END $$;

-- ---------------------------------------------------------------------------------------------
-- Event order. A consumer reads events in (txid, id) order, so one run's events must be written
-- in transactions whose xids grow with seq. Every function below that writes a run's events
-- first takes this lock, before anything assigns its transaction an xid: a writer waiting for
-- the run gets its xid after the previous writer's.
CREATE FUNCTION lock_run_events(p_run_id bigint) RETURNS void LANGUAGE sql AS $$
  SELECT pg_advisory_xact_lock(1802658676, (p_run_id % 2147483647)::int);
$$;

-- Revision 0001's event-writing functions take the lock too: each is renamed *_unlocked and
-- called by a wrapper of the same name and signature that locks first.
ALTER FUNCTION start_run(bigint, bigint, double precision, jsonb) RENAME TO start_run_unlocked;
CREATE FUNCTION start_run(p_run_id bigint, p_lease_epoch bigint, p_lease_seconds double precision,
                          p_payload jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  PERFORM lock_run_events(p_run_id);
  RETURN start_run_unlocked(p_run_id, p_lease_epoch, p_lease_seconds, p_payload);
END $$;

ALTER FUNCTION finish_run(bigint, bigint, text, text, text, jsonb) RENAME TO finish_run_unlocked;
CREATE FUNCTION finish_run(p_run_id bigint, p_lease_epoch bigint, p_status text,
                           p_error_code text DEFAULT NULL, p_error_message text DEFAULT NULL,
                           p_payload jsonb DEFAULT '{}'::jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  PERFORM lock_run_events(p_run_id);
  RETURN finish_run_unlocked(p_run_id, p_lease_epoch, p_status, p_error_code, p_error_message,
                             p_payload);
END $$;

ALTER FUNCTION release_run(bigint, bigint, text) RENAME TO release_run_unlocked;
CREATE FUNCTION release_run(p_run_id bigint, p_lease_epoch bigint, p_reason text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  PERFORM lock_run_events(p_run_id);
  RETURN release_run_unlocked(p_run_id, p_lease_epoch, p_reason);
END $$;

ALTER FUNCTION append_trainer_events(bigint, bigint, int, text[], jsonb[])
  RENAME TO append_trainer_events_unlocked;
CREATE FUNCTION append_trainer_events(p_run_id bigint, p_lease_epoch bigint, p_first_seq int,
                                      p_types text[], p_payloads jsonb[])
RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  PERFORM lock_run_events(p_run_id);
  RETURN append_trainer_events_unlocked(p_run_id, p_lease_epoch, p_first_seq, p_types,
                                        p_payloads);
END $$;


-- ---------------------------------------------------------------------------------------------
-- Launches. A job is started held at a gate; mark_launched records what identifies it and emits
-- run.launched; only then is the job let go, so run.launched precedes the trainer's first event.
DROP FUNCTION mark_launched(bigint, bigint, text, text);

-- Record launches (once per attempt, fenced on lease_epoch) with what identifies each job, and
-- emit run.launched; one set-based statement for a dispatcher's whole batch, one commit. Every
-- run's event lock is taken first, in id order, before anything gives the transaction an xid,
-- so a batch cannot reorder any run's events. Returns, per run, whether its launch was recorded.
CREATE FUNCTION mark_launched_batch(p_run_ids bigint[], p_lease_epochs bigint[], p_launcher text,
                                    p_external_job_ids text[], p_identities jsonb[])
RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
  v_recorded boolean[];
BEGIN
  PERFORM lock_run_events(id) FROM unnest(p_run_ids) AS id ORDER BY id;
  WITH input AS (
    SELECT * FROM unnest(p_run_ids, p_lease_epochs, p_external_job_ids, p_identities)
      WITH ORDINALITY AS t(run_id, lease_epoch, job_id, identity, n)
  ), marked AS (
    UPDATE training_runs r
       SET launcher = p_launcher, external_job_id = i.job_id, launched_attempt = r.attempt,
           event_seq = r.event_seq + 1, updated_at = now()
      FROM input i
     WHERE r.id = i.run_id AND r.lease_epoch = i.lease_epoch
       AND r.status IN ('claimed', 'running') AND r.launched_attempt IS DISTINCT FROM r.attempt
    RETURNING r.id, r.attempt, r.event_seq, r.lease_owner, i.lease_epoch, i.job_id, i.identity
  ), launches AS (
    INSERT INTO run_launches (run_id, attempt, lease_epoch, launcher, owner, external_job_id,
                              identity, launched_at)
    SELECT id, attempt, lease_epoch, p_launcher, lease_owner, job_id,
           coalesce(identity, '{}'::jsonb), now() FROM marked
  ), events AS (
    INSERT INTO training_events (run_id, attempt, seq, type, payload)
    SELECT id, attempt, event_seq, 'run.launched',
           jsonb_build_object('launcher', p_launcher, 'external_job_id', job_id) FROM marked
  )
  SELECT array_agg(m.id IS NOT NULL ORDER BY i.n) INTO v_recorded
    FROM input i LEFT JOIN marked m ON m.id = i.run_id;
  RETURN coalesce(v_recorded, '{}');
END $$;

CREATE FUNCTION mark_launched(p_run_id bigint, p_lease_epoch bigint, p_launcher text,
                              p_external_job_id text, p_identity jsonb DEFAULT '{}'::jsonb)
RETURNS boolean LANGUAGE sql AS $$
  SELECT (mark_launched_batch(ARRAY[p_run_id], ARRAY[p_lease_epoch], p_launcher,
                              ARRAY[p_external_job_id], ARRAY[p_identity]))[1]
$$;

-- Remaining epochs when a run resumes after its checkpoint of `p_last_completed_epoch` (0: none
-- finished); never negative. The one definition (queue_resume reports it in run.resumed).
CREATE FUNCTION remaining_epochs(p_total_epochs int, p_last_completed_epoch int)
RETURNS int LANGUAGE sql IMMUTABLE AS $$
  SELECT greatest(coalesce(p_total_epochs, 0) - coalesce(p_last_completed_epoch, 0), 0)
$$;

-- Queue a run again to continue from its last checkpoint that has resume state. The caller
-- holds the run's event lock. Bumps lease_epoch so the previous attempt is fenced out at once.
CREATE FUNCTION queue_resume(p_run_id bigint, p_reason text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
  v_checkpoint checkpoints%ROWTYPE;
  v_total int;
  v_remaining int;
BEGIN
  SELECT c.* INTO v_checkpoint FROM checkpoints c
   WHERE c.run_id = p_run_id AND c.resume_state_url IS NOT NULL AND c.delete_requested_at IS NULL
   ORDER BY c.epoch DESC, c.attempt DESC LIMIT 1;
  SELECT coalesce(total_epochs, (config #>> '{training,epochs}')::int) INTO v_total
    FROM training_runs WHERE id = p_run_id;
  v_remaining := remaining_epochs(v_total, coalesce(v_checkpoint.epoch, 0));
  UPDATE training_runs
     SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,
         lease_epoch = lease_epoch + 1, resume_from_checkpoint_id = v_checkpoint.id,
         cancel_requested_at = NULL, error_code = NULL, error_message = NULL,
         finished_at = NULL, progress_step = NULL, progress_at = NULL, updated_at = now()
   WHERE id = p_run_id;
  PERFORM emit_run_event(p_run_id, 'run.resumed', jsonb_build_object(
    'checkpoint_id', v_checkpoint.id, 'epoch', coalesce(v_checkpoint.epoch, 0),
    'remaining_epochs', v_remaining, 'reason', p_reason));
  PERFORM pg_notify('skutrain_runs', 'queued');
  RETURN v_remaining;
END $$;

-- Continue a failed or cancelled run from its last checkpoint (SK010 for any other state).
CREATE FUNCTION request_resume(p_run_id bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  v_status text;
  v_delete timestamptz;
BEGIN
  PERFORM lock_run_events(p_run_id);
  SELECT status, delete_requested_at INTO v_status, v_delete
    FROM training_runs WHERE id = p_run_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'training run % does not exist', p_run_id USING ERRCODE = 'no_data_found';
  END IF;
  IF v_delete IS NOT NULL THEN
    RAISE EXCEPTION 'run % is being deleted and cannot be resumed', p_run_id USING ERRCODE = 'SK010';
  END IF;
  IF v_status NOT IN ('failed', 'cancelled') THEN
    RAISE EXCEPTION 'run % is %: only a failed or cancelled run can be resumed', p_run_id, v_status
      USING ERRCODE = 'SK010';
  END IF;
  PERFORM queue_resume(p_run_id, 'requested');
  RETURN 'queued';
END $$;

-- The job of the run's current attempt is gone or hung: end its launch record and requeue the
-- run to resume (attempt + 1 at the next claim), or fail it once it used p_max_attempts.
-- A run whose cancel was requested ends cancelled instead. Fenced on lease_epoch; returns the
-- run's new status, or NULL when the fence did not hold.
CREATE FUNCTION recover_attempt(p_run_id bigint, p_lease_epoch bigint, p_error_code text,
                                p_message text, p_max_attempts int)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  v_attempt int;
  v_cancel timestamptz;
BEGIN
  PERFORM lock_run_events(p_run_id);
  SELECT attempt, cancel_requested_at INTO v_attempt, v_cancel FROM training_runs
   WHERE id = p_run_id AND lease_epoch = p_lease_epoch AND status IN ('claimed', 'running')
   FOR UPDATE;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  UPDATE run_launches SET ended_at = coalesce(ended_at, now()), end_reason = p_error_code
   WHERE run_id = p_run_id AND attempt = v_attempt;
  IF v_cancel IS NOT NULL THEN
    PERFORM finish_run(p_run_id, p_lease_epoch, 'cancelled', NULL, NULL,
      jsonb_build_object('reason', 'cancelled: the job stopped (' || p_error_code || ')'));
    RETURN 'cancelled';
  END IF;
  IF v_attempt >= p_max_attempts THEN
    PERFORM finish_run(p_run_id, p_lease_epoch, 'failed', p_error_code,
      p_message || format(' (attempt %s of %s: no attempts left)', v_attempt, p_max_attempts));
    RETURN 'failed';
  END IF;
  PERFORM emit_run_event(p_run_id, 'run.requeued',
    jsonb_build_object('reason', p_error_code, 'message', p_message, 'attempt', v_attempt));
  PERFORM queue_resume(p_run_id, p_error_code);
  RETURN 'queued';
END $$;

-- Close a launch record whose job is gone after its run ended (or was requeued).
CREATE FUNCTION end_launch(p_run_id bigint, p_attempt int, p_reason text) RETURNS boolean
LANGUAGE sql AS $$
  UPDATE run_launches SET ended_at = now(), end_reason = p_reason
   WHERE run_id = p_run_id AND attempt = p_attempt AND ended_at IS NULL
  RETURNING true
$$;

-- ---------------------------------------------------------------------------------------------
-- Cancel: a queued run at once; a claimed or running one is flagged for its holder (the
-- reconciler stops its job after a grace period); a finished one is refused.
CREATE OR REPLACE FUNCTION request_cancel(p_run_id bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  v_status text;
  v_requested timestamptz;
BEGIN
  PERFORM lock_run_events(p_run_id);
  SELECT status, cancel_requested_at INTO v_status, v_requested
    FROM training_runs WHERE id = p_run_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'training run % does not exist', p_run_id USING ERRCODE = 'no_data_found';
  END IF;
  IF v_status IN ('completed', 'failed', 'cancelled') THEN
    RAISE EXCEPTION 'run % already ended as %: there is nothing to cancel', p_run_id, v_status
      USING ERRCODE = 'SK010';
  END IF;
  IF v_requested IS NOT NULL THEN
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

-- ---------------------------------------------------------------------------------------------
-- Deletes. Rows are marked, the reconciler deletes the bytes, then removes the rows; a trained
-- model linked to what is deleted refuses the request (SK010, naming the models) unless p_force,
-- which deregisters them first.
CREATE FUNCTION unlink_models(p_checkpoint_ids bigint[], p_force boolean, p_what text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_models text;
BEGIN
  SELECT string_agg(format('%s (id %s)', name, id), ', ' ORDER BY id) INTO v_models
    FROM trained_models WHERE checkpoint_id = ANY(p_checkpoint_ids);
  IF v_models IS NULL THEN
    RETURN;
  END IF;
  IF NOT p_force THEN
    RAISE EXCEPTION '% is used by trained model(s) %: deregister them first or delete with force',
      p_what, v_models USING ERRCODE = 'SK010';
  END IF;
  DELETE FROM trained_models WHERE checkpoint_id = ANY(p_checkpoint_ids);
END $$;

CREATE FUNCTION request_delete(p_run_id bigint, p_force boolean DEFAULT false) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  v_run training_runs%ROWTYPE;
BEGIN
  PERFORM lock_run_events(p_run_id);
  SELECT * INTO v_run FROM training_runs WHERE id = p_run_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'training run % does not exist', p_run_id USING ERRCODE = 'no_data_found';
  END IF;
  IF v_run.delete_requested_at IS NOT NULL THEN
    RETURN 'delete_requested';
  END IF;
  PERFORM unlink_models(ARRAY(SELECT id FROM checkpoints WHERE run_id = p_run_id), p_force,
                        format('run %s', p_run_id));
  IF v_run.status IN ('queued', 'claimed', 'running') THEN
    PERFORM request_cancel(p_run_id);
  END IF;
  UPDATE training_runs SET delete_requested_at = now(), updated_at = now() WHERE id = p_run_id;
  UPDATE checkpoints SET delete_requested_at = now()
   WHERE run_id = p_run_id AND delete_requested_at IS NULL;
  PERFORM emit_run_event(p_run_id, 'run.delete_requested', jsonb_build_object('force', p_force));
  PERFORM pg_notify('skutrain_reconcile', 'delete');
  RETURN 'delete_requested';
END $$;

CREATE FUNCTION request_checkpoint_delete(p_checkpoint_id bigint, p_force boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  v_checkpoint checkpoints%ROWTYPE;
BEGIN
  SELECT * INTO v_checkpoint FROM checkpoints WHERE id = p_checkpoint_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'checkpoint % does not exist', p_checkpoint_id USING ERRCODE = 'no_data_found';
  END IF;
  PERFORM lock_run_events(v_checkpoint.run_id);
  IF v_checkpoint.delete_requested_at IS NOT NULL THEN
    RETURN 'delete_requested';
  END IF;
  PERFORM unlink_models(ARRAY[p_checkpoint_id], p_force,
                        format('checkpoint %s (run %s, epoch %s)', p_checkpoint_id,
                               v_checkpoint.run_id, v_checkpoint.epoch));
  UPDATE checkpoints SET delete_requested_at = now() WHERE id = p_checkpoint_id;
  PERFORM emit_run_event(v_checkpoint.run_id, 'checkpoint.delete_requested',
    jsonb_build_object('checkpoint_id', p_checkpoint_id, 'epoch', v_checkpoint.epoch,
                       'attempt', v_checkpoint.attempt, 'force', p_force));
  PERFORM pg_notify('skutrain_reconcile', 'delete');
  RETURN 'delete_requested';
END $$;

-- The checkpoint's bytes are gone: remove its row and tell consumers.
CREATE FUNCTION remove_checkpoint(p_checkpoint_id bigint) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  v_run_id bigint;
  v_checkpoint checkpoints%ROWTYPE;
BEGIN
  SELECT run_id INTO v_run_id FROM checkpoints
   WHERE id = p_checkpoint_id AND delete_requested_at IS NOT NULL;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM lock_run_events(v_run_id);
  DELETE FROM checkpoints WHERE id = p_checkpoint_id AND delete_requested_at IS NOT NULL
  RETURNING * INTO v_checkpoint;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  UPDATE training_runs SET checkpoints_dirty = true,
         best_val_recall_at_1 = CASE WHEN v_checkpoint.is_best THEN NULL
                                     ELSE best_val_recall_at_1 END
   WHERE id = v_run_id;
  PERFORM emit_run_event(v_run_id, 'checkpoint.deleted', jsonb_build_object(
    'checkpoint_id', p_checkpoint_id, 'epoch', v_checkpoint.epoch,
    'attempt', v_checkpoint.attempt, 'manifest_url', v_checkpoint.manifest_url));
  RETURN true;
END $$;

-- A run marked for deletion whose checkpoints are all removed and that no longer runs: delete
-- its row (the delete trigger leaves the tombstone and the run.deleted event).
CREATE FUNCTION remove_run(p_run_id bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  PERFORM lock_run_events(p_run_id);
  DELETE FROM training_runs r
   WHERE r.id = p_run_id AND r.delete_requested_at IS NOT NULL
     AND r.status NOT IN ('claimed', 'running')
     AND NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.run_id = r.id);
  RETURN FOUND;
END $$;

-- However a run row goes (remove_run or a DELETE by hand), consumers see run.deleted and the
-- reconciler gets a tombstone to stop the job and clean the run's storage prefix.
CREATE FUNCTION training_runs_before_delete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  v_launch run_launches%ROWTYPE;
BEGIN
  SELECT * INTO v_launch FROM run_launches
   WHERE run_id = OLD.id ORDER BY attempt DESC LIMIT 1;
  INSERT INTO deleted_runs (run_id, run_uuid, name, launcher, external_job_id, identity)
  VALUES (OLD.id, OLD.run_uuid, OLD.name, v_launch.launcher, v_launch.external_job_id,
          CASE WHEN v_launch.ended_at IS NULL THEN v_launch.identity END)
  ON CONFLICT (run_id) DO NOTHING;
  INSERT INTO training_events (run_id, attempt, seq, type, payload)
  VALUES (OLD.id, OLD.attempt, OLD.event_seq + 1, 'run.deleted',
          jsonb_build_object('name', OLD.name, 'status', OLD.status,
                             'requested', OLD.delete_requested_at IS NOT NULL));
  PERFORM pg_notify('skutrain_reconcile', 'deleted');
  RETURN OLD;
END $$;

CREATE TRIGGER training_runs_before_delete BEFORE DELETE ON training_runs
FOR EACH ROW EXECUTE FUNCTION training_runs_before_delete();

-- Best checkpoint and retention, as the reconciler chose them (services/trainer/best.py) for a
-- run that no longer trains: exactly one is_best, retention through the delete path.
CREATE FUNCTION settle_checkpoints(p_run_id bigint, p_best_id bigint, p_delete_ids bigint[])
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  v_was bigint;
  v_best checkpoints%ROWTYPE;
BEGIN
  PERFORM lock_run_events(p_run_id);
  SELECT best_checkpoint_id INTO v_was FROM training_runs
   WHERE id = p_run_id AND status NOT IN ('claimed', 'running') FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  UPDATE checkpoints SET is_best = false
   WHERE run_id = p_run_id AND is_best AND id IS DISTINCT FROM p_best_id;
  UPDATE checkpoints SET is_best = true WHERE id = p_best_id AND run_id = p_run_id AND NOT is_best;
  SELECT * INTO v_best FROM checkpoints WHERE id = p_best_id AND run_id = p_run_id;
  UPDATE training_runs
     SET best_checkpoint_id = v_best.id, best_val_recall_at_1 = v_best.val_recall_at_1,
         checkpoints_dirty = false, updated_at = now()
   WHERE id = p_run_id;
  IF v_best.id IS DISTINCT FROM v_was AND v_best.id IS NOT NULL THEN
    PERFORM emit_run_event(p_run_id, 'checkpoint.best', jsonb_build_object(
      'epoch', v_best.epoch, 'checkpoint_id', v_best.id, 'metrics', v_best.metrics,
      'chosen_by', 'reconciler'));
  END IF;
  UPDATE checkpoints c SET delete_requested_at = now()
   WHERE c.run_id = p_run_id AND c.id = ANY(p_delete_ids) AND NOT c.is_best
     AND c.delete_requested_at IS NULL
     AND NOT EXISTS (SELECT 1 FROM trained_models m WHERE m.checkpoint_id = c.id);
  RETURN true;
END $$;

-- Superseded resume states of a run that no longer trains: only the latest resumable checkpoint
-- (the one queue_resume would choose) keeps its resume_state_url; every other row loses it.
-- Rows first: the reconciler deletes the bytes afterwards (services/reconciler/resume_states.py),
-- so no row ever names deleted bytes. Returns the run's uuid and the kept (epoch, attempt), or no
-- row when the run is active or gone.
CREATE FUNCTION drop_superseded_resume_states(p_run_id bigint)
RETURNS TABLE (run_uuid text, kept_epoch int, kept_attempt int) LANGUAGE plpgsql AS $$
DECLARE
  v_kept checkpoints%ROWTYPE;
BEGIN
  PERFORM lock_run_events(p_run_id);
  SELECT r.run_uuid::text INTO run_uuid FROM training_runs r
   WHERE r.id = p_run_id AND r.status NOT IN ('claimed', 'running') FOR UPDATE;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  SELECT c.* INTO v_kept FROM checkpoints c
   WHERE c.run_id = p_run_id AND c.resume_state_url IS NOT NULL AND c.delete_requested_at IS NULL
   ORDER BY c.epoch DESC, c.attempt DESC LIMIT 1;
  UPDATE checkpoints c SET resume_state_url = NULL
   WHERE c.run_id = p_run_id AND c.resume_state_url IS NOT NULL AND c.id IS DISTINCT FROM v_kept.id;
  kept_epoch := v_kept.epoch;
  kept_attempt := v_kept.attempt;
  RETURN NEXT;
END $$;
