//! Tidewater SQLite connector: the SQLite target (sink).
