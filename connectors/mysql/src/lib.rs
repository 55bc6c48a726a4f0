//! Tidewater MySQL/MariaDB connector: binlog source, consistent snapshot, and sink.
