//! Tidewater MySQL/MariaDB connector: binlog source, consistent snapshot, and sink.

pub mod errors;
pub mod quote;
pub mod sink;
pub mod sink_sql;
pub mod sink_types;
pub mod tls;

pub use sink::MysqlSink;
pub use tls::{MysqlSslMode, MysqlTls};

// MySQL/MariaDB binlog source.
pub mod binlog_events;
pub mod binlog_pos;
pub mod catalog;
pub mod decode;
pub mod hub;
pub(crate) mod reader;
pub mod snapshot;
pub mod source;
pub mod source_check;
pub mod source_conn;
pub mod source_ddl;
pub(crate) mod table_maps;

pub use source::{MysqlSource, MysqlSourceConfig};
