-- Schema revision 0003: model registry, on-demand evaluations, metrics history. Applied by
-- alembic/versions/0003_registry.py; undone by 0003_registry.down.sql.

-- An evaluation names the images it scored: the digest of its split's (product, url) list, so
-- metrics of different test sets are never compared as if they were one.
ALTER TABLE evaluations
  ADD COLUMN domain_pairs jsonb,
  ADD COLUMN split_digest text,
  ADD COLUMN num_images int,
  ADD COLUMN on_demand boolean NOT NULL DEFAULT false;
CREATE INDEX ix_evaluations_checkpoint ON evaluations (checkpoint_id, split, id);

ALTER TABLE trained_models
  ADD COLUMN per_category jsonb,
  ADD COLUMN test_split_digest text,
  ADD COLUMN evaluation_id bigint,
  ADD CONSTRAINT fk_trained_models_evaluation FOREIGN KEY (evaluation_id)
    REFERENCES evaluations (id) ON DELETE SET NULL;

-- Store one evaluation document (the trainer's eval.completed payload or an on-demand one).
CREATE FUNCTION insert_evaluation(p_run_id bigint, p_checkpoint_id bigint, p_payload jsonb,
                                  p_on_demand boolean DEFAULT false)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_split text := coalesce(p_payload ->> 'split', 'test');
  v_digest text;
  v_images int;
  v_id bigint;
BEGIN
  SELECT md5(string_agg(product_id::text || ' ' || url, E'\n' ORDER BY product_id, url)),
         count(*)
    INTO v_digest, v_images
    FROM run_images WHERE run_id = p_run_id AND split = v_split;
  INSERT INTO evaluations (run_id, checkpoint_id, split, overall, real_to_synthetic,
                           synthetic_to_real, per_category, hard_cases, domain_pairs,
                           split_digest, num_images, on_demand)
  VALUES (p_run_id, p_checkpoint_id, v_split, p_payload -> 'overall',
          p_payload -> 'real_to_synthetic', p_payload -> 'synthetic_to_real',
          p_payload -> 'per_category', p_payload -> 'hard_cases', p_payload -> 'domain_pairs',
          v_digest, v_images, p_on_demand)
  RETURNING id INTO v_id;
  RETURN v_id;
END $$;

CREATE OR REPLACE FUNCTION project_eval_completed(p_run_id bigint, p_attempt int, p_payload jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM insert_evaluation(p_run_id, checkpoint_for_epoch(p_run_id, (p_payload ->> 'epoch')::int),
                            p_payload);
  UPDATE training_runs SET test_metrics = p_payload -> 'overall', updated_at = now()
   WHERE id = p_run_id;
END $$;

-- An on-demand evaluation of any checkpoint (`skutrain evaluate`); the run's event stream says so.
CREATE FUNCTION record_evaluation(p_checkpoint_id bigint, p_payload jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_run_id bigint;
  v_epoch int;
  v_id bigint;
BEGIN
  SELECT run_id, epoch INTO v_run_id, v_epoch FROM checkpoints WHERE id = p_checkpoint_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'checkpoint % does not exist', p_checkpoint_id USING ERRCODE = 'no_data_found';
  END IF;
  PERFORM lock_run_events(v_run_id);  -- before this transaction writes (see 0002)
  v_id := insert_evaluation(v_run_id, p_checkpoint_id, p_payload, true);
  PERFORM emit_run_event(v_run_id, 'evaluation.recorded', jsonb_build_object(
    'evaluation_id', v_id, 'checkpoint_id', p_checkpoint_id, 'epoch', v_epoch,
    'split', coalesce(p_payload ->> 'split', 'test'), 'overall', p_payload -> 'overall'));
  RETURN v_id;
END $$;

-- Register a checkpoint as a model, with its latest test evaluation's results.
CREATE FUNCTION register_model(p_checkpoint_id bigint, p_name text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  v_run_id bigint;
  v_eval evaluations%ROWTYPE;
  v_id bigint;
BEGIN
  SELECT run_id INTO v_run_id FROM checkpoints WHERE id = p_checkpoint_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'checkpoint % does not exist', p_checkpoint_id USING ERRCODE = 'no_data_found';
  END IF;
  PERFORM lock_run_events(v_run_id);  -- before this transaction writes (see 0002)
  IF p_name IS NULL OR btrim(p_name) = '' THEN
    RAISE EXCEPTION 'a model needs a name' USING ERRCODE = 'SK010';
  END IF;
  IF EXISTS (SELECT 1 FROM trained_models WHERE name = p_name) THEN
    RAISE EXCEPTION 'a model named "%" is already registered; choose another name', p_name
      USING ERRCODE = 'SK010';
  END IF;
  SELECT * INTO v_eval FROM evaluations
   WHERE checkpoint_id = p_checkpoint_id AND split = 'test' ORDER BY id DESC LIMIT 1;
  IF NOT FOUND THEN
    RAISE EXCEPTION
      'checkpoint % has no test evaluation; evaluate it first with `skutrain evaluate %`',
      p_checkpoint_id, p_checkpoint_id USING ERRCODE = 'SK010';
  END IF;
  INSERT INTO trained_models (name, checkpoint_id, test_metrics, cross_domain_metrics,
                              per_category, test_split_digest, evaluation_id)
  VALUES (p_name, p_checkpoint_id, v_eval.overall,
          jsonb_strip_nulls(jsonb_build_object('real_to_synthetic', v_eval.real_to_synthetic,
                                               'synthetic_to_real', v_eval.synthetic_to_real,
                                               'pairs', v_eval.domain_pairs)),
          v_eval.per_category, v_eval.split_digest, v_eval.id)
  RETURNING id INTO v_id;
  PERFORM emit_run_event(v_run_id, 'model.registered', jsonb_build_object(
    'model_id', v_id, 'name', p_name, 'checkpoint_id', p_checkpoint_id,
    'evaluation_id', v_eval.id));
  RETURN v_id;
END $$;

-- The models a model dropdown offers for extraction: active, with the checkpoint to load.
CREATE VIEW extraction_models AS
SELECT m.id, m.name, m.is_default, m.created_at, m.checkpoint_id, c.run_id, r.run_uuid,
       c.attempt, c.epoch, c.manifest_url, r.config ->> 'model' AS backbone,
       (r.config #>> '{training,embedding_dim}')::int AS embedding_dim,
       (m.test_metrics ->> 'recall_at_1')::float8 AS test_recall_at_1,
       (m.test_metrics ->> 'map')::float8 AS test_map
  FROM trained_models m
  JOIN checkpoints c ON c.id = m.checkpoint_id
  JOIN training_runs r ON r.id = c.run_id
 WHERE m.is_active AND c.delete_requested_at IS NULL;

-- One row per epoch.completed event: the training curves of every attempt.
CREATE VIEW run_metrics_history AS
SELECT e.run_id, e.attempt, (e.payload ->> 'epoch')::int AS epoch, e.created_at,
       (e.payload #>> '{loss,total}')::float8 AS loss_total,
       (e.payload #>> '{loss,arcface}')::float8 AS loss_arcface,
       (e.payload #>> '{loss,triplet}')::float8 AS loss_triplet,
       (e.payload #>> '{loss,domain}')::float8 AS loss_domain,
       e.payload -> 'loss' AS loss, e.payload -> 'lr' AS lr,
       (e.payload #>> '{val,loss}')::float8 AS val_loss,
       (e.payload #>> '{val,recall_at_1}')::float8 AS val_recall_at_1,
       (e.payload #>> '{val,recall_at_5}')::float8 AS val_recall_at_5,
       (e.payload #>> '{val,recall_at_10}')::float8 AS val_recall_at_10,
       (e.payload #>> '{val,map}')::float8 AS val_map,
       e.payload -> 'val' AS val,
       (e.payload ->> 'images_per_second')::float8 AS images_per_second,
       (e.payload ->> 'duration_s')::float8 AS duration_s
  FROM training_events e
 WHERE e.type = 'epoch.completed';
