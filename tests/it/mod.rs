mod pg_faults;
mod pg_sync;
