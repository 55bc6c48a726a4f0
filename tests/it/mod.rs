mod pg_sync;
