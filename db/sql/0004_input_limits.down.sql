-- Undo schema revision 0004.
ALTER TABLE training_runs
  DROP CONSTRAINT ck_training_runs_name_length,
  DROP CONSTRAINT ck_training_runs_config_limits;
DROP FUNCTION run_config_within_limits(jsonb);
