mod ops;
mod pg_cli;
mod pg_faults;
mod pg_hostile;
mod pg_ops;
mod pg_sync;
mod pg_types;
