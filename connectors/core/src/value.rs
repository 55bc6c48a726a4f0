//! Typed column values.
//!
//! Values are decoded once at the source into this enum so that every engine pair can map
//! types without going through strings by accident. Numeric and temporal values whose
//! exact representation matters keep the source's canonical ISO text inside a typed
//! variant (`Decimal`, `Timestamp`, ...): the variant says what the value *is*, the text
//! keeps it exact (Postgres numerics exceed any binary type, dates can be `infinity` or BC).

use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// A TOASTed column the source did not send because it did not change. Never written
    /// as NULL: sinks update the other columns only.
    Unchanged,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// Exact decimal text, e.g. `-12.50`, `NaN`.
    Decimal(String),
    Text(String),
    Bytes(Vec<u8>),
    /// JSON document text (already valid JSON at the source).
    Json(String),
    /// Canonical lowercase hyphenated text.
    Uuid(String),
    /// ISO date `YYYY-MM-DD` (or `infinity`, BC suffix as the source writes it).
    Date(String),
    /// ISO time of day `HH:MM:SS[.ffffff]`.
    Time(String),
    /// ISO time with zone offset.
    TimeTz(String),
    /// ISO timestamp without zone.
    Timestamp(String),
    /// ISO timestamp in UTC with offset, as the source printed it with TimeZone=UTC.
    TimestampTz(String),
    /// ISO 8601 duration text.
    Interval(String),
    /// Any other type in the source engine's canonical text form (arrays, inet, enums,
    /// ranges, ...). The column's [`crate::ColumnType`] says what it is.
    Other(String),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as Postgres text input, `None` for NULL. `Unchanged` has no text form and
    /// also yields `None`; callers must have removed it before.
    pub fn to_pg_text(&self) -> Option<String> {
        Some(match self {
            Value::Null | Value::Unchanged => return None,
            Value::Bool(b) => if *b { "t" } else { "f" }.to_string(),
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Float(f) => format_float(*f),
            Value::Bytes(b) => {
                let mut s = String::with_capacity(2 + b.len() * 2);
                s.push_str("\\x");
                for byte in b {
                    let _ = write!(s, "{byte:02x}");
                }
                s
            }
            other => other.as_text().unwrap_or_default().to_string(),
        })
    }

    /// The text of every variant that holds its value as text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Decimal(s)
            | Value::Text(s)
            | Value::Json(s)
            | Value::Uuid(s)
            | Value::Date(s)
            | Value::Time(s)
            | Value::TimeTz(s)
            | Value::Timestamp(s)
            | Value::TimestampTz(s)
            | Value::Interval(s)
            | Value::Other(s) => Some(s),
            Value::Null | Value::Unchanged | Value::Bool(_) | Value::Int(_) | Value::UInt(_) | Value::Float(_) => None,
            Value::Bytes(_) => None,
        }
    }

    /// JSON rendering used for dead-letter payloads and diagnostics.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Unchanged => J::String("<unchanged toast>".into()),
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::UInt(u) => J::from(*u),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or_else(|| J::String(format_float(*f)), J::Number),
            Value::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| J::String(s.clone())),
            other => other.to_pg_text().map_or(J::Null, J::String),
        }
    }

    /// Reads back a value written by [`Value::to_json`] for a column of `kind` (dead-letter
    /// payloads name the rows `dlq replay` looks up).
    pub fn from_json(kind: &crate::ColumnType, json: &serde_json::Value) -> Result<Value, String> {
        use crate::ColumnType as K;
        use serde_json::Value as J;
        let text = || match json {
            J::String(s) => s.clone(),
            other => other.to_string(),
        };
        let bad = || format!("{json} is not a valid {kind:?} value");
        Ok(match (kind, json) {
            (_, J::Null) => Value::Null,
            (K::Bool, J::Bool(b)) => Value::Bool(*b),
            (K::Bool, J::String(s)) => Value::Bool(matches!(s.as_str(), "t" | "true" | "1")),
            (K::Int16 | K::Int32 | K::Int64, _) => Value::Int(text().parse().map_err(|_| bad())?),
            (K::UInt64, _) => Value::UInt(text().parse().map_err(|_| bad())?),
            (K::Float32 | K::Float64, J::Number(n)) => Value::Float(n.as_f64().ok_or_else(bad)?),
            (K::Float32 | K::Float64, J::String(s)) => Value::Float(match s.as_str() {
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                other => other.parse().map_err(|_| bad())?,
            }),
            (K::Numeric { .. }, _) => Value::Decimal(text()),
            (K::Bytes, J::String(s)) => {
                let hex = s.strip_prefix("\\x").ok_or_else(bad)?;
                if hex.len() % 2 != 0 {
                    return Err(bad());
                }
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(bad)?;
                Value::Bytes(bytes)
            }
            (K::Json | K::Jsonb, other) => Value::Json(other.to_string()),
            (K::Uuid, _) => Value::Uuid(text()),
            (K::Date, _) => Value::Date(text()),
            (K::Time, _) => Value::Time(text()),
            (K::TimeTz, _) => Value::TimeTz(text()),
            (K::Timestamp, _) => Value::Timestamp(text()),
            (K::TimestampTz, _) => Value::TimestampTz(text()),
            (K::Interval, _) => Value::Interval(text()),
            (K::Text | K::Varchar(_) | K::Char(_) | K::Enum, _) => Value::Text(text()),
            (K::Array | K::Other, _) => Value::Other(text()),
            _ => return Err(bad()),
        })
    }

    /// Appends a type-tagged, unambiguous encoding used to compare keys (floats compare by
    /// bits, so `NaN` keys coalesce with themselves).
    pub fn encode_key(&self, out: &mut Vec<u8>) {
        let (tag, bytes): (u8, &[u8]) = match self {
            Value::Null => (0, &[]),
            Value::Unchanged => (1, &[]),
            Value::Bool(b) => (2, if *b { &[1] } else { &[0] }),
            Value::Int(i) => {
                out.push(3);
                out.extend_from_slice(&i.to_be_bytes());
                return;
            }
            Value::UInt(u) => {
                out.push(4);
                out.extend_from_slice(&u.to_be_bytes());
                return;
            }
            Value::Float(f) => {
                out.push(5);
                out.extend_from_slice(&f.to_bits().to_be_bytes());
                return;
            }
            Value::Bytes(b) => (6, b.as_slice()),
            Value::Decimal(s)
            | Value::Text(s)
            | Value::Json(s)
            | Value::Uuid(s)
            | Value::Date(s)
            | Value::Time(s)
            | Value::TimeTz(s)
            | Value::Timestamp(s)
            | Value::TimestampTz(s)
            | Value::Interval(s)
            | Value::Other(s) => (7, s.as_bytes()),
        };
        out.push(tag);
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
}

/// Shortest text that parses back to the same float, with Postgres' spellings of the
/// special values.
pub fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f == f64::INFINITY {
        "Infinity".into()
    } else if f == f64::NEG_INFINITY {
        "-Infinity".into()
    } else {
        // Rust's Display is shortest-roundtrip but never uses exponents; Debug switches to
        // exponent form for very large/small magnitudes, which keeps text short.
        format!("{f:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_render_as_postgres_spells_them() {
        assert_eq!(format_float(f64::NAN), "NaN");
        assert_eq!(format_float(f64::INFINITY), "Infinity");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(format_float(1.1), "1.1");
        assert_eq!(format_float(1e300).parse::<f64>().ok(), Some(1e300));
        assert_eq!(format_float(-0.0), "-0.0");
    }

    #[test]
    fn bytes_render_as_hex_bytea() {
        assert_eq!(Value::Bytes(vec![0, 255, 16]).to_pg_text().as_deref(), Some("\\x00ff10"));
    }

    #[test]
    fn json_payload_values_read_back() {
        use crate::ColumnType as K;
        let cases = [
            (K::Int64, Value::Int(-7)),
            (K::UInt64, Value::UInt(u64::MAX)),
            (K::Text, Value::Text("a'b".into())),
            (K::Bytes, Value::Bytes(vec![0, 255])),
            (K::Float64, Value::Float(f64::INFINITY)),
            (K::Float64, Value::Float(1.5)),
            (K::Numeric { precision: None, scale: None }, Value::Decimal("12.50".into())),
            (K::Uuid, Value::Uuid("0e37d3a4-7b0f-4f5e-9d2a-1c3b5a7e9f11".into())),
            (K::Bool, Value::Bool(true)),
            (K::Date, Value::Date("2024-02-29".into())),
            (K::Jsonb, Value::Json("{\"a\":1}".into())),
            (K::Int32, Value::Null),
        ];
        for (kind, value) in cases {
            assert_eq!(Value::from_json(&kind, &value.to_json()), Ok(value.clone()), "{kind:?}");
        }
        assert!(Value::from_json(&K::Int64, &serde_json::json!("x")).is_err());
        assert!(Value::from_json(&K::Bytes, &serde_json::json!("\\x0")).is_err());
    }

    #[test]
    fn key_encoding_distinguishes_types_and_lengths() {
        let enc = |v: &[Value]| {
            let mut out = Vec::new();
            for x in v {
                x.encode_key(&mut out);
            }
            out
        };
        assert_ne!(enc(&[Value::Int(1)]), enc(&[Value::Text("1".into())]));
        assert_ne!(
            enc(&[Value::Text("ab".into()), Value::Text("c".into())]),
            enc(&[Value::Text("a".into()), Value::Text("bc".into())])
        );
        assert_eq!(enc(&[Value::Float(f64::NAN)]), enc(&[Value::Float(f64::NAN)]));
    }
}
