-- How far an unfinished snapshot has copied each table (JSON written by the engine in the
-- same transaction as each copied chunk), so that a restart continues the copy instead of
-- starting it over. NULL outside a snapshot. Run only when the column is missing.
ALTER TABLE tidewater_checkpoints ADD COLUMN copy_progress TEXT;
