-- Schema revision 0007: the model dropdown shows the backbone and embedding size a model was
-- trained with, also when its run's config left them to their defaults (0003's view read only
-- the config, so such models showed no backbone). The trainer states both in run.started; the
-- view reads that event of the attempt that saved the checkpoint, the config as a fallback.
-- Applied by alembic/versions/0007_model_view.py.
CREATE OR REPLACE VIEW extraction_models AS
SELECT m.id, m.name, m.is_default, m.created_at, m.checkpoint_id, c.run_id, r.run_uuid,
       c.attempt, c.epoch, c.manifest_url,
       coalesce(s.payload ->> 'model', r.config ->> 'model') AS backbone,
       coalesce((s.payload ->> 'embedding_dim')::int,
                (r.config #>> '{training,embedding_dim}')::int) AS embedding_dim,
       (m.test_metrics ->> 'recall_at_1')::float8 AS test_recall_at_1,
       (m.test_metrics ->> 'map')::float8 AS test_map
  FROM trained_models m
  JOIN checkpoints c ON c.id = m.checkpoint_id
  JOIN training_runs r ON r.id = c.run_id
  LEFT JOIN LATERAL (
    SELECT e.payload FROM training_events e
     WHERE e.run_id = c.run_id AND e.attempt = c.attempt AND e.type = 'run.started'
     ORDER BY e.seq LIMIT 1) s ON true
 WHERE m.is_active AND c.delete_requested_at IS NULL;
