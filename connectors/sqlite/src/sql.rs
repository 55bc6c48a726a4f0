//! SQL text helpers: the one place identifiers are quoted, and the one table that maps
//! SQLite result codes to what the caller does next.

use std::path::Path;

use tidewater_core::{ConnectorError, ErrorClass};

/// Quotes an identifier for SQLite (`"` doubled). Every table and column name goes
/// through here; values are never formatted into SQL, they are bound.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// SQLite primary result codes (<https://www.sqlite.org/rescode.html>). Extended codes
/// carry the primary code in their low 8 bits.
pub mod code {
    pub const ERROR: i32 = 1;
    pub const INTERNAL: i32 = 2;
    pub const PERM: i32 = 3;
    pub const ABORT: i32 = 4;
    pub const BUSY: i32 = 5;
    pub const LOCKED: i32 = 6;
    pub const NOMEM: i32 = 7;
    pub const READONLY: i32 = 8;
    pub const INTERRUPT: i32 = 9;
    pub const IOERR: i32 = 10;
    pub const CORRUPT: i32 = 11;
    pub const NOTFOUND: i32 = 12;
    pub const FULL: i32 = 13;
    pub const CANTOPEN: i32 = 14;
    pub const PROTOCOL: i32 = 15;
    pub const SCHEMA: i32 = 17;
    pub const TOOBIG: i32 = 18;
    pub const CONSTRAINT: i32 = 19;
    pub const MISMATCH: i32 = 20;
    pub const MISUSE: i32 = 21;
    pub const NOLFS: i32 = 22;
    pub const AUTH: i32 = 23;
    pub const RANGE: i32 = 25;
    pub const NOTADB: i32 = 26;
}

/// What to do about a SQLite result code (primary or extended). The one table:
///
/// | Code | Class | Why |
/// |---|---|---|
/// | `BUSY`, `LOCKED` | Transient | another connection holds the lock past `busy_timeout` |
/// | `IOERR` (all extended codes) | Transient | an I/O error; retried with backoff, shown in `last_error` |
/// | `NOMEM`, `INTERRUPT`, `ABORT`, `PROTOCOL`, `SCHEMA` | Transient | the statement may succeed when run again |
/// | `CONSTRAINT` (CHECK, NOT NULL, UNIQUE, FOREIGN KEY, trigger) | Event | the row breaks a rule of the target table |
/// | `MISMATCH`, `TOOBIG` | Event | the row's value does not fit (e.g. text into an `INTEGER PRIMARY KEY`, > 1 GB) |
/// | `CANTOPEN`, `READONLY`, `PERM`, `AUTH`, `NOLFS` | Fatal | the file cannot be opened or written: fix path/permissions |
/// | `CORRUPT`, `NOTADB` | Fatal | the file is not a usable SQLite database |
/// | `FULL` | Fatal | the disk is full |
/// | `ERROR`, `RANGE`, `MISUSE`, `INTERNAL`, `NOTFOUND` | Fatal | a table/column the target lacks, or a bug: needs a human |
/// | anything else | Transient | |
///
/// `RANGE` is a bind-parameter index out of range: a bug in the statement, not in the
/// row, so it is fatal rather than dead-lettering every row.
pub fn classify(result_code: i32) -> ErrorClass {
    result_code_class(result_code).unwrap_or(ErrorClass::Transient)
}

/// The classification table; `None` for a result code it does not know (see
/// [`ConnectorError::classified`]).
pub fn result_code_class(result_code: i32) -> Option<ErrorClass> {
    use code::*;
    Some(match result_code & 0xff {
        BUSY | LOCKED | IOERR | NOMEM | INTERRUPT | ABORT | PROTOCOL | SCHEMA => ErrorClass::Transient,
        CONSTRAINT | MISMATCH | TOOBIG => ErrorClass::Event,
        CANTOPEN | READONLY | PERM | AUTH | NOLFS | CORRUPT | NOTADB | FULL => ErrorClass::Fatal,
        ERROR | RANGE | MISUSE | INTERNAL | NOTFOUND => ErrorClass::Fatal,
        _ => return None,
    })
}

/// The name of a primary result code, for messages.
fn code_name(result_code: i32) -> &'static str {
    use code::*;
    match result_code & 0xff {
        ERROR => "SQLITE_ERROR",
        INTERNAL => "SQLITE_INTERNAL",
        PERM => "SQLITE_PERM",
        ABORT => "SQLITE_ABORT",
        BUSY => "SQLITE_BUSY",
        LOCKED => "SQLITE_LOCKED",
        NOMEM => "SQLITE_NOMEM",
        READONLY => "SQLITE_READONLY",
        INTERRUPT => "SQLITE_INTERRUPT",
        IOERR => "SQLITE_IOERR",
        CORRUPT => "SQLITE_CORRUPT",
        NOTFOUND => "SQLITE_NOTFOUND",
        FULL => "SQLITE_FULL",
        CANTOPEN => "SQLITE_CANTOPEN",
        PROTOCOL => "SQLITE_PROTOCOL",
        SCHEMA => "SQLITE_SCHEMA",
        TOOBIG => "SQLITE_TOOBIG",
        CONSTRAINT => "SQLITE_CONSTRAINT",
        MISMATCH => "SQLITE_MISMATCH",
        MISUSE => "SQLITE_MISUSE",
        NOLFS => "SQLITE_NOLFS",
        AUTH => "SQLITE_AUTH",
        RANGE => "SQLITE_RANGE",
        NOTADB => "SQLITE_NOTADB",
        _ => "SQLITE_UNKNOWN",
    }
}

/// What the user does about a fatal file-level error.
fn fix_for(result_code: i32, path: &Path) -> Option<String> {
    use code::*;
    let path = path.display();
    Some(match result_code & 0xff {
        CANTOPEN => format!(
            "cannot open the SQLite database {path}: make sure its directory exists and the daemon's user may \
             create and write files in it (the database, {path}-wal and {path}-shm), or fix the target's `path`"
        ),
        READONLY | PERM | AUTH => format!(
            "the SQLite database {path} is read-only for the daemon: give its user write access to the file, \
             {path}-wal, {path}-shm and their directory"
        ),
        CORRUPT | NOTADB => format!(
            "{path} is not a usable SQLite database (corrupt, or not SQLite): restore it from a backup, or point \
             the target's `path` at a new file (the pipeline then copies everything again)"
        ),
        FULL => format!("the disk holding the SQLite database {path} is full: free space and restart"),
        NOLFS => format!("the file system holding {path} does not support large files: move the database"),
        _ => return None,
    })
}

/// Converts a sqlx error, classifying it. `what` says what was being done; `path` is the
/// database file, named in messages that need a human.
pub fn sqlite_error(what: impl std::fmt::Display, path: &Path, e: sqlx::Error) -> ConnectorError {
    match e {
        sqlx::Error::Database(db) => {
            let result_code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(code::ERROR);
            let class = result_code_class(result_code);
            let mut message = format!("{what}: {} ({})", db.message(), code_name(result_code));
            if let Some(fix) = fix_for(result_code, path) {
                message = format!("{message}; {fix}");
            }
            ConnectorError::classified(class, message).with_code(result_code.to_string())
        }
        sqlx::Error::Io(io) => ConnectorError::transient(format!("{what}: I/O error on {}: {io}", path.display())),
        sqlx::Error::WorkerCrashed | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            ConnectorError::transient(format!("{what}: {e}"))
        }
        other => ConnectorError::fatal(format!("{what}: {other} (SQLite database {})", path.display())),
    }
}

/// Whether the connection may be unusable after `e` (it is then dropped and reopened).
pub fn connection_may_be_broken(e: &sqlx::Error) -> bool {
    !matches!(e, sqlx::Error::Database(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_escaped() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("we\"ird; drop"), "\"we\"\"ird; drop\"");
        assert_eq!(quote_ident("tä ble"), "\"tä ble\"");
    }

    #[test]
    fn result_codes_map_to_classes() {
        let table = [
            (5, ErrorClass::Transient),    // SQLITE_BUSY
            (517, ErrorClass::Transient),  // SQLITE_BUSY_SNAPSHOT
            (6, ErrorClass::Transient),    // SQLITE_LOCKED
            (10, ErrorClass::Transient),   // SQLITE_IOERR
            (3338, ErrorClass::Transient), // SQLITE_IOERR_FSYNC
            (7, ErrorClass::Transient),    // SQLITE_NOMEM
            (17, ErrorClass::Transient),   // SQLITE_SCHEMA
            (19, ErrorClass::Event),       // SQLITE_CONSTRAINT
            (275, ErrorClass::Event),      // SQLITE_CONSTRAINT_CHECK
            (1299, ErrorClass::Event),     // SQLITE_CONSTRAINT_NOTNULL
            (2067, ErrorClass::Event),     // SQLITE_CONSTRAINT_UNIQUE
            (1811, ErrorClass::Event),     // SQLITE_CONSTRAINT_TRIGGER
            (787, ErrorClass::Event),      // SQLITE_CONSTRAINT_FOREIGNKEY
            (20, ErrorClass::Event),       // SQLITE_MISMATCH
            (18, ErrorClass::Event),       // SQLITE_TOOBIG
            (14, ErrorClass::Fatal),       // SQLITE_CANTOPEN
            (8, ErrorClass::Fatal),        // SQLITE_READONLY
            (264, ErrorClass::Fatal),      // SQLITE_READONLY_RECOVERY
            (3, ErrorClass::Fatal),        // SQLITE_PERM
            (11, ErrorClass::Fatal),       // SQLITE_CORRUPT
            (26, ErrorClass::Fatal),       // SQLITE_NOTADB
            (13, ErrorClass::Fatal),       // SQLITE_FULL
            (1, ErrorClass::Fatal),        // SQLITE_ERROR (no such table, ...)
            (25, ErrorClass::Fatal),       // SQLITE_RANGE
            (21, ErrorClass::Fatal),       // SQLITE_MISUSE
            (99, ErrorClass::Transient),   // unknown
        ];
        for (result_code, class) in table {
            assert_eq!(classify(result_code), class, "result code {result_code}");
        }
        assert_eq!(result_code_class(99), None);
    }

    #[test]
    fn fatal_file_errors_name_the_path_and_the_fix() {
        let path = Path::new("/var/lib/tidewater/edge.db");
        for result_code in [code::CANTOPEN, code::READONLY, code::CORRUPT, code::NOTADB, code::FULL] {
            let fix = fix_for(result_code, path).unwrap_or_default();
            assert!(fix.contains("/var/lib/tidewater/edge.db"), "{result_code}: {fix}");
        }
        assert!(fix_for(code::CONSTRAINT, path).is_none());
    }
}
