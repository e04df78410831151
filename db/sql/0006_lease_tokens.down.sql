-- Undo schema revision 0006: back to 0005's lease_epoch-fenced trainer role.
GRANT SELECT ON training_runs TO skutrain_trainer;
GRANT SELECT ON checkpoints TO skutrain_trainer;
GRANT SELECT, INSERT, DELETE ON run_images TO skutrain_trainer;
CREATE FUNCTION run_in_flight(p_run_id bigint) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT EXISTS (SELECT FROM training_runs
                  WHERE id = p_run_id AND status IN ('claimed', 'running'))
$$;
REVOKE EXECUTE ON FUNCTION run_in_flight(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION run_in_flight(bigint) TO skutrain_trainer;
ALTER TABLE training_runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY trainer_reads_runs_in_flight ON training_runs FOR SELECT TO skutrain_trainer
  USING (status IN ('claimed', 'running'));
ALTER TABLE checkpoints ENABLE ROW LEVEL SECURITY;
CREATE POLICY trainer_reads_checkpoints_in_flight ON checkpoints FOR SELECT TO skutrain_trainer
  USING (run_in_flight(run_id));
ALTER TABLE run_images ENABLE ROW LEVEL SECURITY;
CREATE POLICY trainer_manages_run_images_in_flight ON run_images TO skutrain_trainer
  USING (run_in_flight(run_id)) WITH CHECK (run_in_flight(run_id));

DROP FUNCTION trainer_run(bigint, uuid);
DROP FUNCTION trainer_launch_recorded(bigint, uuid, int);
DROP FUNCTION trainer_start_run(bigint, uuid, double precision, jsonb);
DROP FUNCTION trainer_heartbeat(bigint, uuid, double precision, bigint);
DROP FUNCTION trainer_append_events(bigint, uuid, int, text[], jsonb[]);
DROP FUNCTION trainer_finish_run(bigint, uuid, text, text, text, jsonb);
DROP FUNCTION trainer_checkpoint(bigint, uuid, bigint);
DROP FUNCTION trainer_checkpoint_manifest(bigint, uuid, int);
DROP FUNCTION trainer_run_images(bigint, uuid);
DROP FUNCTION trainer_store_run_images(bigint, uuid, text[], bigint[], text[], text[], int[],
                                       text[], text[], text[], text[]);
DROP FUNCTION lease_epoch_of(bigint, uuid);
DROP TRIGGER lease_token_follows_epoch ON training_runs;
DROP FUNCTION revoke_lease_token();

CREATE OR REPLACE FUNCTION trainer_functions() RETURNS SETOF regprocedure LANGUAGE sql STABLE AS $$
  SELECT p.oid::regprocedure
    FROM pg_proc p
   WHERE p.pronamespace = 'public'::regnamespace
     AND p.proname = ANY (ARRAY['start_run', 'heartbeat_run', 'append_trainer_events',
                                'finish_run'])
$$;
DO $$
DECLARE
  f regprocedure;
BEGIN
  FOR f IN SELECT * FROM trainer_functions() LOOP
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO skutrain_trainer', f);
  END LOOP;
END $$;

-- claim_runs as revision 0001 defined it (its row type loses lease_token below).
CREATE OR REPLACE FUNCTION claim_runs(p_owner text, p_limit int, p_lease_seconds double precision)
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
ALTER TABLE training_runs DROP COLUMN lease_token;
