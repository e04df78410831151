-- Schema revision 0005: least-privilege role for trainer workers. Applied by alembic/versions/0005_trainer_role.py.
--
-- `skutrain_trainer` is a NOLOGIN group role; a worker logs in as its own login role that is a
-- member of it (README "Deploying"). What the role may do:
--   * call the fenced lease-holder functions (start, heartbeat, append events, finish): they are
--     SECURITY DEFINER with a fixed search_path, so they write rows the role cannot touch itself,
--     and only for a run held at the given lease_epoch in state claimed/running. Checkpoint and
--     evaluation rows come from the events those functions project.
--   * read the catalog (products, their images, datasets) and the rows of runs in flight
--     (claimed/running): the run row (config), its run_images and checkpoints (resume).
--   * insert and delete the run_images of a run in flight (the manifest the trainer stores once).
-- Nothing else: no direct UPDATE/DELETE of runs, events, checkpoints or evaluations, no read of
-- events, evaluations, trained models, launches or finished/queued runs.
-- The role is cluster-wide (roles are not per database): it is created if missing, and the
-- downgrade drops it only when no other database still grants it anything.

DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'skutrain_trainer') THEN
    CREATE ROLE skutrain_trainer NOLOGIN;
  END IF;
END $$;

GRANT USAGE ON SCHEMA public TO skutrain_trainer;

-- The functions a trainer calls with its lease. Add a name here when the trainer gets a new
-- fenced function (every overload of each name is covered, so a new argument needs no edit);
-- the .down.sql reads the same list.
CREATE FUNCTION trainer_functions() RETURNS SETOF regprocedure LANGUAGE sql STABLE AS $$
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
    EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = public, pg_temp', f);
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO skutrain_trainer', f);
  END LOOP;
END $$;

-- Catalog: read-only.
GRANT SELECT ON products, product_images, datasets, dataset_products TO skutrain_trainer;

-- Runs in flight only. Row-level security applies to roles other than the tables' owner (the
-- services' role), so it restricts the trainer and nobody else.
CREATE FUNCTION run_in_flight(p_run_id bigint) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT EXISTS (SELECT FROM training_runs
                  WHERE id = p_run_id AND status IN ('claimed', 'running'))
$$;
REVOKE EXECUTE ON FUNCTION run_in_flight(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION run_in_flight(bigint) TO skutrain_trainer;

GRANT SELECT ON training_runs TO skutrain_trainer;
ALTER TABLE training_runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY trainer_reads_runs_in_flight ON training_runs FOR SELECT TO skutrain_trainer
  USING (status IN ('claimed', 'running'));

GRANT SELECT ON checkpoints TO skutrain_trainer;
ALTER TABLE checkpoints ENABLE ROW LEVEL SECURITY;
CREATE POLICY trainer_reads_checkpoints_in_flight ON checkpoints FOR SELECT TO skutrain_trainer
  USING (run_in_flight(run_id));

GRANT SELECT, INSERT, DELETE ON run_images TO skutrain_trainer;
ALTER TABLE run_images ENABLE ROW LEVEL SECURITY;
CREATE POLICY trainer_manages_run_images_in_flight ON run_images TO skutrain_trainer
  USING (run_in_flight(run_id)) WITH CHECK (run_in_flight(run_id));
