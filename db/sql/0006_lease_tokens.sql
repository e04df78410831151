-- Schema revision 0006: an unguessable lease token per claim, the trainer's only key to its run.
-- Applied by alembic/versions/0006_lease_tokens.py.
--
-- Revision 0005 fenced the trainer role on lease_epoch, a per-run counter anyone can guess, and
-- let it read every run in flight. Now each claim gives the run an unguessable `lease_token`; the launcher hands it to the job outside its command line (the local gate's stdin, the
-- RunPod job input), and the role can do nothing with a run without it: every trainer_*
-- function resolves (run, token) to the current lease and calls the lease_epoch-fenced function
-- the services use, so the fence itself is unchanged. The role loses its direct reads and writes
-- of training_runs, checkpoints and run_images (and the row-level policies of 0005 go with them);
-- the catalog stays readable. The token never leaves the claim's result: get_run, the API and
-- events do not carry it.

ALTER TABLE training_runs ADD COLUMN lease_token uuid;

-- A claim statement draws one random key (gen_random_uuid: 122 bits, never stored) and derives
-- each claimed run's token from it: SHA-256 of key, run, epoch and key again, cut to 128 bits.
-- Without the key no token can be guessed, and a token says nothing of the key or of the other
-- runs' tokens. One strong random draw per statement rather than per run: a draw reads the
-- system's random source (2.5 us here), and per run that cost a tenth of a claim.
CREATE OR REPLACE FUNCTION claim_runs(p_owner text, p_limit int, p_lease_seconds double precision)
RETURNS SETOF training_runs LANGUAGE sql AS $$
  WITH token_key AS MATERIALIZED (
    SELECT gen_random_uuid()::text AS k
  ), candidates AS (
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
           lease_token = encode(substr(sha256(convert_to(
             t.k || ':' || r.id || ':' || (r.lease_epoch + 1) || ':' || t.k, 'UTF8')), 1, 16),
             'hex')::uuid,
           lease_owner = p_owner,
           lease_expires_at = now() + make_interval(secs => p_lease_seconds),
           claimed_at = now(),
           updated_at = now(),
           launcher = NULL,
           external_job_id = NULL,
           event_seq = 1,
           trainer_seq = 0
      FROM candidates c, token_key t
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

-- A token stands for one lease epoch: anything else that moves the epoch (queue_resume fences the
-- old attempt out that way) revokes the token with it.
CREATE FUNCTION revoke_lease_token() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.lease_token := NULL;
  RETURN NEW;
END $$;
CREATE TRIGGER lease_token_follows_epoch BEFORE UPDATE OF lease_epoch ON training_runs
  FOR EACH ROW
  WHEN (NEW.lease_epoch IS DISTINCT FROM OLD.lease_epoch
        AND NEW.lease_token IS NOT DISTINCT FROM OLD.lease_token)
  EXECUTE FUNCTION revoke_lease_token();

-- The lease epoch a token stands for (NULL: not the run's current token). Internal: the
-- trainer_* functions below call it as their owner.
CREATE FUNCTION lease_epoch_of(p_run_id bigint, p_lease_token uuid) RETURNS bigint
LANGUAGE sql STABLE AS $$
  SELECT lease_epoch FROM training_runs WHERE id = p_run_id AND lease_token = p_lease_token
$$;
REVOKE EXECUTE ON FUNCTION lease_epoch_of(bigint, uuid) FROM PUBLIC;

-- What the attempt reads of its run (only its own, only with its token).
CREATE FUNCTION trainer_run(p_run_id bigint, p_lease_token uuid)
RETURNS TABLE (id bigint, run_uuid uuid, attempt int, lease_epoch bigint, status text,
               config jsonb, resume_from_checkpoint_id bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT id, run_uuid, attempt, lease_epoch, status, config, resume_from_checkpoint_id
    FROM training_runs WHERE id = p_run_id AND lease_token = p_lease_token
$$;

-- The RunPod worker's gate: true once the dispatcher recorded this attempt's launch, false while
-- not yet, no row when the token no longer holds the run in flight (a stale job).
CREATE FUNCTION trainer_launch_recorded(p_run_id bigint, p_lease_token uuid, p_attempt int)
RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT launched_attempt IS NOT DISTINCT FROM attempt FROM training_runs
   WHERE id = p_run_id AND lease_token = p_lease_token AND attempt = p_attempt
     AND status IN ('claimed', 'running')
$$;

CREATE FUNCTION trainer_start_run(p_run_id bigint, p_lease_token uuid,
                                  p_lease_seconds double precision, p_payload jsonb)
RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT coalesce(start_run(p_run_id, lease_epoch_of(p_run_id, p_lease_token), p_lease_seconds,
                            p_payload), false)
$$;

CREATE FUNCTION trainer_heartbeat(p_run_id bigint, p_lease_token uuid,
                                  p_lease_seconds double precision, p_step bigint,
                                  OUT owned boolean, OUT cancel_requested boolean)
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT owned, cancel_requested
    FROM heartbeat_run(p_run_id, lease_epoch_of(p_run_id, p_lease_token), p_lease_seconds, p_step)
$$;

CREATE FUNCTION trainer_append_events(p_run_id bigint, p_lease_token uuid, p_first_seq int,
                                      p_types text[], p_payloads jsonb[])
RETURNS int
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  v_epoch bigint := lease_epoch_of(p_run_id, p_lease_token);
BEGIN
  IF v_epoch IS NULL THEN
    RAISE EXCEPTION 'lease lost: run % is no longer held by this attempt''s lease token', p_run_id
      USING ERRCODE = 'SK001';
  END IF;
  RETURN append_trainer_events(p_run_id, v_epoch, p_first_seq, p_types, p_payloads);
END $$;

CREATE FUNCTION trainer_finish_run(p_run_id bigint, p_lease_token uuid, p_status text,
                                   p_error_code text, p_error_message text, p_payload jsonb)
RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT coalesce(finish_run(p_run_id, lease_epoch_of(p_run_id, p_lease_token), p_status,
                             p_error_code, p_error_message, p_payload), false)
$$;

-- A checkpoint of the attempt's own run (the one it resumes from), or no row.
CREATE FUNCTION trainer_checkpoint(p_run_id bigint, p_lease_token uuid, p_checkpoint_id bigint)
RETURNS TABLE (id bigint, run_id bigint, attempt int, epoch int, manifest_url text,
               resume_state_url text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT c.id, c.run_id, c.attempt, c.epoch, c.manifest_url, c.resume_state_url
    FROM checkpoints c
   WHERE c.id = p_checkpoint_id AND c.run_id = p_run_id
     AND lease_epoch_of(p_run_id, p_lease_token) IS NOT NULL
$$;

-- The manifest of the run's checkpoint of an epoch (the row of the highest attempt).
CREATE FUNCTION trainer_checkpoint_manifest(p_run_id bigint, p_lease_token uuid, p_epoch int)
RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT manifest_url FROM checkpoints
   WHERE id = checkpoint_for_epoch(p_run_id, p_epoch)
     AND lease_epoch_of(p_run_id, p_lease_token) IS NOT NULL
$$;

-- The run's stored image manifest (its splits), read back by a resumed attempt.
CREATE FUNCTION trainer_run_images(p_run_id bigint, p_lease_token uuid)
RETURNS TABLE (idx int, split text, product_id bigint, url text, domain text, frame_index int,
               label text, category text, brand text, source_key text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT i.idx, i.split, i.product_id, i.url, i.domain, i.frame_index, i.label, i.category,
         i.brand, i.source_key
    FROM run_images i
   WHERE i.run_id = p_run_id AND lease_epoch_of(p_run_id, p_lease_token) IS NOT NULL
   ORDER BY i.idx
$$;

-- Replace the run's image manifest (columns as parallel arrays, in manifest order); only while
-- the token holds the run in flight.
CREATE FUNCTION trainer_store_run_images(p_run_id bigint, p_lease_token uuid, p_splits text[],
                                         p_product_ids bigint[], p_urls text[],
                                         p_domains text[], p_frame_indexes int[],
                                         p_labels text[], p_categories text[], p_brands text[],
                                         p_source_keys text[])
RETURNS int
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
  v_stored int;
BEGIN
  PERFORM 1 FROM training_runs
   WHERE id = p_run_id AND lease_token = p_lease_token AND status IN ('claimed', 'running')
   FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'lease lost: run % is no longer held by this attempt''s lease token', p_run_id
      USING ERRCODE = 'SK001';
  END IF;
  DELETE FROM run_images WHERE run_id = p_run_id;
  INSERT INTO run_images (run_id, idx, split, product_id, url, domain, frame_index, label,
                          category, brand, source_key)
  SELECT p_run_id, (t.n - 1)::int, t.split, t.product_id, t.url, t.domain, t.frame_index, t.label,
         t.category, t.brand, t.source_key
    FROM unnest(p_splits, p_product_ids, p_urls, p_domains, p_frame_indexes, p_labels,
                p_categories, p_brands, p_source_keys)
         WITH ORDINALITY AS t(split, product_id, url, domain, frame_index, label, category, brand,
                              source_key, n);
  GET DIAGNOSTICS v_stored = ROW_COUNT;
  RETURN v_stored;
END $$;

-- The role's functions are now the trainer_* ones; the lease_epoch-fenced ones (0005's list)
-- are the services' only. trainer_functions() names the new list (the .down.sql restores 0005's).
DO $$
DECLARE
  f regprocedure;
BEGIN
  FOR f IN SELECT * FROM trainer_functions() LOOP
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM skutrain_trainer', f);
  END LOOP;
END $$;

CREATE OR REPLACE FUNCTION trainer_functions() RETURNS SETOF regprocedure LANGUAGE sql STABLE AS $$
  SELECT p.oid::regprocedure
    FROM pg_proc p
   WHERE p.pronamespace = 'public'::regnamespace
     AND p.proname = ANY (ARRAY['trainer_run', 'trainer_launch_recorded', 'trainer_start_run',
                                'trainer_heartbeat', 'trainer_append_events',
                                'trainer_finish_run', 'trainer_checkpoint',
                                'trainer_checkpoint_manifest', 'trainer_run_images',
                                'trainer_store_run_images'])
$$;

DO $$
DECLARE
  f regprocedure;
BEGIN
  FOR f IN SELECT * FROM trainer_functions() LOOP
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO skutrain_trainer', f);
  END LOOP;
END $$;

-- No direct access to runs, checkpoints or manifests any more.
DROP POLICY trainer_manages_run_images_in_flight ON run_images;
ALTER TABLE run_images DISABLE ROW LEVEL SECURITY;
DROP POLICY trainer_reads_checkpoints_in_flight ON checkpoints;
ALTER TABLE checkpoints DISABLE ROW LEVEL SECURITY;
DROP POLICY trainer_reads_runs_in_flight ON training_runs;
ALTER TABLE training_runs DISABLE ROW LEVEL SECURITY;
DROP FUNCTION run_in_flight(bigint);
REVOKE ALL ON training_runs, checkpoints, run_images FROM skutrain_trainer;
