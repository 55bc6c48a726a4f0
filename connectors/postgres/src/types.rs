//! Postgres type OIDs to core column types, and Postgres text output to typed values.
//!
//! Both pgoutput (text tuples) and the snapshot (`COPY ... TO STDOUT`) give values in the
//! type's text output form, with the session pinned to UTC/ISO so the forms are
//! unambiguous. This is the hot path: one call per column per row.

use tidewater_core::{ColumnType, Value};

pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// The engine-neutral type of a column. `typtype`/`typcategory` come from `pg_type` and
/// recognise enums and arrays, which have no fixed OIDs.
pub fn column_type(type_oid: u32, type_modifier: i32, typtype: &str, typcategory: &str) -> ColumnType {
    let varlen = || (type_modifier >= 4).then(|| (type_modifier - 4) as u32);
    match type_oid {
        oid::BOOL => ColumnType::Bool,
        oid::INT2 => ColumnType::Int16,
        oid::INT4 => ColumnType::Int32,
        oid::INT8 => ColumnType::Int64,
        oid::OID => ColumnType::Int64,
        oid::FLOAT4 => ColumnType::Float32,
        oid::FLOAT8 => ColumnType::Float64,
        oid::NUMERIC => {
            if type_modifier >= 4 {
                let m = (type_modifier - 4) as u32;
                ColumnType::Numeric { precision: Some((m >> 16) & 0xffff), scale: Some(m & 0xffff) }
            } else {
                ColumnType::Numeric { precision: None, scale: None }
            }
        }
        oid::TEXT | oid::NAME => ColumnType::Text,
        oid::VARCHAR => ColumnType::Varchar(varlen()),
        oid::BPCHAR => ColumnType::Char(varlen()),
        oid::BYTEA => ColumnType::Bytes,
        oid::JSON => ColumnType::Json,
        oid::JSONB => ColumnType::Jsonb,
        oid::UUID => ColumnType::Uuid,
        oid::DATE => ColumnType::Date,
        oid::TIME => ColumnType::Time,
        oid::TIMETZ => ColumnType::TimeTz,
        oid::TIMESTAMP => ColumnType::Timestamp,
        oid::TIMESTAMPTZ => ColumnType::TimestampTz,
        oid::INTERVAL => ColumnType::Interval,
        _ if typtype == "e" => ColumnType::Enum,
        _ if typcategory == "A" => ColumnType::Array,
        _ => ColumnType::Other,
    }
}

/// Decodes one value from its text output form.
pub fn decode_text(kind: &ColumnType, text: &[u8]) -> Result<Value, String> {
    let s = std::str::from_utf8(text).map_err(|e| format!("value is not UTF-8: {e}"))?;
    Ok(match kind {
        ColumnType::Bool => match s {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => return Err(format!("bad boolean {s:?}")),
        },
        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => {
            Value::Int(s.parse().map_err(|_| format!("bad integer {s:?}"))?)
        }
        ColumnType::UInt64 => Value::UInt(s.parse().map_err(|_| format!("bad integer {s:?}"))?),
        ColumnType::Float32 | ColumnType::Float64 => Value::Float(parse_float(s)?),
        ColumnType::Numeric { .. } => Value::Decimal(s.to_owned()),
        ColumnType::Bytes => Value::Bytes(decode_bytea_hex(s)?),
        ColumnType::Json | ColumnType::Jsonb => Value::Json(s.to_owned()),
        ColumnType::Uuid => Value::Uuid(s.to_owned()),
        ColumnType::Date => Value::Date(s.to_owned()),
        ColumnType::Time => Value::Time(s.to_owned()),
        ColumnType::TimeTz => Value::TimeTz(s.to_owned()),
        ColumnType::Timestamp => Value::Timestamp(s.to_owned()),
        ColumnType::TimestampTz => Value::TimestampTz(s.to_owned()),
        ColumnType::Interval => Value::Interval(s.to_owned()),
        ColumnType::Text | ColumnType::Varchar(_) | ColumnType::Char(_) => Value::Text(s.to_owned()),
        ColumnType::Array | ColumnType::Enum | ColumnType::Other => Value::Other(s.to_owned()),
    })
}

fn parse_float(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => s.parse().map_err(|_| format!("bad float {s:?}")),
    }
}

/// `\x0aff...` (bytea_output = hex, the default since 9.0).
fn decode_bytea_hex(s: &str) -> Result<Vec<u8>, String> {
    let hex =
        s.strip_prefix("\\x").ok_or_else(|| "bytea value is not in hex format (set bytea_output = hex)".to_string())?;
    let digits = hex.as_bytes();
    if digits.len() % 2 != 0 {
        return Err("bytea hex has an odd number of digits".into());
    }
    let nibble = |c: u8| -> Result<u8, String> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!("bad hex digit {:?} in bytea", c as char)),
        }
    };
    digits.chunks_exact(2).map(|pair| Ok(nibble(pair[0])? << 4 | nibble(pair[1])?)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn decodes_common_types() {
        assert_eq!(decode_text(&ColumnType::Int32, b"-42").unwrap(), Value::Int(-42));
        assert_eq!(decode_text(&ColumnType::Bool, b"t").unwrap(), Value::Bool(true));
        assert!(matches!(decode_text(&ColumnType::Float64, b"NaN").unwrap(), Value::Float(f) if f.is_nan()));
        assert_eq!(decode_text(&ColumnType::Float64, b"-Infinity").unwrap(), Value::Float(f64::NEG_INFINITY));
        assert_eq!(decode_text(&ColumnType::Bytes, b"\\x00Ff").unwrap(), Value::Bytes(vec![0, 255]));
        assert!(decode_text(&ColumnType::Bytes, b"\\x0").is_err());
        assert!(decode_text(&ColumnType::Int64, b"12a").is_err());
        assert!(decode_text(&ColumnType::Text, &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn numeric_typmod_gives_precision_and_scale() {
        let typmod = ((10 << 16) | 2) + 4;
        assert_eq!(
            column_type(oid::NUMERIC, typmod, "b", "N"),
            ColumnType::Numeric { precision: Some(10), scale: Some(2) }
        );
        assert_eq!(column_type(oid::VARCHAR, 24, "b", "S"), ColumnType::Varchar(Some(20)));
        assert_eq!(column_type(99999, -1, "e", "E"), ColumnType::Enum);
        assert_eq!(column_type(1007, -1, "b", "A"), ColumnType::Array);
    }
}
