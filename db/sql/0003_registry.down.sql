-- Undo schema revision 0003.
DROP VIEW run_metrics_history;
DROP VIEW extraction_models;
DROP FUNCTION register_model(bigint, text);
DROP FUNCTION record_evaluation(bigint, jsonb);

-- project_eval_completed as revision 0002 defines it.
CREATE OR REPLACE FUNCTION project_eval_completed(p_run_id bigint, p_attempt int, p_payload jsonb)
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

DROP FUNCTION insert_evaluation(bigint, bigint, jsonb, boolean);
ALTER TABLE trained_models
  DROP CONSTRAINT fk_trained_models_evaluation,
  DROP COLUMN evaluation_id,
  DROP COLUMN test_split_digest,
  DROP COLUMN per_category;
DROP INDEX ix_evaluations_checkpoint;
ALTER TABLE evaluations
  DROP COLUMN on_demand,
  DROP COLUMN num_images,
  DROP COLUMN split_digest,
  DROP COLUMN domain_pairs;
