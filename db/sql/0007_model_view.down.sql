-- Undo schema revision 0007: revision 0003's view.
CREATE OR REPLACE VIEW extraction_models AS
SELECT m.id, m.name, m.is_default, m.created_at, m.checkpoint_id, c.run_id, r.run_uuid,
       c.attempt, c.epoch, c.manifest_url, r.config ->> 'model' AS backbone,
       (r.config #>> '{training,embedding_dim}')::int AS embedding_dim,
       (m.test_metrics ->> 'recall_at_1')::float8 AS test_recall_at_1,
       (m.test_metrics ->> 'map')::float8 AS test_map
  FROM trained_models m
  JOIN checkpoints c ON c.id = m.checkpoint_id
  JOIN training_runs r ON r.id = c.run_id
 WHERE m.is_active AND c.delete_requested_at IS NULL;
