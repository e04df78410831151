-- Undo schema revision 0005.
DROP POLICY trainer_manages_run_images_in_flight ON run_images;
ALTER TABLE run_images DISABLE ROW LEVEL SECURITY;
DROP POLICY trainer_reads_checkpoints_in_flight ON checkpoints;
ALTER TABLE checkpoints DISABLE ROW LEVEL SECURITY;
DROP POLICY trainer_reads_runs_in_flight ON training_runs;
ALTER TABLE training_runs DISABLE ROW LEVEL SECURITY;
DROP FUNCTION run_in_flight(bigint);

REVOKE ALL ON training_runs, checkpoints, run_images, products, product_images, datasets,
  dataset_products FROM skutrain_trainer;

DO $$
DECLARE
  f regprocedure;
BEGIN
  FOR f IN SELECT * FROM trainer_functions() LOOP
    EXECUTE format('ALTER FUNCTION %s SECURITY INVOKER RESET search_path', f);
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM skutrain_trainer', f);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', f);
  END LOOP;
END $$;
DROP FUNCTION trainer_functions();

REVOKE USAGE ON SCHEMA public FROM skutrain_trainer;

-- The role is cluster-wide: another database migrated to 0005 still uses it, so it stays then.
DO $$
BEGIN
  DROP ROLE skutrain_trainer;
EXCEPTION WHEN dependent_objects_still_exist THEN
  RAISE NOTICE 'skutrain_trainer is still granted privileges in another database; kept';
END $$;
