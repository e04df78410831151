-- Named queries, procrastinate style: each headed `-- name: <name>` and a one-line description.
-- Python refers to them as QUERIES["<name>"]; the queue and event logic itself is in the SQL
-- functions of the migrations (db/sql/).

-- name: claim_runs
-- Claim up to $2 queued runs for owner $1 with a lease of $3 seconds. The config comes back as
-- text, decoded per run, so one undecodable document fails its run and not the batch.
SELECT id, name, config::text AS config_text, attempt, lease_epoch, lease_token::text, priority
  FROM claim_runs($1, $2, $3);

-- name: mark_launched
-- Record the launch of the current attempt with what identifies the job ($5) (fenced on
-- lease_epoch; once per attempt); emits run.launched.
SELECT mark_launched($1, $2, $3, $4, $5::jsonb);

-- name: release_run
-- Put a claimed, never launched run back in the queue.
SELECT release_run($1, $2, $3);

-- name: start_run
-- The trainer takes over the run: status running, lease extended.
SELECT start_run($1, $2, $3, $4::jsonb);

-- name: heartbeat_run
-- Extend the lease and report the training step ($4, NULL: none); returns (owned, cancel_requested).
SELECT owned, cancel_requested FROM heartbeat_run($1, $2, $3, $4::bigint);

-- name: finish_run
-- End the run as completed, failed or cancelled (fenced).
SELECT finish_run($1, $2, $3, $4, $5, $6::jsonb);

-- name: append_trainer_events
-- Append the trainer's batch of events (idempotent on the trainer's seq, fenced).
SELECT append_trainer_events($1, $2, $3, $4::text[], $5::jsonb[]);

-- name: request_cancel
-- Ask for a run to be cancelled; returns its status.
SELECT request_cancel($1);

-- name: get_run
-- One run row, without the claim's lease token (the trainer's key to the run is never shown).
SELECT id, run_uuid, name, config, status, priority, attempt, lease_owner, lease_expires_at,
       lease_epoch, launcher, external_job_id, launched_attempt, event_seq, trainer_seq,
       current_epoch, total_epochs, start_epoch, best_checkpoint_id, best_val_recall_at_1,
       resume_from_checkpoint_id, cancel_requested_at, delete_requested_at, progress_step,
       progress_at, checkpoints_dirty, error_code, error_message, data_summary, test_metrics,
       created_at, updated_at, claimed_at, started_at, finished_at
  FROM training_runs WHERE id = $1;

-- name: list_runs
-- Newest runs first.
SELECT id, name, status, attempt, current_epoch, total_epochs, best_val_recall_at_1,
       error_code, error_message, created_at, finished_at
  FROM training_runs ORDER BY id DESC LIMIT $1;

-- name: insert_run
-- Queue a run (what a psql user does with a plain INSERT).
INSERT INTO training_runs (name, config, priority) VALUES ($1, $2::jsonb, $3) RETURNING id;

-- name: events_after
-- Commit-safe page of events after the (txid, id) cursor.
SELECT id, txid::text AS txid, run_id, attempt, seq, type, version, payload, created_at
  FROM training_events_after($1::text::xid8, $2, $3);

-- name: run_events
-- Every event of one run in write order.
SELECT id, run_id, attempt, seq, type, payload, created_at
  FROM training_events WHERE run_id = $1 ORDER BY attempt, seq;

-- name: products_all
-- Every product of the catalog.
SELECT id, barcode, product_name, brand_name, category, frames_path, frame_count
  FROM products ORDER BY id;

-- name: products_matched
-- Products with at least one real shelf photo or cutout matched to them.
SELECT p.id, p.barcode, p.product_name, p.brand_name, p.category, p.frames_path, p.frame_count
  FROM products p
 WHERE EXISTS (SELECT 1 FROM product_images i
                WHERE i.product_id = p.id AND i.domain IN ('real', 'cutout'))
 ORDER BY p.id;

-- name: products_dataset
-- Products of dataset $1.
SELECT p.id, p.barcode, p.product_name, p.brand_name, p.category, p.frames_path, p.frame_count
  FROM products p JOIN dataset_products d ON d.product_id = p.id
 WHERE d.dataset_id = $1 ORDER BY p.id;

-- name: products_selected
-- The products named by id.
SELECT id, barcode, product_name, brand_name, category, frames_path, frame_count
  FROM products WHERE id = ANY($1::bigint[]) ORDER BY id;

-- name: dataset_exists
-- Whether dataset $1 exists.
SELECT EXISTS (SELECT 1 FROM datasets WHERE id = $1);

-- name: product_images_for
-- Real, augmented and cutout images of the given products.
SELECT id, product_id, url, domain, frame_index, source_key
  FROM product_images WHERE product_id = ANY($1::bigint[]) ORDER BY product_id, id;

-- name: insert_product
-- Add one catalog product.
INSERT INTO products (barcode, product_name, brand_name, category, frames_path, frame_count)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (barcode) DO UPDATE
   SET product_name = excluded.product_name, brand_name = excluded.brand_name,
       category = excluded.category, frames_path = excluded.frames_path,
       frame_count = excluded.frame_count
RETURNING id;

-- name: insert_product_image
-- Add one image of a product.
INSERT INTO product_images (product_id, url, domain, frame_index, source_key)
VALUES ($1, $2, $3, $4, $5) ON CONFLICT (product_id, url) DO NOTHING;

-- name: run_images
-- A run's stored manifest.
SELECT idx, split, product_id, url, domain, frame_index, label, category, brand, source_key
  FROM run_images WHERE run_id = $1 ORDER BY idx;

-- name: run_checkpoints
-- A run's checkpoints, oldest epoch first.
SELECT id, attempt, epoch, manifest_url, size_bytes, shard_count, train_loss, val_loss,
       val_recall_at_1, val_recall_at_5, val_recall_at_10, val_map, metrics, is_best
  FROM checkpoints WHERE run_id = $1 ORDER BY epoch;

-- name: run_evaluations
-- A run's stored evaluations.
SELECT id, checkpoint_id, split, overall, real_to_synthetic, synthetic_to_real, per_category,
       hard_cases FROM evaluations WHERE run_id = $1 ORDER BY id;

-- ---------------------------------------------------------------------------------------------
-- HTTP API and dashboard (services/api)

-- name: api_list_runs
-- A page of runs not being deleted, newest first: statuses $1 (NULL: all), ids below the
-- cursor $2 (NULL: from the top), $3 rows.
SELECT id, name, status, attempt, current_epoch, total_epochs, best_val_recall_at_1,
       error_code, error_message, cancel_requested_at, created_at, started_at, finished_at,
       CASE WHEN jsonb_typeof(config #> '{training,epochs}') = 'number'
            THEN greatest(least((config #>> '{training,epochs}')::numeric, 1e6), 0)::int
       END AS config_epochs
  FROM training_runs
 WHERE delete_requested_at IS NULL
   AND ($1::text[] IS NULL OR status = ANY($1::text[]))
   AND ($2::bigint IS NULL OR id < $2::bigint)
 ORDER BY id DESC LIMIT $3;

-- name: api_events_head
-- The newest position of the commit-safe events cursor (a fresh stream starts after it).
SELECT txid::text AS txid, id FROM training_events
 WHERE txid < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY txid DESC, id DESC LIMIT 1;

-- name: api_run_linked_models
-- Trained models registered from a checkpoint of run $1.
SELECT m.id, m.name, c.epoch
  FROM trained_models m JOIN checkpoints c ON c.id = m.checkpoint_id
 WHERE c.run_id = $1 ORDER BY m.id;

-- name: api_run_label_names
-- Product names of a run's labels when it classifies by product (label = product id).
SELECT DISTINCT i.label, p.product_name
  FROM run_images i JOIN products p ON p.id = i.product_id
 WHERE i.run_id = $1 AND i.label = i.product_id::text;

-- name: api_run_checkpoints
-- A run's checkpoints, by epoch and attempt, with whether they are being deleted.
SELECT id, attempt, epoch, manifest_url, size_bytes, shard_count, train_loss, val_loss,
       val_recall_at_1, val_recall_at_5, val_recall_at_10, val_map, metrics, is_best,
       delete_requested_at, created_at
  FROM checkpoints WHERE run_id = $1 ORDER BY epoch, attempt;

-- name: api_run_evaluations
-- A run's stored evaluations with every breakdown (domain pairs too), oldest first.
SELECT id, checkpoint_id, split, overall, real_to_synthetic, synthetic_to_real, domain_pairs,
       per_category, hard_cases, num_images, on_demand, created_at
  FROM evaluations WHERE run_id = $1 ORDER BY id;

-- name: api_latest_epochs
-- The last epoch.completed payload of each of the runs $1 (latest loss and val metrics).
SELECT DISTINCT ON (run_id) run_id, payload
  FROM training_events
 WHERE run_id = ANY($1::bigint[]) AND type = 'epoch.completed'
 ORDER BY run_id, attempt DESC, seq DESC;

-- ---------------------------------------------------------------------------------------------
-- Trainer (services/trainer)

-- ---------------------------------------------------------------------------------------------
-- Lifecycle: launches (dispatcher), leases, cancel, resume, deletes, best, retention (reconciler)

-- name: mark_launched_batch
-- Record the launches of a batch (runs $1 at lease epochs $2, launcher $3, job ids $4,
-- identities $5) in one commit; one boolean per run.
SELECT mark_launched_batch($1::bigint[], $2::bigint[], $3, $4::text[], $5::jsonb[]);

-- name: live_launches
-- Launch records of launcher $1 whose job was not yet seen gone.
SELECT l.run_id, l.attempt, l.lease_epoch, l.launcher, l.external_job_id, l.identity,
       r.status, r.attempt AS run_attempt, r.lease_epoch AS run_lease_epoch
  FROM run_launches l LEFT JOIN training_runs r ON r.id = l.run_id
 WHERE l.launcher = $1 AND l.ended_at IS NULL
 ORDER BY l.run_id, l.attempt;

-- name: count_live_launches
-- How many jobs of launcher $1 may still run (max_concurrent counts these).
SELECT count(*) FROM run_launches WHERE launcher = $1 AND ended_at IS NULL;

-- name: end_launch
-- The job of (run $1, attempt $2) is gone; $3 says why.
SELECT end_launch($1, $2, $3);

-- name: recover_attempt
-- Requeue (run $1 at lease epoch $2) to resume, or fail it with $3/$4 after $5 attempts.
SELECT recover_attempt($1, $2, $3, $4, $5);

-- name: request_resume
-- Continue a failed or cancelled run from its last checkpoint.
SELECT request_resume($1);

-- name: request_delete
-- Mark run $1 and its checkpoints for deletion ($2: force past linked models).
SELECT request_delete($1, $2);

-- name: request_checkpoint_delete
-- Mark checkpoint $1 for deletion ($2: force past linked models).
SELECT request_checkpoint_delete($1, $2);

-- name: runs_needing_attention
-- Claimed or running runs whose lease expired, whose step stalled for $1 seconds, or with a
-- cancel request, with their current launch record (the partial index of active runs).
SELECT r.id, r.attempt, r.lease_epoch, r.status, r.cancel_requested_at,
       r.cancel_requested_at < now() - make_interval(secs => $2) AS cancel_overdue,
       r.lease_expires_at < now() AS expired,
       r.progress_at < now() - make_interval(secs => $1) AS stalled,
       l.launched_at < now() - make_interval(secs => $1) AS start_overdue,
       l.launcher, l.external_job_id, l.identity, l.ended_at
  FROM training_runs r
  LEFT JOIN run_launches l ON l.run_id = r.id AND l.attempt = r.attempt
 WHERE r.status IN ('claimed', 'running')
   AND (r.lease_expires_at < now()
        OR r.progress_at < now() - make_interval(secs => $1)
        OR r.cancel_requested_at IS NOT NULL)
 ORDER BY r.id;

-- name: cancel_stopped_run
-- The job of (run $1 at lease epoch $2) is stopped: end the run cancelled (fenced).
SELECT finish_run($1, $2, 'cancelled', NULL, NULL,
                  jsonb_build_object('reason', $3::text));

-- name: checkpoints_marked_for_delete
-- Up to $1 checkpoints marked for deletion, oldest request first.
SELECT id, run_id, attempt, epoch, manifest_url, resume_state_url
  FROM checkpoints WHERE delete_requested_at IS NOT NULL
 ORDER BY delete_requested_at, id LIMIT $1;

-- name: remove_checkpoint
-- Remove a marked checkpoint's row once its bytes are gone.
SELECT remove_checkpoint($1);

-- name: runs_marked_for_delete
-- Up to $1 runs marked for deletion that no longer run.
SELECT id FROM training_runs
 WHERE delete_requested_at IS NOT NULL AND status NOT IN ('claimed', 'running')
 ORDER BY delete_requested_at, id LIMIT $1;

-- name: remove_run
-- Delete a marked run's row once its checkpoints are removed (leaves a tombstone).
SELECT remove_run($1);

-- name: unclean_tombstones
-- Up to $1 deleted runs whose job and storage are not yet cleaned up.
SELECT run_id, run_uuid::text AS run_uuid, name, launcher, external_job_id, identity
  FROM deleted_runs WHERE cleaned_at IS NULL ORDER BY deleted_at LIMIT $1;

-- name: mark_tombstone_cleaned
-- A deleted run's job is stopped and its storage prefix removed.
UPDATE deleted_runs SET cleaned_at = now() WHERE run_id = $1 AND cleaned_at IS NULL;

-- name: runs_with_dirty_checkpoints
-- Up to $1 runs, not active, whose checkpoints changed since is_best/retention last ran.
SELECT id FROM training_runs
 WHERE checkpoints_dirty AND status NOT IN ('claimed', 'running')
 ORDER BY id LIMIT $1;

-- name: live_checkpoints
-- Run $1's checkpoints not marked for deletion, with what the best choice reads.
SELECT c.id, c.attempt, c.epoch, c.val_recall_at_1, c.val_loss, c.is_best,
       EXISTS (SELECT 1 FROM trained_models m WHERE m.checkpoint_id = c.id) AS linked
  FROM checkpoints c
 WHERE c.run_id = $1 AND c.delete_requested_at IS NULL ORDER BY c.epoch, c.attempt;

-- name: settle_checkpoints
-- Set run $1's best checkpoint to $2 and mark $3 for deletion (retention); fenced on the run
-- not being active.
SELECT settle_checkpoints($1, $2, $3::bigint[]);

-- name: existing_run_uuids
-- Which of the uuids $1 are runs (the orphan sweep keeps their objects).
SELECT run_uuid::text FROM training_runs WHERE run_uuid = ANY($1::uuid[])
UNION
SELECT run_uuid::text FROM deleted_runs WHERE run_uuid = ANY($1::uuid[]) AND cleaned_at IS NULL;

-- ---------------------------------------------------------------------------------------------
-- Registry: models, on-demand evaluations, extraction, metrics history (services/models)
-- ---------------------------------------------------------------------------------------------

-- name: registry_register_model
SELECT register_model($1, $2);

-- name: registry_record_evaluation
SELECT record_evaluation($1, $2::jsonb);

-- name: registry_checkpoint
-- A checkpoint with its run: what evaluating or registering it needs.
SELECT c.id, c.run_id, c.attempt, c.epoch, c.manifest_url, c.is_best, r.run_uuid::text AS run_uuid,
       r.name AS run_name, r.config
  FROM checkpoints c JOIN training_runs r ON r.id = c.run_id
 WHERE c.id = $1;

-- name: registry_list_models
SELECT id, name, is_default, created_at, checkpoint_id, run_id, run_uuid::text AS run_uuid, attempt,
       epoch, backbone, embedding_dim, test_recall_at_1, test_map
  FROM extraction_models ORDER BY id;

-- name: registry_model
-- One registered model with its checkpoint, run and registered evaluation.
SELECT m.id, m.name, m.is_default, m.is_active, m.created_at, m.checkpoint_id, m.test_metrics,
       m.cross_domain_metrics, m.per_category, m.test_split_digest, m.evaluation_id,
       c.run_id, c.attempt, c.epoch, c.manifest_url, r.run_uuid::text AS run_uuid,
       r.name AS run_name, r.config, e.hard_cases, e.num_images AS test_images
  FROM trained_models m
  JOIN checkpoints c ON c.id = m.checkpoint_id
  JOIN training_runs r ON r.id = c.run_id
  LEFT JOIN evaluations e ON e.id = m.evaluation_id
 WHERE m.id = $1;

-- name: registry_products_info
SELECT id, product_name, brand_name, category FROM products WHERE id = ANY($1::bigint[]);

-- name: registry_extraction_products
-- Products to extract ($1: ids, or NULL for all), with what the manifest builder reads.
SELECT id, barcode, product_name, brand_name, category, frames_path, frame_count
  FROM products WHERE $1::bigint[] IS NULL OR id = ANY($1::bigint[]) ORDER BY id;

-- name: registry_extraction_images
SELECT id, product_id, url, domain, frame_index, source_key
  FROM product_images WHERE product_id = ANY($1::bigint[]) ORDER BY id;

-- name: registry_metrics_history
SELECT * FROM run_metrics_history WHERE run_id = $1 ORDER BY epoch, attempt, created_at;

-- Input limits and operator tools (issue 8) ---------------------------------------------------

-- name: schema_present
-- Whether the database was ever upgraded (`skutrain db upgrade`): services say so at start.
SELECT to_regclass('training_runs') IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- RunPod launcher and Prometheus metrics (services/dispatcher/runpod_launcher.py,
-- services/common/metrics.py)
-- ---------------------------------------------------------------------------------------------

-- name: note_run_waiting
-- The launcher's note on a claimed run whose job waits for a worker (fenced on lease_epoch $2).
SELECT emit_run_event(r.id, 'run.waiting', $3::jsonb)
  FROM lock_run_events($1), training_runs r
 WHERE r.id = $1 AND r.lease_epoch = $2 AND r.status = 'claimed';

-- name: metrics_queue_depth
SELECT status, count(*) AS runs FROM training_runs GROUP BY status;

-- name: metrics_trainer_throughput
-- images/s of the last completed epoch of each running run's current attempt.
SELECT r.run_uuid::text AS run, (e.payload ->> 'images_per_second')::float8 AS images_per_second
  FROM training_runs r
  CROSS JOIN LATERAL (
    SELECT payload FROM training_events
     WHERE run_id = r.id AND attempt = r.attempt AND type = 'epoch.completed'
     ORDER BY seq DESC LIMIT 1) e
 WHERE r.status = 'running';

-- ---------------------------------------------------------------------------------------------
-- Reconciler: superseded resume states (services/reconciler/resume_states.py)
-- ---------------------------------------------------------------------------------------------

-- name: drop_superseded_resume_states
-- Null resume_state_url on run $1's checkpoints except the latest resumable one (fenced on the
-- run not being active); the run's uuid and the kept (epoch, attempt), or no row.
SELECT * FROM drop_superseded_resume_states($1);

-- ---------------------------------------------------------------------------------------------
-- Trainer (services/trainer): every call names the run and carries the claim's lease token ($2);
-- the trainer_* functions of revision 0006 are all the skutrain_trainer role may call on runs.
-- ---------------------------------------------------------------------------------------------

-- name: trainer_run
-- What the attempt reads of its run; no row when the token is not the run's current one.
SELECT * FROM trainer_run($1, $2::uuid);

-- name: trainer_launch_recorded
-- Whether the dispatcher recorded the launch of attempt $3 (run.launched committed); NULL when
-- the token no longer holds the run in flight (a stale job).
SELECT trainer_launch_recorded($1, $2::uuid, $3);

-- name: trainer_start_run
-- The trainer takes over the run: status running, lease extended.
SELECT trainer_start_run($1, $2::uuid, $3, $4::jsonb);

-- name: trainer_heartbeat
-- Extend the lease and report the training step ($4); returns (owned, cancel_requested).
SELECT owned, cancel_requested FROM trainer_heartbeat($1, $2::uuid, $3, $4::bigint);

-- name: trainer_append_events
-- Append the trainer's batch of events (idempotent on the trainer's seq; SK001 when fenced).
SELECT trainer_append_events($1, $2::uuid, $3, $4::text[], $5::jsonb[]);

-- name: trainer_finish_run
-- End the run as completed, failed or cancelled.
SELECT trainer_finish_run($1, $2::uuid, $3, $4, $5, $6::jsonb);

-- name: trainer_checkpoint
-- Checkpoint $3 of the run (the one a resumed attempt loads), or no row.
SELECT * FROM trainer_checkpoint($1, $2::uuid, $3);

-- name: trainer_checkpoint_manifest
-- The manifest URL of the run's checkpoint of epoch $3 (the row of the highest attempt).
SELECT trainer_checkpoint_manifest($1, $2::uuid, $3);

-- name: trainer_run_images
-- The run's stored image manifest, in order.
SELECT * FROM trainer_run_images($1, $2::uuid);

-- name: trainer_store_run_images
-- Replace the run's image manifest (columns as arrays); returns how many rows were stored.
SELECT trainer_store_run_images($1, $2::uuid, $3::text[], $4::bigint[], $5::text[], $6::text[],
                                $7::int[], $8::text[], $9::text[], $10::text[], $11::text[]);

-- ---------------------------------------------------------------------------------------------
-- Queue speed (revision 0008)

-- name: mark_launched_and_claim
-- mark_launched_batch ($1-$5), then claim_runs (owner $6, up to $7 runs, lease $8 s) in the same
-- commit. First a row with `recorded` (per launch, as mark_launched_batch returns) and NULL run
-- columns, then one row per claimed run with claim_runs' columns.
SELECT recorded, (run).id, (run).name, (run).config::text AS config_text, (run).attempt,
       (run).lease_epoch, (run).lease_token::text AS lease_token, (run).priority
  FROM mark_launched_and_claim($1::bigint[], $2::bigint[], $3, $4::text[], $5::jsonb[], $6, $7,
                               $8);
