-- Schema revision 0008: the dispatcher's claim -> launch loop. Applied by
-- alembic/versions/0008_queue_speed.py; undone by 0008_queue_speed.down.sql.

-- Config limits (0004) are checked when a config is written, not on every UPDATE of a run: a
-- CHECK constraint is evaluated on each claim, launch and heartbeat, where walking the document
-- took about a tenth of the claim + launch statements' time. Same function, SQLSTATE, constraint
-- name and message.
ALTER TABLE training_runs DROP CONSTRAINT ck_training_runs_config_limits;

CREATE FUNCTION training_runs_config_within_limits() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM run_config_within_limits(NEW.config);
  RETURN NEW;
END $$;

CREATE TRIGGER training_runs_config_within_limits BEFORE INSERT OR UPDATE OF config ON training_runs
FOR EACH ROW EXECUTE FUNCTION training_runs_config_within_limits();

-- A run's row is updated at its claim, its launch, its start and with each heartbeat. Pages
-- kept 30% free let an update that changes no indexed column (a launch) stay on its page (a
-- HOT update: no index entries written).
ALTER TABLE training_runs SET (fillfactor = 70);

-- Record launches (as in 0002) finding each run by primary key. The 0002 statement joined the
-- input to the runs in flight: without fresh statistics the planner read them all through
-- ix_training_runs_leased, so each batch cost more as launched runs piled up. Here the rows are
-- locked by id first (statuses read after the lock are current), and each run's inputs are
-- found by its position in the arrays: no join whose row estimate could go wrong.
CREATE OR REPLACE FUNCTION mark_launched_batch(p_run_ids bigint[], p_lease_epochs bigint[],
                                               p_launcher text, p_external_job_ids text[],
                                               p_identities jsonb[])
RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
  v_marked int[];
BEGIN
  PERFORM lock_run_events(id) FROM unnest(p_run_ids) AS id ORDER BY id;
  WITH locked AS MATERIALIZED (
    SELECT r.id, array_position(p_run_ids, r.id) AS n, r.lease_epoch, r.status, r.attempt,
           r.launched_attempt
      FROM training_runs r WHERE r.id = ANY (p_run_ids)
       FOR UPDATE
  ), marked AS (
    UPDATE training_runs r
       SET launcher = p_launcher, external_job_id = p_external_job_ids[l.n],
           launched_attempt = r.attempt, event_seq = r.event_seq + 1, updated_at = now()
      FROM locked l
     WHERE r.id = l.id AND l.lease_epoch = p_lease_epochs[l.n]
       AND l.status IN ('claimed', 'running') AND l.launched_attempt IS DISTINCT FROM l.attempt
    RETURNING r.id, l.n, r.attempt, r.event_seq, r.lease_owner
  ), launches AS (
    INSERT INTO run_launches (run_id, attempt, lease_epoch, launcher, owner, external_job_id,
                              identity, launched_at)
    SELECT id, attempt, p_lease_epochs[n], p_launcher, lease_owner, p_external_job_ids[n],
           coalesce(p_identities[n], '{}'::jsonb), now() FROM marked
  ), events AS (
    INSERT INTO training_events (run_id, attempt, seq, type, payload)
    SELECT id, attempt, event_seq, 'run.launched',
           jsonb_build_object('launcher', p_launcher, 'external_job_id', p_external_job_ids[n])
      FROM marked
  )
  SELECT array_agg(n) INTO v_marked FROM marked;
  RETURN ARRAY(SELECT k = ANY (coalesce(v_marked, '{}'))
                 FROM generate_subscripts(p_run_ids, 1) AS k ORDER BY k);
END $$;

-- A dispatcher with work queued records a batch's launches and claims its next batch in one
-- statement and one commit (claim_runs after mark_launched_batch, so the event locks are still
-- taken before the transaction has an xid). A run claimed here is held on the same terms as one
-- from a lone claim_runs: on its lease, until launched, released, or the lease expires. The first
-- row has the launch results (run NULL), then one row per claimed run (recorded NULL).
CREATE FUNCTION mark_launched_and_claim(p_run_ids bigint[], p_lease_epochs bigint[],
                                        p_launcher text, p_external_job_ids text[],
                                        p_identities jsonb[], p_owner text, p_limit int,
                                        p_lease_seconds double precision)
RETURNS TABLE (recorded boolean[], run training_runs) LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY SELECT mark_launched_batch(p_run_ids, p_lease_epochs, p_launcher,
                                          p_external_job_ids, p_identities), NULL::training_runs;
  RETURN QUERY SELECT NULL::boolean[], c FROM claim_runs(p_owner, p_limit, p_lease_seconds) AS c;
END $$;

-- A launch record names its run without a foreign key: the key's check on every launch (a lookup
-- of the run row the same statement just updated) was an eighth of a launch commit. Launches are
-- only ever inserted for the run rows that statement updated, and a run's delete trigger removes
-- its launches (after copying the latest into the tombstone), as ON DELETE CASCADE did.
ALTER TABLE run_launches DROP CONSTRAINT run_launches_run_id_fkey;

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
  DELETE FROM run_launches WHERE run_id = OLD.id;
  INSERT INTO training_events (run_id, attempt, seq, type, payload)
  VALUES (OLD.id, OLD.attempt, OLD.event_seq + 1, 'run.deleted',
          jsonb_build_object('name', OLD.name, 'status', OLD.status,
                             'requested', OLD.delete_requested_at IS NOT NULL));
  PERFORM pg_notify('skutrain_reconcile', 'deleted');
  RETURN OLD;
END $$;
