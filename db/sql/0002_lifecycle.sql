-- Schema revision 0002: run lifecycle (reconciler, leases, resume, deletes). Applied by
-- alembic/versions/0002_lifecycle.py; undone by 0002_lifecycle.down.sql.

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

CREATE FUNCTION project_checkpoint_saved(p_run_id bigint, p_attempt int, p_payload jsonb)
RETURNS void LANGUAGE sql AS $$
  INSERT INTO checkpoints (run_id, attempt, epoch, manifest_url, size_bytes, shard_count,
                           train_loss, val_loss, val_recall_at_1, val_recall_at_5,
                           val_recall_at_10, val_map, metrics)
  VALUES (p_run_id, p_attempt, (p_payload ->> 'epoch')::int, p_payload ->> 'manifest_url',
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
$$;

CREATE FUNCTION project_checkpoint_best(p_run_id bigint, p_attempt int, p_payload jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_epoch int := (p_payload ->> 'epoch')::int;
  v_checkpoint_id bigint;
BEGIN
  UPDATE checkpoints SET is_best = false WHERE run_id = p_run_id AND is_best AND epoch <> v_epoch;
  UPDATE checkpoints SET is_best = true WHERE run_id = p_run_id AND epoch = v_epoch
  RETURNING id INTO v_checkpoint_id;
  UPDATE training_runs
     SET best_checkpoint_id = v_checkpoint_id,
         best_val_recall_at_1 = (p_payload #>> '{metrics,recall_at_1}')::float8,
         updated_at = now()
   WHERE id = p_run_id;
END $$;

CREATE FUNCTION project_checkpoint_deleted(p_run_id bigint, p_attempt int, p_payload jsonb)
RETURNS void LANGUAGE sql AS $$
  DELETE FROM checkpoints
   WHERE run_id = p_run_id AND epoch = (p_payload ->> 'epoch')::int AND NOT is_best;
$$;

CREATE FUNCTION project_eval_completed(p_run_id bigint, p_attempt int, p_payload jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_checkpoint_id bigint;
BEGIN
  SELECT id INTO v_checkpoint_id FROM checkpoints
   WHERE run_id = p_run_id AND epoch = (p_payload ->> 'epoch')::int;
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
