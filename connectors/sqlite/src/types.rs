//! Type mapping: core column types to declared SQLite column types, and core values to
//! bound SQLite values.
//!
//! SQLite is dynamically typed: a column's declared type only gives it an *affinity*,
//! which converts some bound values on the way in (<https://www.sqlite.org/datatype3.html>).
//! The declared types below are the plain affinity names, chosen so that no conversion
//! ever loses information: exact decimals, dates and JSON are declared `TEXT` (a `NUMERIC`
//! column would turn `12.50` into the float `12.5`).

use std::borrow::Cow;

use chrono::{DateTime, Datelike, NaiveDateTime, Utc};
use tidewater_core::{ColumnType, Value};

/// The declared type of a column created for an unsigned 64-bit source column.
pub const UINT64_DECLARED: &str = "UNSIGNED64 BLOB";

/// The declared SQLite type of a column created for a source column of type `kind`, and
/// how its values are stored. One table; the README shows the same.
///
/// | Core type | Declared | Stored as |
/// |---|---|---|
/// | `Bool` | `INTEGER` | 0 / 1 |
/// | `Int16`, `Int32`, `Int64` | `INTEGER` | integer |
/// | `UInt64` | `UNSIGNED64 BLOB` (no affinity) | integer up to 2^63-1, exact decimal text above (integers sort before text, so order is kept); a column declared `INTEGER` by hand dead-letters values above 2^63-1 |
/// | `Float32`, `Float64` | `REAL` | float; ±Infinity as float; NaN as the text `'NaN'` (SQLite would store a NaN float as NULL) |
/// | `Numeric` | `TEXT` | exact decimal text (`12.50`, `NaN`) |
/// | `Text`, `Varchar`, `Char`, `Enum` | `TEXT` | text |
/// | `Bytes` | `BLOB` | bytes |
/// | `Json`, `Jsonb` | `TEXT` | JSON text (works with SQLite's `json_*` functions) |
/// | `Uuid` | `TEXT` | `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` |
/// | `Date` | `TEXT` | `YYYY-MM-DD` as the source wrote it |
/// | `Time`, `TimeTz` | `TEXT` | `HH:MM:SS[.ffffff][+HH]` as the source wrote it |
/// | `Timestamp` | `TEXT` | `YYYY-MM-DDTHH:MM:SS.ffffff` |
/// | `TimestampTz` | `TEXT` | `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC) |
/// | `Interval` | `TEXT` | the source's text (ISO 8601 duration) |
/// | `Array` | `TEXT` | the source's array literal, e.g. `{1,2,NULL}` |
/// | `Other` | `TEXT` | the source's text form |
///
/// Timestamps are normalized to fixed-width ISO 8601 (6 fractional digits, `T`, `Z` for
/// UTC), which SQLite's date functions understand (they do not understand Postgres' `+00`)
/// and which sorts as text in time order. Values outside years 1-9999 (`infinity`, BC)
/// keep the source's text.
pub fn declared_type(kind: &ColumnType) -> &'static str {
    match kind {
        ColumnType::Bool | ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => "INTEGER",
        // No affinity ("BLOB" in the name, no "INT"): values up to 2^63-1 are stored as
        // integers, larger ones as their exact decimal text (an INTEGER column would turn
        // them into rounded floats).
        ColumnType::UInt64 => UINT64_DECLARED,
        ColumnType::Float32 | ColumnType::Float64 => "REAL",
        ColumnType::Bytes => "BLOB",
        ColumnType::Numeric { .. }
        | ColumnType::Text
        | ColumnType::Varchar(_)
        | ColumnType::Char(_)
        | ColumnType::Enum
        | ColumnType::Json
        | ColumnType::Jsonb
        | ColumnType::Uuid
        | ColumnType::Date
        | ColumnType::Time
        | ColumnType::TimeTz
        | ColumnType::Timestamp
        | ColumnType::TimestampTz
        | ColumnType::Interval
        | ColumnType::Array
        | ColumnType::Other => "TEXT",
    }
}

/// A column's type affinity, derived from its declared type by SQLite's rules
/// (<https://www.sqlite.org/datatype3.html#determination_of_column_affinity>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    /// No affinity (declared `BLOB` or nothing): values are stored as bound.
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    pub fn of_declared(declared: &str) -> Affinity {
        let d = declared.to_ascii_uppercase();
        if d.contains("INT") {
            Affinity::Integer
        } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
            Affinity::Text
        } else if d.contains("BLOB") || d.trim().is_empty() {
            Affinity::Blob
        } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }
}

/// A value as bound to a statement parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(Cow<'a, str>),
    Blob(&'a [u8]),
}

/// The value to bind for `value`, stored in a column of `affinity`. An error (the row
/// cannot be stored exactly) names the value; the caller adds the column.
pub fn to_bound(value: &Value, affinity: Affinity) -> Result<Bound<'_>, String> {
    Ok(match value {
        Value::Null => Bound::Null,
        Value::Unchanged => return Err("internal error: an unchanged (TOAST) value reached a statement".into()),
        Value::Bool(b) => Bound::Int(i64::from(*b)),
        Value::Int(i) => Bound::Int(*i),
        Value::UInt(u) => match (i64::try_from(*u), affinity) {
            (_, Affinity::Text) => Bound::Text(Cow::Owned(u.to_string())),
            (Ok(i), _) => Bound::Int(i),
            (Err(_), Affinity::Blob) => Bound::Text(Cow::Owned(u.to_string())),
            (Err(_), _) => {
                return Err(format!(
                    "value {u} is above the largest SQLite INTEGER (9223372036854775807) and would be stored \
                     rounded; declare the target column TEXT to keep such values exactly"
                ))
            }
        },
        // sqlite3_bind_double stores NaN as NULL: keep it as text instead.
        Value::Float(f) if f.is_nan() => Bound::Text(Cow::Borrowed("NaN")),
        Value::Float(f) => Bound::Real(*f),
        Value::Bytes(b) => Bound::Blob(b),
        Value::Timestamp(s) => Bound::Text(normalize_timestamp(s).map_or(Cow::Borrowed(s.as_str()), Cow::Owned)),
        Value::TimestampTz(s) => Bound::Text(normalize_timestamptz(s).map_or(Cow::Borrowed(s.as_str()), Cow::Owned)),
        Value::Decimal(s)
        | Value::Text(s)
        | Value::Json(s)
        | Value::Uuid(s)
        | Value::Date(s)
        | Value::Time(s)
        | Value::TimeTz(s)
        | Value::Interval(s)
        | Value::Other(s) => Bound::Text(Cow::Borrowed(s)),
    })
}

/// Formats an instant as the sink writes timestamps with zone (also used for its own
/// bookkeeping columns).
pub fn format_utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// `2024-01-02 03:04:05.5+00` (any offset, `T` or space) → `2024-01-02T03:04:05.500000Z`;
/// `None` when the text is not such a timestamp or its year is outside 1-9999.
pub fn normalize_timestamptz(s: &str) -> Option<String> {
    let parsed = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z")
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%#z"))
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()?;
    let utc = parsed.with_timezone(&Utc);
    (1..=9999).contains(&utc.year()).then(|| format_utc(utc))
}

/// `2024-01-02 03:04:05.5` → `2024-01-02T03:04:05.500000`; `None` when the text is not
/// such a timestamp or its year is outside 1-9999.
pub fn normalize_timestamp(s: &str) -> Option<String> {
    let parsed = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
        .ok()?;
    (1..=9999).contains(&parsed.year()).then(|| parsed.format("%Y-%m-%dT%H:%M:%S%.6f").to_string())
}

/// A typed value from the source's text form of a constant (a column's
/// `existing_rows_value`), so it is stored like the same value arriving in a row.
pub fn value_from_text(kind: &ColumnType, text: &str) -> Value {
    let fallback = || Value::Text(text.to_string());
    match kind {
        ColumnType::Bool => match text.to_ascii_lowercase().as_str() {
            "t" | "true" | "1" | "y" | "yes" | "on" => Value::Bool(true),
            "f" | "false" | "0" | "n" | "no" | "off" => Value::Bool(false),
            _ => fallback(),
        },
        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => {
            text.parse().map_or_else(|_| fallback(), Value::Int)
        }
        ColumnType::UInt64 => text.parse().map_or_else(|_| fallback(), Value::UInt),
        ColumnType::Float32 | ColumnType::Float64 => match text {
            "NaN" => Value::Float(f64::NAN),
            "Infinity" => Value::Float(f64::INFINITY),
            "-Infinity" => Value::Float(f64::NEG_INFINITY),
            _ => text.parse().map_or_else(|_| fallback(), Value::Float),
        },
        ColumnType::Numeric { .. } => Value::Decimal(text.to_string()),
        ColumnType::Bytes => text.strip_prefix("\\x").and_then(decode_hex).map_or_else(fallback, Value::Bytes),
        ColumnType::Json | ColumnType::Jsonb => Value::Json(text.to_string()),
        ColumnType::Timestamp => Value::Timestamp(text.to_string()),
        ColumnType::TimestampTz => Value::TimestampTz(text.to_string()),
        _ => fallback(),
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok())).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn affinity_follows_sqlite_rules() {
        let table = [
            ("INTEGER", Affinity::Integer),
            ("BIGINT", Affinity::Integer),
            ("POINT", Affinity::Integer), // "INT" wins, as in SQLite
            ("TEXT", Affinity::Text),
            ("varchar(20)", Affinity::Text),
            ("BLOB", Affinity::Blob),
            ("", Affinity::Blob),
            ("REAL", Affinity::Real),
            ("double precision", Affinity::Real),
            ("NUMERIC", Affinity::Numeric),
            ("DATETIME", Affinity::Numeric),
        ];
        for (declared, affinity) in table {
            assert_eq!(Affinity::of_declared(declared), affinity, "{declared}");
        }
        // Every declared type we create has the affinity its name says.
        for kind in [ColumnType::Bool, ColumnType::Float64, ColumnType::Numeric { precision: None, scale: None }] {
            let a = Affinity::of_declared(declared_type(&kind));
            assert!(matches!(a, Affinity::Integer | Affinity::Real | Affinity::Text), "{kind:?}");
        }
        assert_eq!(Affinity::of_declared(declared_type(&ColumnType::Bytes)), Affinity::Blob);
    }

    #[test]
    fn values_bind_without_loss() {
        let t = |s: &str| Bound::Text(Cow::Owned(s.to_string()));
        assert_eq!(to_bound(&Value::Bool(true), Affinity::Integer).unwrap(), Bound::Int(1));
        assert_eq!(to_bound(&Value::UInt(5), Affinity::Integer).unwrap(), Bound::Int(5));
        assert_eq!(to_bound(&Value::UInt(5), Affinity::Text).unwrap(), t("5"));
        assert_eq!(to_bound(&Value::UInt(u64::MAX), Affinity::Text).unwrap(), t("18446744073709551615"));
        assert_eq!(to_bound(&Value::UInt(u64::MAX), Affinity::Blob).unwrap(), t("18446744073709551615"));
        let err = to_bound(&Value::UInt(u64::MAX), Affinity::Integer).unwrap_err();
        assert!(err.contains("18446744073709551615") && err.contains("TEXT"), "{err}");
        assert_eq!(to_bound(&Value::Float(f64::NAN), Affinity::Real).unwrap(), t("NaN"));
        assert_eq!(to_bound(&Value::Float(f64::INFINITY), Affinity::Real).unwrap(), Bound::Real(f64::INFINITY));
        assert_eq!(to_bound(&Value::Decimal("12.50".into()), Affinity::Text).unwrap(), t("12.50"));
        assert_eq!(to_bound(&Value::Bytes(vec![0, 1]), Affinity::Blob).unwrap(), Bound::Blob(&[0, 1]));
        assert!(to_bound(&Value::Unchanged, Affinity::Text).is_err());
        assert_eq!(
            to_bound(&Value::TimestampTz("2024-01-02 03:04:05.5+00".into()), Affinity::Text).unwrap(),
            t("2024-01-02T03:04:05.500000Z")
        );
    }

    #[test]
    fn timestamps_normalize_to_fixed_width_iso() {
        assert_eq!(normalize_timestamptz("2024-01-02 03:04:05+00").unwrap(), "2024-01-02T03:04:05.000000Z");
        assert_eq!(normalize_timestamptz("2024-01-02 03:04:05.123456+00").unwrap(), "2024-01-02T03:04:05.123456Z");
        assert_eq!(normalize_timestamptz("2024-01-02 03:04:05.1+05:30").unwrap(), "2024-01-01T21:34:05.100000Z");
        assert_eq!(normalize_timestamptz("2024-01-02T03:04:05Z").unwrap(), "2024-01-02T03:04:05.000000Z");
        assert_eq!(normalize_timestamptz("infinity"), None);
        assert_eq!(normalize_timestamptz("0044-03-15 12:00:00+00 BC"), None);
        assert_eq!(normalize_timestamptz("12345-01-01 00:00:00+00"), None);
        assert_eq!(normalize_timestamp("2024-01-02 03:04:05").unwrap(), "2024-01-02T03:04:05.000000");
        assert_eq!(normalize_timestamp("1999-12-31 23:59:59.999999").unwrap(), "1999-12-31T23:59:59.999999");
        assert_eq!(normalize_timestamp("-infinity"), None);
    }

    #[test]
    fn existing_rows_values_decode_by_type() {
        assert_eq!(value_from_text(&ColumnType::Bool, "t"), Value::Bool(true));
        assert_eq!(value_from_text(&ColumnType::Int32, "-7"), Value::Int(-7));
        assert_eq!(value_from_text(&ColumnType::Float64, "Infinity"), Value::Float(f64::INFINITY));
        assert_eq!(value_from_text(&ColumnType::Bytes, "\\x00ff"), Value::Bytes(vec![0, 255]));
        assert_eq!(value_from_text(&ColumnType::Text, "x"), Value::Text("x".into()));
        assert_eq!(
            value_from_text(&ColumnType::Numeric { precision: None, scale: None }, "1.50"),
            Value::Decimal("1.50".into())
        );
    }
}
