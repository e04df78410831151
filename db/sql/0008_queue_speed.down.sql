-- Undo schema revision 0008: revision 0002's mark_launched_batch, run_launches' foreign key and
-- delete trigger, and 0004's CHECK constraint.
DELETE FROM run_launches l WHERE NOT EXISTS (SELECT FROM training_runs r WHERE r.id = l.run_id);
ALTER TABLE run_launches ADD CONSTRAINT run_launches_run_id_fkey
  FOREIGN KEY (run_id) REFERENCES training_runs (id) ON DELETE CASCADE;
CREATE OR REPLACE FUNCTION training_runs_before_delete() RETURNS trigger LANGUAGE plpgsql AS $$
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
DROP FUNCTION mark_launched_and_claim(bigint[], bigint[], text, text[], jsonb[], text, int,
                                      double precision);

CREATE OR REPLACE FUNCTION mark_launched_batch(p_run_ids bigint[], p_lease_epochs bigint[], p_launcher text,
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

ALTER TABLE training_runs RESET (fillfactor);

DROP TRIGGER training_runs_config_within_limits ON training_runs;
DROP FUNCTION training_runs_config_within_limits();
ALTER TABLE training_runs
  ADD CONSTRAINT ck_training_runs_config_limits CHECK (run_config_within_limits(config));
