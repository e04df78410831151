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
-- same (run, attempt, epoch) stored twice (a retried batch) is a no-op.
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
