-- Undo schema revision 0009: the primary key on id and the unique (run_id, attempt, seq).
ALTER TABLE training_events DROP CONSTRAINT pk_training_events;
ALTER TABLE training_events ADD CONSTRAINT training_events_pkey PRIMARY KEY (id);
ALTER TABLE training_events ADD CONSTRAINT uq_training_events_run_attempt_seq
  UNIQUE (run_id, attempt, seq);
