-- The source position of the consistent read a table's rows were copied from: stream
-- changes to the table at or before it are already in the copy and are not applied
-- again (tables without a key would otherwise get them twice).
ALTER TABLE public.tidewater_snapshot_tables ADD COLUMN IF NOT EXISTS copied_position text;
