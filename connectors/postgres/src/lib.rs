//! PostgreSQL connector for Tidewater: logical replication source (pgoutput over a
//! hand-spoken replication connection), consistent snapshot, and target sink.

pub mod catalog;
pub mod check;
pub mod conn;
mod copy_text;
pub mod pgoutput;
pub mod replication;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod sql;
pub mod tls;
pub mod types;
pub mod verify;

pub use conn::PgEndpoint;
pub use sink::PgSink;
pub use source::{PgSource, PgSourceConfig};
pub use tls::{SslMode, TlsSettings};
