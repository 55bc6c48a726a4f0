//! SQL text helpers: the one place identifiers are quoted, and the one table that maps
//! SQLSTATEs to what the caller does next.

use tidewater_core::{ConnectorError, ErrorClass, TableId};

/// Quotes an identifier for Postgres. Every identifier from a catalog or the configuration
/// goes through here; values are never formatted into SQL, they are bound.
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

/// `"schema"."table"`.
pub fn quote_table(id: &TableId) -> String {
    format!("{}.{}", quote_ident(&id.schema), quote_ident(&id.name))
}

/// Quotes a string literal for the replication protocol, which only speaks simple query
/// (no bind parameters). Only used for names we validated or generated.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// What to do about a SQLSTATE. The table follows the SQLSTATE classes: connection and
/// resource problems are retried, data problems are tied to the event, the rest needs a
/// human.
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    sqlstate_class(code).unwrap_or(ErrorClass::Transient)
}

/// The classification table; `None` for a code it does not know (see
/// [`ConnectorError::classified`]).
pub fn sqlstate_class(code: &str) -> Option<ErrorClass> {
    Some(match code {
        // serialization failure, deadlock
        "40001" | "40P01" => ErrorClass::Transient,
        // admin/crash shutdown, cannot connect now, query canceled
        "57P01" | "57P02" | "57P03" | "57014" => ErrorClass::Transient,
        // object in use: a replication slot still held by a previous walsender
        "55006" => ErrorClass::Transient,
        // lock not available
        "55P03" => ErrorClass::Transient,
        c if c.starts_with("08") => ErrorClass::Transient, // connection exception
        c if c.starts_with("53") => ErrorClass::Transient, // insufficient resources
        c if c.starts_with("58") => ErrorClass::Transient, // system error (I/O)
        c if c.starts_with("22") => ErrorClass::Event,     // data exception
        c if c.starts_with("23") => ErrorClass::Event,     // integrity constraint violation
        c if c.starts_with("28") => ErrorClass::Fatal,     // invalid authorization
        c if c.starts_with("42") => ErrorClass::Fatal,     // syntax error or access rule violation
        "55000" => ErrorClass::Fatal,                      // object not in prerequisite state
        "3D000" | "3F000" => ErrorClass::Fatal,            // database / schema does not exist
        _ => return None,
    })
}

/// An error with its causes: tokio-postgres' own text is only the kind ("error connecting to
/// server"), the reason ("Connection refused") is in the source chain.
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Converts a tokio-postgres error, classifying it. `what` says what was being done.
pub fn pg_error(what: impl std::fmt::Display, e: tokio_postgres::Error) -> ConnectorError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let mut message = format!("{what}: {}", db.message());
            if let Some(detail) = db.detail() {
                message.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                message.push_str(&format!("; hint: {hint}"));
            }
            ConnectorError::classified(sqlstate_class(code), message).with_code(code)
        }
        None => {
            let text = with_causes(&e);
            let class = if text.contains("password authentication failed")
                || text.contains("invalid password")
                || text.contains("password missing")
            {
                ErrorClass::Fatal
            } else {
                ErrorClass::Transient
            };
            ConnectorError::new(class, format!("{what}: {text}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_escaped() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("we\"ird; drop"), "\"we\"\"ird; drop\"");
        assert_eq!(quote_table(&TableId::new("Mixed Case", "tä")), "\"Mixed Case\".\"tä\"");
    }

    #[test]
    fn sqlstates_map_to_classes() {
        let table = [
            ("40001", ErrorClass::Transient),
            ("40P01", ErrorClass::Transient),
            ("08006", ErrorClass::Transient),
            ("53300", ErrorClass::Transient),
            ("57P01", ErrorClass::Transient),
            ("57P03", ErrorClass::Transient),
            ("55006", ErrorClass::Transient),
            ("23505", ErrorClass::Event),
            ("23514", ErrorClass::Event),
            ("22003", ErrorClass::Event),
            ("22P02", ErrorClass::Event),
            ("28P01", ErrorClass::Fatal),
            ("42P01", ErrorClass::Fatal),
            ("42501", ErrorClass::Fatal),
            ("3D000", ErrorClass::Fatal),
            ("XX000", ErrorClass::Transient),
        ];
        for (code, class) in table {
            assert_eq!(classify_sqlstate(code), class, "{code}");
        }
        assert_eq!(sqlstate_class("P0001"), None, "raise_exception is in no table");
        assert!(ConnectorError::classified(sqlstate_class("P0001"), "x").unclassified);
    }
}
