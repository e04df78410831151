-- Undo schema revision 0002: back to revision 0001's functions.
DROP FUNCTION IF EXISTS heartbeat_run(bigint, bigint, double precision, bigint);
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

DROP FUNCTION IF EXISTS project_data_prepared(bigint, int, jsonb);
DROP FUNCTION IF EXISTS project_epoch_completed(bigint, int, jsonb);
DROP FUNCTION IF EXISTS project_checkpoint_saved(bigint, int, jsonb);
DROP FUNCTION IF EXISTS project_checkpoint_best(bigint, int, jsonb);
DROP FUNCTION IF EXISTS project_checkpoint_deleted(bigint, int, jsonb);
DROP FUNCTION IF EXISTS project_eval_completed(bigint, int, jsonb);

-- Derived state that a trainer event carries into rows, in the event's own transaction.
CREATE OR REPLACE FUNCTION project_trainer_event(p_run_id bigint, p_attempt int, p_type text, p_payload jsonb)
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

DROP TRIGGER IF EXISTS training_runs_before_delete ON training_runs;
DROP FUNCTION IF EXISTS training_runs_before_delete();
DROP FUNCTION IF EXISTS drop_superseded_resume_states(bigint);
DROP FUNCTION IF EXISTS settle_checkpoints(bigint, bigint, bigint[]);
DROP FUNCTION IF EXISTS remove_run(bigint);
DROP FUNCTION IF EXISTS remove_checkpoint(bigint);
DROP FUNCTION IF EXISTS request_checkpoint_delete(bigint, boolean);
DROP FUNCTION IF EXISTS request_delete(bigint, boolean);
DROP FUNCTION IF EXISTS unlink_models(bigint[], boolean, text);
DROP FUNCTION IF EXISTS end_launch(bigint, int, text);
DROP FUNCTION IF EXISTS recover_attempt(bigint, bigint, text, text, int);
DROP FUNCTION IF EXISTS request_resume(bigint);
DROP FUNCTION IF EXISTS queue_resume(bigint, text);
DROP FUNCTION IF EXISTS remaining_epochs(int, int);
DROP FUNCTION IF EXISTS mark_launched(bigint, bigint, text, text, jsonb);
DROP FUNCTION IF EXISTS mark_launched_batch(bigint[], bigint[], text, text[], jsonb[]);
DROP FUNCTION start_run(bigint, bigint, double precision, jsonb);
ALTER FUNCTION start_run_unlocked(bigint, bigint, double precision, jsonb) RENAME TO start_run;
DROP FUNCTION finish_run(bigint, bigint, text, text, text, jsonb);
ALTER FUNCTION finish_run_unlocked(bigint, bigint, text, text, text, jsonb) RENAME TO finish_run;
DROP FUNCTION release_run(bigint, bigint, text);
ALTER FUNCTION release_run_unlocked(bigint, bigint, text) RENAME TO release_run;
DROP FUNCTION append_trainer_events(bigint, bigint, int, text[], jsonb[]);
ALTER FUNCTION append_trainer_events_unlocked(bigint, bigint, int, text[], jsonb[])
  RENAME TO append_trainer_events;
DROP FUNCTION IF EXISTS lock_run_events(bigint);

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

-- Cancel: a queued run at once; a claimed or running one is flagged for its holder.
CREATE OR REPLACE FUNCTION request_cancel(p_run_id bigint) RETURNS text LANGUAGE plpgsql AS $$
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

DROP FUNCTION IF EXISTS checkpoint_for_epoch(bigint, int);
DROP TABLE IF EXISTS deleted_runs;
DROP TABLE IF EXISTS run_launches;
DROP INDEX IF EXISTS ix_checkpoints_delete_requested;
DROP INDEX IF EXISTS ix_training_runs_delete_requested;
-- Later attempts may have saved an epoch again: keep the newest row of each epoch.
DELETE FROM checkpoints c USING checkpoints newer
 WHERE newer.run_id = c.run_id AND newer.epoch = c.epoch AND newer.attempt > c.attempt;
ALTER TABLE checkpoints
  DROP CONSTRAINT uq_checkpoints_run_attempt_epoch,
  DROP COLUMN resume_state_url,
  DROP COLUMN delete_requested_at,
  ADD CONSTRAINT uq_checkpoints_run_epoch UNIQUE (run_id, epoch);
DROP INDEX IF EXISTS ix_training_runs_checkpoints_dirty;
ALTER TABLE training_runs
  DROP CONSTRAINT uq_training_runs_run_uuid,
  DROP COLUMN checkpoints_dirty,
  DROP COLUMN run_uuid,
  DROP COLUMN progress_step,
  DROP COLUMN progress_at,
  DROP COLUMN delete_requested_at;
