-- How far an unfinished snapshot has copied each table (JSON written by the engine in the
-- same transaction as each copied chunk), so that a restart continues the copy instead of
-- starting it over. NULL outside a snapshot.
ALTER TABLE public.tidewater_checkpoints ADD COLUMN IF NOT EXISTS copy_progress text;
