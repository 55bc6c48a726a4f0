//! Tidewater SQLite connector: the SQLite target (sink).
//!
//! See [`sink`] for how the target is written (file, durability, table names, apply) and
//! [`types`] for the type mapping.

pub mod check;
pub mod sink;
pub mod sql;
pub mod types;

pub use check::check_target;
pub use sink::{sqlite_table_name, SqliteSink};
/// The sqlx version this connector uses, for callers that read the target file (tests,
/// tools) without depending on sqlx themselves.
pub use sqlx;
