-- The source position of the consistent read a table's rows were copied from: stream
-- changes to the table at or before it are already in the copy and are not applied
-- again (tables without a key would otherwise get them twice). Run only when the column
-- is missing (MySQL 8 has no ADD COLUMN IF NOT EXISTS).
ALTER TABLE tidewater_snapshot_tables ADD COLUMN copied_position TEXT NULL;
