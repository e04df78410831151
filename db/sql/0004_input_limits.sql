-- Schema revision 0004: limits on what a user can insert. Applied by alembic/versions/0004_input_limits.py.
-- A run's config is read by Python services after the claim; a document no decoder can read
-- (too deep for its recursion limit, integers of thousands of digits, megabytes of keys) is
-- refused here, at INSERT or UPDATE, with a message naming the limit.

-- Raise check_violation with a message a person can act on, or return true. IMMUTABLE so a
-- CHECK constraint can use it; every test is linear in the document's size, and the depth test
-- never descends below the limit, so a 5,000-deep document costs no deep recursion.
CREATE FUNCTION run_config_within_limits(p_config jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  c_max_bytes constant int := 262144;
  c_max_depth constant int := 8;  -- a valid config is 3 deep
  v_bytes int;
BEGIN
  IF p_config IS NULL THEN
    RETURN true;
  END IF;
  v_bytes := octet_length(p_config::text);
  IF v_bytes > c_max_bytes THEN
    RAISE EXCEPTION 'run config is % bytes; the limit is % bytes', v_bytes, c_max_bytes
      USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_training_runs_config_limits',
            HINT = 'a config is a few hundred bytes; list large product sets in a dataset and use data_source.dataset_id';
  END IF;
  -- $.**{N} selects the values exactly N levels down (objects and arrays alike).
  IF jsonb_path_exists(p_config, ('$.**{' || c_max_depth + 1 || '}')::jsonpath) THEN
    RAISE EXCEPTION 'run config is nested more than % levels deep', c_max_depth
      USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_training_runs_config_limits';
  END IF;
  IF jsonb_path_exists(p_config,
       'strict $.** ? (@.type() == "number" && (@ > 9223372036854775807 || @ < -9223372036854775808))') THEN
    RAISE EXCEPTION 'run config has a number outside the 64-bit integer range'
      USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_training_runs_config_limits';
  END IF;
  RETURN true;
END $$;

ALTER TABLE training_runs
  ADD CONSTRAINT ck_training_runs_config_limits CHECK (run_config_within_limits(config)),
  ADD CONSTRAINT ck_training_runs_name_length CHECK (char_length(name) BETWEEN 1 AND 200);
