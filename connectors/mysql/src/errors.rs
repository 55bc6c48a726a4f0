//! MySQL/MariaDB error numbers → what the caller does next. One table for the source and
//! the sink, so the retry policy never guesses.
//!
//! Numbers are the server's (and client library's) error numbers, not SQLSTATEs: MySQL maps
//! many unrelated errors onto `HY000`, so the SQLSTATE alone cannot tell a lost binlog from a
//! full disk.

use tidewater_core::{ConnectorError, ErrorClass};

/// What to do about a MySQL/MariaDB error number.
///
/// - `Transient`: the same work may succeed later (connection lost, server restarting or
///   read-only during a failover, deadlock, lock wait timeout, resource limits).
/// - `Event`: the statement's rows were rejected for a reason tied to their values
///   (constraint, out-of-range or malformed value, too long, foreign key): dead-letter them.
/// - `Fatal`: needs a human (credentials, privileges, a missing table or database, a purged
///   binlog, a duplicate server id, SQL the server does not accept).
///
/// Numbers not in the table are treated as transient: retried with backoff and shown in
/// `last_error`, never silently skipped.
pub fn classify_mysql_error(code: u16) -> ErrorClass {
    mysql_error_class(code).unwrap_or(ErrorClass::Transient)
}

/// The classification table; `None` for an error number it does not know (see
/// [`ConnectorError::classified`]).
pub fn mysql_error_class(code: u16) -> Option<ErrorClass> {
    use ErrorClass::{Event, Fatal, Transient};
    Some(match code {
        // ---- transient -------------------------------------------------------------
        1205 => Transient,               // ER_LOCK_WAIT_TIMEOUT
        1213 => Transient,               // ER_LOCK_DEADLOCK
        1206 => Transient,               // ER_LOCK_TABLE_FULL
        3572 => Transient,               // ER_LOCK_NOWAIT
        1020 => Transient,               // ER_CHECKREAD: record changed since last read
        1615 => Transient,               // ER_NEED_REPREPARE
        1040 => Transient,               // ER_CON_COUNT_ERROR: too many connections
        1203 => Transient,               // ER_TOO_MANY_USER_CONNECTIONS
        1226 => Transient,               // ER_USER_LIMIT_REACHED
        1461 => Transient,               // ER_MAX_PREPARED_STMT_COUNT_REACHED
        1637 => Transient,               // ER_TOO_MANY_CONCURRENT_TRXS
        1053 => Transient,               // ER_SERVER_SHUTDOWN
        1317 => Transient,               // ER_QUERY_INTERRUPTED
        1927 => Transient,               // ER_CONNECTION_KILLED (MariaDB)
        1969 => Transient,               // ER_STATEMENT_TIMEOUT (MariaDB)
        3024 => Transient,               // ER_QUERY_TIMEOUT (MySQL)
        1158..=1161 => Transient,        // ER_NET_READ_ERROR / _INTERRUPTED, ER_NET_ERROR_ON_WRITE / _WRITE_INTERRUPTED
        1021 => Transient,               // ER_DISK_FULL
        1114 => Transient,               // ER_RECORD_FILE_FULL: the table is full
        1030 => Transient,               // ER_GET_ERRNO: storage engine error
        1037 | 1038 | 1041 => Transient, // out of memory / sort memory / resources
        1180 | 1181 => Transient,        // ER_ERROR_DURING_COMMIT / _ROLLBACK
        1290 => Transient,               // ER_OPTION_PREVENTS_STATEMENT: --read-only (failover in progress)
        1792 => Transient,               // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
        1836 => Transient,               // ER_READ_ONLY_MODE
        2002 | 2003 => Transient,        // CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR: cannot connect
        2005 => Transient,               // CR_UNKNOWN_HOST (DNS may come back)
        2006 => Transient,               // CR_SERVER_GONE_ERROR
        2013 => Transient,               // CR_SERVER_LOST
        2055 => Transient,               // CR_SERVER_LOST_EXTENDED
        // ---- event: the rows' values ------------------------------------------------
        1048 => Event,        // ER_BAD_NULL_ERROR: column cannot be null
        1062 => Event,        // ER_DUP_ENTRY (an upsert only meets it on another unique key)
        1169 => Event,        // ER_DUP_UNIQUE
        1586 => Event,        // ER_DUP_ENTRY_WITH_KEY_NAME
        1557 => Event,        // ER_FOREIGN_DUPLICATE_KEY
        1216 | 1217 => Event, // ER_NO_REFERENCED_ROW / ER_ROW_IS_REFERENCED
        1451 | 1452 => Event, // ER_ROW_IS_REFERENCED_2 / ER_NO_REFERENCED_ROW_2
        1263 => Event,        // ER_WARN_NULL_TO_NOTNULL
        1264 => Event,        // ER_WARN_DATA_OUT_OF_RANGE
        1265 => Event,        // WARN_DATA_TRUNCATED
        1292 => Event,        // ER_TRUNCATED_WRONG_VALUE (bad date/time, ...)
        1300 => Event,        // ER_INVALID_CHARACTER_STRING
        1366 => Event,        // ER_TRUNCATED_WRONG_VALUE_FOR_FIELD (e.g. 4-byte UTF-8 in utf8mb3)
        1367 => Event,        // ER_ILLEGAL_VALUE_FOR_TYPE
        1406 => Event,        // ER_DATA_TOO_LONG
        1411 => Event,        // ER_WRONG_VALUE_FOR_TYPE
        1416 => Event,        // ER_CANT_CREATE_GEOMETRY_OBJECT
        1690 => Event,        // ER_DATA_OUT_OF_RANGE (BIGINT value is out of range)
        1118 => Event,        // ER_TOO_BIG_ROWSIZE (a row too large for the table's row format)
        1153 => Event,        // ER_NET_PACKET_TOO_LARGE: a row larger than max_allowed_packet
        1301 => Event,        // ER_WARN_ALLOWED_PACKET_OVERFLOWED
        1136 => Event,        // ER_WRONG_VALUE_COUNT_ON_ROW
        3140 => Event,        // ER_INVALID_JSON_TEXT (MySQL)
        3146 => Event,        // ER_INVALID_TYPE_FOR_JSON (MySQL)
        3156 => Event,        // ER_INVALID_JSON_VALUE_FOR_CAST (MySQL)
        3819 => Event,        // ER_CHECK_CONSTRAINT_VIOLATED (MySQL)
        4025 => Event,        // ER_CONSTRAINT_FAILED (MariaDB CHECK, e.g. json_valid)
        // ---- fatal: needs a human ---------------------------------------------------
        1044 => Fatal,        // ER_DBACCESS_DENIED_ERROR
        1045 => Fatal,        // ER_ACCESS_DENIED_ERROR: wrong user or password
        1698 => Fatal,        // ER_ACCESS_DENIED_NO_PASSWORD_ERROR
        1129 => Fatal,        // ER_HOST_IS_BLOCKED (needs FLUSH HOSTS)
        1130 => Fatal,        // ER_HOST_NOT_PRIVILEGED
        1142 => Fatal,        // ER_TABLEACCESS_DENIED_ERROR
        1143 => Fatal,        // ER_COLUMNACCESS_DENIED_ERROR
        1227 => Fatal,        // ER_SPECIFIC_ACCESS_DENIED_ERROR (missing privilege)
        1370 => Fatal,        // ER_PROCACCESS_DENIED_ERROR
        1820 | 1862 => Fatal, // ER_MUST_CHANGE_PASSWORD(_LOGIN)
        3118 => Fatal,        // ER_ACCOUNT_HAS_BEEN_LOCKED
        1251 => Fatal,        // ER_NOT_SUPPORTED_AUTH_MODE
        1524 => Fatal,        // ER_PLUGIN_IS_NOT_LOADED (authentication plugin)
        1046 => Fatal,        // ER_NO_DB_ERROR
        1049 => Fatal,        // ER_BAD_DB_ERROR: unknown database
        1146 => Fatal,        // ER_NO_SUCH_TABLE
        1054 => Fatal,        // ER_BAD_FIELD_ERROR: unknown column
        1060 => Fatal,        // ER_DUP_FIELDNAME (e.g. columns differing only in case)
        1059 => Fatal,        // ER_TOO_LONG_IDENT
        1064 => Fatal,        // ER_PARSE_ERROR
        1071 => Fatal,        // ER_TOO_LONG_KEY
        1074 => Fatal,        // ER_TOO_BIG_FIELDLENGTH
        1101 => Fatal,        // ER_BLOB_CANT_HAVE_DEFAULT
        1364 => Fatal,        // ER_NO_DEFAULT_FOR_FIELD: target column the source does not fill
        1193 => Fatal,        // ER_UNKNOWN_SYSTEM_VARIABLE
        1231 => Fatal,        // ER_WRONG_VALUE_FOR_VAR
        1235 => Fatal,        // ER_NOT_SUPPORTED_YET
        1286 => Fatal,        // ER_UNKNOWN_STORAGE_ENGINE
        1236 => Fatal,        // ER_MASTER_FATAL_ERROR_READING_BINLOG: binlog purged / bad position
        4052 => Fatal,        // duplicate server id
        _ => return None,
    })
}

/// A classified error from a server error number and message; `what` says what was being
/// done (and where), e.g. "upserting into shop.orders".
pub fn mysql_error(what: impl std::fmt::Display, code: u16, message: &str) -> ConnectorError {
    ConnectorError::classified(mysql_error_class(code), format!("{what}: {message}")).with_code(code.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorClass::{Event, Fatal, Transient};

    #[test]
    fn error_numbers_map_to_classes() {
        let table: &[(u16, ErrorClass)] = &[
            (1205, Transient),
            (1213, Transient),
            (2006, Transient),
            (2013, Transient),
            (1040, Transient),
            (1053, Transient),
            (2002, Transient),
            (2003, Transient),
            (1927, Transient),
            (1317, Transient),
            (1290, Transient),
            (1048, Event),
            (1062, Event),
            (1264, Event),
            (1265, Event),
            (1366, Event),
            (1406, Event),
            (1292, Event),
            (1690, Event),
            (3140, Event),
            (4025, Event),
            (1452, Event),
            (1451, Event),
            (1136, Event),
            (3819, Event),
            (1044, Fatal),
            (1045, Fatal),
            (1142, Fatal),
            (1146, Fatal),
            (1227, Fatal),
            (1236, Fatal),
            (1049, Fatal),
            (4052, Fatal),
            (1064, Fatal),
            (1071, Fatal),
            (1364, Fatal),
            (9999, Transient),
        ];
        for &(code, class) in table {
            assert_eq!(classify_mysql_error(code), class, "error {code}");
        }
        assert_eq!(mysql_error_class(9999), None);
    }

    #[test]
    fn mysql_error_keeps_number_and_context() {
        let e = mysql_error("upserting into shop.orders", 1406, "Data too long for column 'note' at row 3");
        assert_eq!(e.class, Event);
        assert_eq!(e.code.as_deref(), Some("1406"));
        assert_eq!(e.to_string(), "upserting into shop.orders: Data too long for column 'note' at row 3 [1406]");
    }
}
