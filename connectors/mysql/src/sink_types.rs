//! Types for a MySQL/MariaDB target: the column type each source column gets, and each
//! value's conversion into something MySQL stores exactly.
//!
//! Nothing is silently changed on the way in. MySQL rounds some values without an error
//! even under strict mode (extra decimal places, extra fractional-second digits), and it
//! cannot hold others at all (NaN, infinite dates, years outside 1000–9999): such values are
//! rejected *before* the statement runs, as an `Event` error naming the column and value,
//! so the row goes to the dead-letter table and the rest of the batch is applied.

use std::borrow::Cow;
use std::fmt::Write as _;

use tidewater_core::{Column, ColumnType, Engine, TableSchema, Value};

/// Key columns of a text type with no declared length (or one over [`MAX_KEY_CHARS`]) get
/// this many characters: InnoDB indexes at most 3072 bytes, and utf8mb4 needs 4 per
/// character, so three such columns still fit in one key.
pub const KEY_TEXT_CHARS: u32 = 255;
/// The longest VARCHAR a single-column utf8mb4 key may have (768 × 4 = 3072 bytes).
pub const MAX_KEY_CHARS: u32 = 768;
/// Longest VARCHAR kept as VARCHAR (utf8mb4: 16383 × 4 bytes fits the 65535-byte row limit).
pub const MAX_VARCHAR_CHARS: u32 = 16383;
/// Bytes the VARCHAR/CHAR columns of a created table may use together (the row limit is
/// 65535 bytes); beyond it the longest ones become LONGTEXT.
pub const ROW_BYTES_BUDGET: u64 = 60_000;

/// Characters of a float's text (`-1.7976931348623157e308` is 23).
pub const FLOAT_TEXT_CHARS: u32 = 32;
/// Characters of a Postgres date's text (`5874897-12-31 BC` is 16).
pub const DATE_TEXT_CHARS: u32 = 32;
/// Characters of a Postgres timestamp(tz)'s text (`294276-12-31 23:59:59.999999+14:59:59 BC`
/// is 41).
pub const TIMESTAMP_TEXT_CHARS: u32 = 48;

/// The MySQL column type for `column` — THE type mapping table (PostgreSQL source types in
/// the comments). `key` says whether the column is part of the primary key: MySQL cannot
/// index TEXT/BLOB/JSON without a length, so key columns of those types get a VARCHAR or
/// VARBINARY of bounded length instead.
pub fn mysql_type(schema: &TableSchema, column: &Column, key: bool) -> String {
    if schema.engine == Engine::Mysql {
        if let Some(native) = plain_mysql_type(&column.native_type) {
            if !(key && is_lob(&native)) {
                return native;
            }
        }
    }
    let key_text = |n: Option<u32>| match n {
        Some(n) if n <= MAX_KEY_CHARS => format!("VARCHAR({n})"),
        _ => format!("VARCHAR({KEY_TEXT_CHARS})"),
    };
    match &column.kind {
        ColumnType::Bool => "BOOLEAN".into(),           // boolean → TINYINT(1)
        ColumnType::Int16 => "SMALLINT".into(),         // int2
        ColumnType::Int32 => "INT".into(),              // int4
        ColumnType::Int64 => "BIGINT".into(),           // int8, oid
        ColumnType::UInt64 => "BIGINT UNSIGNED".into(), // (MySQL source: bigint unsigned)
        // Types whose Postgres range MySQL's own types cannot hold are created as text in
        // the source's text form, so no value is lost or dead-lettered (PRODUCT.md: a table
        // Tidewater creates holds every value). A table you create yourself with DOUBLE,
        // DECIMAL or DATETIME columns is used as it is; values those cannot hold (NaN,
        // infinities, BC or 5-digit years) then go to the dead-letter table.
        // float4/float8: shortest round-trip text, `NaN`, `Infinity`, `-Infinity`.
        ColumnType::Float32 | ColumnType::Float64 => format!("VARCHAR({FLOAT_TEXT_CHARS})"),
        // numeric(p,s): sign, leading zero, point and max(p,s) digits (`-0.123` for
        // numeric(3,3), `NaN`); unconstrained numeric holds up to 131072 digits (and
        // ±Infinity): LONGTEXT.
        ColumnType::Numeric { precision: Some(p), scale } if numeric_text_chars(*p, *scale) <= MAX_KEY_CHARS => {
            format!("VARCHAR({})", numeric_text_chars(*p, *scale))
        }
        ColumnType::Numeric { .. } if key => key_text(None),
        ColumnType::Numeric { .. } => "LONGTEXT".into(),
        ColumnType::Text | ColumnType::Varchar(None) | ColumnType::Char(None) if key => key_text(None),
        ColumnType::Text | ColumnType::Varchar(None) | ColumnType::Char(None) => "LONGTEXT".into(),
        ColumnType::Varchar(Some(n)) if key => key_text(Some(*n)),
        ColumnType::Varchar(Some(n)) if *n <= MAX_VARCHAR_CHARS => format!("VARCHAR({n})"),
        ColumnType::Varchar(Some(_)) => "LONGTEXT".into(),
        ColumnType::Char(Some(n)) if *n <= 255 => format!("CHAR({n})"), // bpchar(n)
        ColumnType::Char(Some(n)) if key => key_text(Some(*n)),
        ColumnType::Char(Some(n)) if *n <= MAX_VARCHAR_CHARS => format!("VARCHAR({n})"),
        ColumnType::Char(Some(_)) => "LONGTEXT".into(),
        ColumnType::Bytes if key => format!("VARBINARY({KEY_TEXT_CHARS})"), // bytea key
        ColumnType::Bytes => "LONGBLOB".into(),                             // bytea
        // json/jsonb: JSON (MariaDB: an alias of LONGTEXT with a json_valid check).
        ColumnType::Json | ColumnType::Jsonb if key => key_text(None),
        ColumnType::Json | ColumnType::Jsonb => "JSON".into(),
        ColumnType::Uuid => "CHAR(36)".into(), // canonical lowercase text
        // date/timestamp/timestamptz: the source's ISO text (`2024-02-29`, `infinity`,
        // `0044-03-15 BC`, `12345-01-01`); timestamptz in UTC where DATETIME could hold it.
        ColumnType::Date => format!("VARCHAR({DATE_TEXT_CHARS})"),
        ColumnType::Time => "TIME(6)".into(), // 00:00:00 … 24:00:00 fits TIME's ±838 h
        ColumnType::TimeTz => "VARCHAR(32)".into(), // text with its offset, e.g. 12:00:00+05:30
        ColumnType::Timestamp | ColumnType::TimestampTz => format!("VARCHAR({TIMESTAMP_TEXT_CHARS})"),
        ColumnType::Interval => "VARCHAR(64)".into(), // ISO 8601 text, e.g. P1Y2M3DT4H5M6S
        // Arrays: a JSON array (numbers for integer/float arrays, true/false for boolean,
        // embedded documents for json arrays, strings otherwise).
        ColumnType::Array if key => key_text(None),
        ColumnType::Array => "JSON".into(),
        ColumnType::Enum => "VARCHAR(255)".into(), // the label
        ColumnType::Other if key => key_text(None),
        ColumnType::Other => "LONGTEXT".into(), // inet, ranges, money, xml, ...: source text
    }
}

/// The longest text of a numeric(p,s) value. A negative scale (Postgres 15) decodes as a
/// large one here and so ends up beyond any VARCHAR a key can have: LONGTEXT.
fn numeric_text_chars(precision: u32, scale: Option<u32>) -> u32 {
    precision.max(scale.unwrap_or(0)).saturating_add(3)
}

/// A MySQL source's declared type when it is a plain built-in type (no ENUM/SET labels,
/// no spatial or unknown types), lowercased.
fn plain_mysql_type(native: &str) -> Option<String> {
    const BASES: &[&str] = &[
        "tinyint",
        "smallint",
        "mediumint",
        "int",
        "integer",
        "bigint",
        "decimal",
        "numeric",
        "float",
        "double",
        "date",
        "datetime",
        "timestamp",
        "time",
        "year",
        "char",
        "varchar",
        "binary",
        "varbinary",
        "tinytext",
        "text",
        "mediumtext",
        "longtext",
        "tinyblob",
        "blob",
        "mediumblob",
        "longblob",
        "json",
        "bit",
    ];
    let t = native.trim().to_ascii_lowercase();
    let base_end = t.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (base, rest) = t.split_at(base_end);
    if !BASES.contains(&base) {
        return None;
    }
    let mut rest = rest.trim_start();
    if let Some(args) = rest.strip_prefix('(') {
        let close = args.find(')')?;
        if !args[..close].chars().all(|c| c.is_ascii_digit() || c == ',' || c == ' ') {
            return None;
        }
        rest = args[close + 1..].trim_start();
    }
    let words_ok = rest.split_whitespace().all(|w| w == "unsigned" || w == "zerofill");
    words_ok.then_some(t)
}

fn is_lob(mysql_type: &str) -> bool {
    let t = mysql_type.to_ascii_lowercase();
    t.ends_with("text") || t.ends_with("blob") || t == "json"
}

/// Whether a MySQL column type needs a parenthesised (expression) DEFAULT.
pub fn needs_expression_default(mysql_type: &str) -> bool {
    is_lob(mysql_type)
}

/// Bytes a VARCHAR/CHAR/VARBINARY/BINARY declaration takes of the 65535-byte row limit
/// (0 for types stored off-row or fixed small types).
pub fn row_bytes(mysql_type: &str) -> u64 {
    let t = mysql_type.to_ascii_lowercase();
    let len = || -> u64 {
        t.split_once('(')
            .and_then(|(_, rest)| rest.split([')', ',']).next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    if t.starts_with("varchar") || t.starts_with("char") {
        len() * 4 + 2
    } else if t.starts_with("varbinary") || t.starts_with("binary") {
        len() + 2
    } else {
        0
    }
}

/// A target column as `information_schema.COLUMNS` describes it; drives the value checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetColumn {
    pub name: String,
    /// `DATA_TYPE`, lowercase (`int`, `decimal`, `datetime`, `longtext`, `json`, ...).
    pub data_type: String,
    /// `COLUMN_TYPE`, e.g. `decimal(10,2)`, `bigint(20) unsigned`.
    pub column_type: String,
    pub numeric_precision: Option<u32>,
    pub numeric_scale: Option<u32>,
    pub datetime_precision: Option<u32>,
    pub nullable: bool,
}

impl TargetColumn {
    /// The column as [`mysql_type`] would declare it (for tests and planning).
    pub fn declared(name: &str, mysql_type: &str) -> Self {
        let t = mysql_type.to_ascii_lowercase();
        let base: String = t.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
        let args: Vec<u32> = t
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(a, _)| a.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_default();
        let data_type = match base.as_str() {
            "boolean" | "bool" => "tinyint".to_string(),
            "integer" => "int".to_string(),
            "numeric" => "decimal".to_string(),
            other => other.to_string(),
        };
        let (numeric_precision, numeric_scale) = if data_type == "decimal" {
            (args.first().copied(), Some(args.get(1).copied().unwrap_or(0)))
        } else {
            (None, None)
        };
        let datetime_precision =
            matches!(data_type.as_str(), "datetime" | "timestamp" | "time").then(|| args.first().copied().unwrap_or(0));
        TargetColumn {
            name: name.to_string(),
            data_type,
            column_type: t,
            numeric_precision,
            numeric_scale,
            datetime_precision,
            nullable: true,
        }
    }

    /// A character column (CHAR, VARCHAR, any TEXT): values go in as their text.
    fn is_text(&self) -> bool {
        matches!(self.data_type.as_str(), "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext")
    }

    fn is_temporal(&self) -> bool {
        matches!(self.data_type.as_str(), "date" | "datetime" | "timestamp")
    }
}

/// A value ready to bind.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind<'a> {
    Null,
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Text(Cow<'a, str>),
    Bytes(&'a [u8]),
}

impl Bind<'_> {
    /// Approximate bytes on the wire, to keep statements under `max_allowed_packet`.
    pub fn wire_len(&self) -> usize {
        match self {
            Bind::Null => 1,
            Bind::Int(_) | Bind::UInt(_) | Bind::Float(_) => 8,
            Bind::Bool(_) => 1,
            Bind::Text(s) => s.len() + 9,
            Bind::Bytes(b) => b.len() + 9,
        }
    }

    /// The value as an SQL literal (for DDL defaults, which take no parameters). Relies on
    /// the sink's session `sql_mode` having `NO_BACKSLASH_ESCAPES`.
    pub fn literal(&self) -> String {
        match self {
            Bind::Null => "NULL".into(),
            Bind::Int(i) => i.to_string(),
            Bind::UInt(u) => u.to_string(),
            Bind::Float(f) => format!("{f:?}"),
            Bind::Bool(b) => if *b { "1" } else { "0" }.into(),
            Bind::Text(s) => format!("'{}'", s.replace('\'', "''")),
            Bind::Bytes(b) => {
                let mut out = String::with_capacity(3 + b.len() * 2);
                out.push_str("X'");
                for byte in b.iter() {
                    let _ = write!(out, "{byte:02X}");
                }
                out.push('\'');
                out
            }
        }
    }
}

/// Converts one value for `target`. `Err` is a message for the dead letter, naming the
/// value and why MySQL cannot hold it (the caller adds table and column).
pub fn convert<'a>(
    value: &'a Value,
    source: &Column,
    engine: Engine,
    target: &TargetColumn,
) -> Result<Bind<'a>, String> {
    Ok(match value {
        Value::Null => Bind::Null,
        Value::Unchanged => return Err("an unchanged (TOAST) value reached a full-row write".into()),
        Value::Bool(b) => Bind::Bool(*b),
        Value::Int(i) => Bind::Int(*i),
        Value::UInt(u) => Bind::UInt(*u),
        Value::Float(f) if target.is_text() => Bind::Text(Cow::Owned(float_text(*f))),
        Value::Decimal(s) if target.is_text() => Bind::Text(Cow::Borrowed(s)),
        // In UTC as a DATETIME(6) column would hold it; outside DATETIME's range
        // (infinity, BC, other years) as the source wrote it.
        Value::TimestampTz(s) if target.is_text() => {
            Bind::Text(convert_datetime(s, true, engine, &DATETIME6).unwrap_or(Cow::Borrowed(s.as_str())))
        }
        Value::Float(f) => {
            if f.is_finite() {
                Bind::Float(*f)
            } else {
                return Err(format!(
                    "{} cannot be stored in MySQL (no NaN or infinite floats)",
                    tidewater_core::value::format_float(*f)
                ));
            }
        }
        Value::Decimal(s) => Bind::Text(Cow::Owned(convert_decimal(s, target)?)),
        Value::Text(s) | Value::Uuid(s) | Value::TimeTz(s) | Value::Interval(s) => Bind::Text(Cow::Borrowed(s)),
        Value::Json(s) => Bind::Text(Cow::Borrowed(s)),
        Value::Bytes(b) => Bind::Bytes(b),
        Value::Date(s) | Value::Timestamp(s) if target.is_temporal() => {
            Bind::Text(convert_datetime(s, false, engine, target)?)
        }
        Value::TimestampTz(s) if target.is_temporal() => Bind::Text(convert_datetime(s, true, engine, target)?),
        Value::Time(s) if target.data_type == "time" => {
            check_fraction(fraction_of(s), target, s)?;
            Bind::Text(Cow::Borrowed(s))
        }
        Value::Date(s) | Value::Timestamp(s) | Value::TimestampTz(s) | Value::Time(s) => Bind::Text(Cow::Borrowed(s)),
        Value::Other(s) if source.kind == ColumnType::Array && engine == Engine::Postgres => {
            Bind::Text(Cow::Owned(pg_array_to_json(s, &source.native_type)?))
        }
        Value::Other(s) => Bind::Text(Cow::Borrowed(s)),
    })
}

/// The column a timestamp with zone is converted for when it goes into a text column.
static DATETIME6: std::sync::LazyLock<TargetColumn> =
    std::sync::LazyLock::new(|| TargetColumn::declared("", "DATETIME(6)"));

/// A float as the shortest text that reads back as the same value, integral values
/// without `.0` as Postgres writes them (`5`, `0.1`, `-1.5e300`, `NaN`, `-Infinity`).
fn float_text(f: f64) -> String {
    let text = tidewater_core::value::format_float(f);
    match text.strip_suffix(".0") {
        Some(integral) => integral.to_string(),
        None => text,
    }
}

/// Builds a value from the text a schema carries for existing rows of an added column
/// (Postgres text output), for the column's DEFAULT.
pub fn value_from_text(kind: &ColumnType, text: &str) -> Value {
    let s = text.to_string();
    match kind {
        ColumnType::Bool => match text {
            "t" | "true" | "1" => Value::Bool(true),
            "f" | "false" | "0" => Value::Bool(false),
            _ => Value::Text(s),
        },
        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => text.parse().map_or(Value::Text(s), Value::Int),
        ColumnType::UInt64 => text.parse().map_or(Value::Text(s), Value::UInt),
        ColumnType::Float32 | ColumnType::Float64 => match text {
            "NaN" => Value::Float(f64::NAN),
            "Infinity" => Value::Float(f64::INFINITY),
            "-Infinity" => Value::Float(f64::NEG_INFINITY),
            _ => text.parse().map_or(Value::Text(s), Value::Float),
        },
        ColumnType::Numeric { .. } => Value::Decimal(s),
        ColumnType::Bytes => decode_hex_bytea(text).map_or(Value::Text(s), Value::Bytes),
        ColumnType::Json | ColumnType::Jsonb => Value::Json(s),
        ColumnType::Uuid => Value::Uuid(s),
        ColumnType::Date => Value::Date(s),
        ColumnType::Time => Value::Time(s),
        ColumnType::TimeTz => Value::TimeTz(s),
        ColumnType::Timestamp => Value::Timestamp(s),
        ColumnType::TimestampTz => Value::TimestampTz(s),
        ColumnType::Interval => Value::Interval(s),
        ColumnType::Text | ColumnType::Varchar(_) | ColumnType::Char(_) => Value::Text(s),
        ColumnType::Array | ColumnType::Enum | ColumnType::Other => Value::Other(s),
    }
}

fn decode_hex_bytea(s: &str) -> Option<Vec<u8>> {
    let hex = s.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

// ---- decimals ------------------------------------------------------------------------

/// A decimal's digits split at the point, without sign, leading or trailing zeros.
#[derive(Debug, PartialEq, Eq)]
struct DecimalParts {
    negative: bool,
    int_digits: String,
    frac_digits: String,
}

fn parse_decimal(s: &str) -> Option<DecimalParts> {
    let t = s.trim();
    let (negative, t) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i64>().ok()?),
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    if exp.unsigned_abs() > 10_000 {
        return None;
    }
    // Shift the point by the exponent.
    let mut digits: String = format!("{int}{frac}");
    let mut point = int.len() as i64 + exp;
    if point < 0 {
        digits = format!("{}{digits}", "0".repeat((-point) as usize));
        point = 0;
    }
    if point as usize > digits.len() {
        digits.push_str(&"0".repeat(point as usize - digits.len()));
    }
    let (i, f) = digits.split_at(point as usize);
    let int_digits = i.trim_start_matches('0').to_string();
    let frac_digits = f.trim_end_matches('0').to_string();
    let negative = negative && !(int_digits.is_empty() && frac_digits.is_empty());
    Some(DecimalParts { negative, int_digits, frac_digits })
}

/// Checks that the decimal text fits the target exactly and returns it in plain form.
fn convert_decimal(s: &str, target: &TargetColumn) -> Result<String, String> {
    let parts = match s {
        "NaN" | "Infinity" | "-Infinity" | "+Infinity" => {
            return Err(format!("numeric {s} cannot be stored in MySQL (DECIMAL has no NaN or infinity)"))
        }
        _ => parse_decimal(s).ok_or_else(|| format!("{s:?} is not a decimal number"))?,
    };
    if target.data_type == "decimal" {
        let p = target.numeric_precision.unwrap_or(65) as usize;
        let sc = target.numeric_scale.unwrap_or(0) as usize;
        if parts.frac_digits.len() > sc {
            return Err(format!(
                "numeric {s} has {} decimal places; the target column {} keeps {sc} and would round it",
                parts.frac_digits.len(),
                target.column_type
            ));
        }
        if parts.int_digits.len() > p.saturating_sub(sc) {
            return Err(format!(
                "numeric {s} has {} integer digits; the target column {} holds at most {}",
                parts.int_digits.len(),
                target.column_type,
                p.saturating_sub(sc)
            ));
        }
    }
    let mut out = String::with_capacity(parts.int_digits.len() + parts.frac_digits.len() + 3);
    if parts.negative {
        out.push('-');
    }
    out.push_str(if parts.int_digits.is_empty() { "0" } else { &parts.int_digits });
    if !parts.frac_digits.is_empty() {
        out.push('.');
        out.push_str(&parts.frac_digits);
    }
    Ok(out)
}

// ---- dates and times -----------------------------------------------------------------

/// The fractional-second digits of a time or timestamp text (`""` when none).
fn fraction_of(s: &str) -> &str {
    // The fraction follows the seconds' point and runs until a non-digit (offset, BC).
    match s.rfind(':').and_then(|colon| s[colon..].find('.').map(|dot| colon + dot + 1)) {
        Some(start) => {
            let rest = &s[start..];
            let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            &rest[..end]
        }
        None => "",
    }
}

/// Rejects fractional-second digits the target column would round away.
fn check_fraction(fraction: &str, target: &TargetColumn, original: &str) -> Result<(), String> {
    let keep = target.datetime_precision.unwrap_or(0) as usize;
    if fraction.len() > keep && fraction[keep..].bytes().any(|b| b != b'0') {
        return Err(format!(
            "{original:?} has more fractional-second digits than the target column {} keeps",
            target.column_type
        ));
    }
    Ok(())
}

/// A parsed ISO date-time: `YYYY-MM-DD[( |T)HH:MM:SS[.f]][offset][ BC]`.
#[derive(Debug, PartialEq, Eq)]
struct DateTimeParts {
    year: i64,
    month: u32,
    day: u32,
    time: Option<(u32, u32, u32)>,
    fraction: String,
    /// Offset east of UTC in seconds, when the text had one.
    offset: Option<i64>,
    bc: bool,
}

fn parse_datetime(s: &str) -> Option<DateTimeParts> {
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    };
    let (date, rest) = match s.find([' ', 'T']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut it = date.splitn(3, '-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if y.len() < 4 || !y.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i64 = y.parse().ok()?;
    let month: u32 = two_digits(m)?;
    let day: u32 = two_digits(d)?;
    let mut parts = DateTimeParts { year, month, day, time: None, fraction: String::new(), offset: None, bc };
    let Some(rest) = rest else { return Some(parts) };
    // Time: HH:MM:SS[.ffff], then an optional offset.
    let time_end = rest.find(['+', '-', 'Z']).unwrap_or(rest.len());
    let (time, offset) = rest.split_at(time_end);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut it = hms.split(':');
    let (h, mi, se) = (two_digits(it.next()?)?, two_digits(it.next()?)?, two_digits(it.next().unwrap_or("00"))?);
    if it.next().is_some() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    parts.time = Some((h, mi, se));
    parts.fraction = fraction.to_string();
    if !offset.is_empty() {
        parts.offset = Some(parse_offset(offset)?);
    }
    Some(parts)
}

fn two_digits(s: &str) -> Option<u32> {
    (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

/// `Z`, `+HH`, `+HH:MM`, `+HH:MM:SS`, `+HHMM` → seconds east of UTC.
fn parse_offset(s: &str) -> Option<i64> {
    if s == "Z" {
        return Some(0);
    }
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let body = &s[1..];
    let fields: Vec<&str> = if body.contains(':') {
        body.split(':').collect()
    } else if body.len() == 4 {
        vec![&body[..2], &body[2..]]
    } else {
        vec![body]
    };
    if fields.is_empty() || fields.len() > 3 {
        return None;
    }
    let mut secs = 0i64;
    for (i, f) in fields.iter().enumerate() {
        let n = i64::from(two_digits(f)?);
        secs += n * [3600, 60, 1][i];
    }
    Some(sign * secs)
}

/// Checks and formats a date/timestamp for a DATE/DATETIME/TIMESTAMP column; with `tz`, a
/// value with an offset is converted to UTC (the sink's session time zone). A text already
/// in the resulting form is borrowed, not copied.
fn convert_datetime<'a>(s: &'a str, tz: bool, engine: Engine, target: &TargetColumn) -> Result<Cow<'a, str>, String> {
    if let Some(text) = canonical_datetime(s, target) {
        return Ok(Cow::Borrowed(text));
    }
    if engine == Engine::Mysql && s.starts_with("0000-00-00") {
        // MySQL's zero date / zero TIMESTAMP, from a MySQL source: kept as is (a zero
        // TIMESTAMP arrives as `0000-00-00 00:00:00+00`; the offset means nothing here).
        return Ok(Cow::Borrowed(s.strip_suffix("+00").unwrap_or(s)));
    }
    if s.ends_with("infinity") {
        return Err(format!("{s} cannot be stored in MySQL (no infinite dates)"));
    }
    let p = parse_datetime(s).ok_or_else(|| format!("{s:?} is not an ISO date/time"))?;
    if p.bc {
        return Err(format!("{s:?} is a BC date; MySQL dates start at year 1000"));
    }
    let (mut year, mut month, mut day) = (p.year, p.month, p.day);
    let (mut h, mut mi, mut se) = p.time.unwrap_or((0, 0, 0));
    if let (Some(offset), true) = (p.offset, tz) {
        if offset != 0 {
            let date = chrono::NaiveDate::from_ymd_opt(
                i32::try_from(year).map_err(|_| format!("{s:?}: year out of range"))?,
                month,
                day,
            )
            .ok_or_else(|| format!("{s:?} is not a valid date"))?;
            let time =
                chrono::NaiveTime::from_hms_opt(h, mi, se).ok_or_else(|| format!("{s:?} is not a valid time"))?;
            let utc = chrono::TimeDelta::try_seconds(offset)
                .and_then(|d| date.and_time(time).checked_sub_signed(d))
                .ok_or_else(|| format!("{s:?}: date out of range"))?;
            use chrono::{Datelike, Timelike};
            (year, month, day) = (i64::from(utc.year()), utc.month(), utc.day());
            (h, mi, se) = (utc.hour(), utc.minute(), utc.second());
        }
    }
    if !(1000..=9999).contains(&year) {
        let shown = if tz && p.offset.is_some_and(|o| o != 0) {
            format!("{s:?} (in UTC: year {year})")
        } else {
            format!("{s:?}")
        };
        return Err(format!("{shown} is outside MySQL's date range (years 1000–9999)"));
    }
    if chrono::NaiveDate::from_ymd_opt(year as i32, month, day).is_none() || h > 23 || mi > 59 || se > 59 {
        return Err(format!("{s:?} is not a valid date/time"));
    }
    if target.data_type == "date" {
        if p.time.is_some_and(|t| t != (0, 0, 0)) || p.fraction.bytes().any(|b| b != b'0') {
            return Err(format!("{s:?} has a time of day; the target column is a DATE"));
        }
        return Ok(Cow::Owned(format!("{year:04}-{month:02}-{day:02}")));
    }
    check_fraction(&p.fraction, target, s)?;
    let mut out = format!("{year:04}-{month:02}-{day:02} {h:02}:{mi:02}:{se:02}");
    let fraction = p.fraction.trim_end_matches('0');
    if !fraction.is_empty() {
        out.push('.');
        out.push_str(fraction);
    }
    Ok(Cow::Owned(out))
}

/// The fast path of [`convert_datetime`]: `s` when it already is what the general path
/// would produce for `target` (the usual case for a MySQL source), else `None`. That is
/// `YYYY-MM-DD` for a DATE column, and `YYYY-MM-DD HH:MM:SS[.f]` with no trailing zero in
/// the fraction and no more fraction digits than the column keeps, for DATETIME/TIMESTAMP;
/// a zero offset `+00` after it is left out (the session time zone is UTC). Years
/// 1000–9999, valid dates and times only.
fn canonical_datetime<'a>(s: &'a str, target: &TargetColumn) -> Option<&'a str> {
    let b = s.as_bytes();
    let number = |at: usize, len: usize| -> Option<u32> {
        let digits = b.get(at..at + len)?;
        digits.iter().try_fold(0u32, |n, &d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    let sep = |at: usize, c: u8| b.get(at) == Some(&c);
    let (year, month, day) = (number(0, 4)?, number(5, 2)?, number(8, 2)?);
    if !(sep(4, b'-') && sep(7, b'-') && (1000..=9999).contains(&year)) {
        return None;
    }
    chrono::NaiveDate::from_ymd_opt(year as i32, month, day)?;
    if target.data_type == "date" {
        return (b.len() == 10).then_some(s);
    }
    let (h, mi, se) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    if !(sep(10, b' ') && sep(13, b':') && sep(16, b':') && h <= 23 && mi <= 59 && se <= 59) {
        return None;
    }
    let value = s.strip_suffix("+00").unwrap_or(s);
    let fraction = value.get(19..)?;
    if fraction.is_empty() {
        return Some(value);
    }
    let digits = fraction.strip_prefix('.')?;
    let keep = target.datetime_precision.unwrap_or(0) as usize;
    let plain = !digits.is_empty() && digits.bytes().all(|d| d.is_ascii_digit()) && !digits.ends_with('0');
    (plain && digits.len() <= keep).then_some(value)
}

// ---- arrays --------------------------------------------------------------------------

/// How array elements become JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ElementKind {
    /// integer and float element types: JSON numbers (NaN/Infinity as strings).
    Number,
    Bool,
    /// json/jsonb elements: embedded documents.
    Json,
    /// Everything else (including numeric, whose precision JSON numbers may not keep).
    String,
}

fn element_kind(native_type: &str) -> (ElementKind, u8) {
    let base = native_type.trim().trim_end_matches("[]").trim();
    let base = base.split('(').next().unwrap_or(base).trim().to_ascii_lowercase();
    let kind = match base.as_str() {
        "smallint" | "integer" | "bigint" | "int2" | "int4" | "int8" | "oid" | "real" | "double precision"
        | "float4" | "float8" => ElementKind::Number,
        "boolean" | "bool" => ElementKind::Bool,
        "json" | "jsonb" => ElementKind::Json,
        _ => ElementKind::String,
    };
    // `box` is the one built-in type whose array delimiter is not a comma.
    let delimiter = if base == "box" { b';' } else { b',' };
    (kind, delimiter)
}

/// Converts a Postgres array literal (`{1,2,NULL}`, `{"a b","c\"d"}`, `{{1,2},{3,4}}`,
/// `[0:1]={5,6}`) to a JSON array text. Explicit lower bounds are dropped.
pub fn pg_array_to_json(text: &str, native_type: &str) -> Result<String, String> {
    let (kind, delimiter) = element_kind(native_type);
    let bad = || format!("{text:?} is not a Postgres array literal");
    let mut s = text.trim();
    if s.starts_with('[') {
        s = s.split_once('=').map(|(_, rest)| rest.trim()).ok_or_else(bad)?;
    }
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len() + 8);
    let mut i = 0;
    let mut depth = 0usize;
    // After an element or a closing brace, a delimiter or a closing brace must follow.
    let mut after_value = false;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'{' if !after_value => {
                out.push('[');
                depth += 1;
                i += 1;
            }
            b'}' if depth > 0 => {
                out.push(']');
                depth -= 1;
                after_value = true;
                i += 1;
                if depth == 0 {
                    break;
                }
            }
            c if c == delimiter && after_value && depth > 0 => {
                out.push(',');
                after_value = false;
                i += 1;
            }
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'"' if !after_value && depth > 0 => {
                let mut value = Vec::new();
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err(bad()),
                        Some(b'\\') => {
                            value.push(*bytes.get(i + 1).ok_or_else(bad)?);
                            i += 2;
                        }
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(&b) => {
                            value.push(b);
                            i += 1;
                        }
                    }
                }
                let value = String::from_utf8(value).map_err(|_| bad())?;
                push_element(&mut out, &value, kind, true)?;
                after_value = true;
            }
            _ if !after_value && depth > 0 => {
                let start = i;
                while i < bytes.len() && bytes[i] != delimiter && bytes[i] != b'}' {
                    i += 1;
                }
                let value = s[start..i].trim();
                push_element(&mut out, value, kind, false)?;
                after_value = true;
            }
            _ => return Err(bad()),
        }
    }
    if depth != 0 || !s[i..].trim().is_empty() || out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

fn push_element(out: &mut String, value: &str, kind: ElementKind, quoted: bool) -> Result<(), String> {
    if !quoted && value.eq_ignore_ascii_case("NULL") {
        out.push_str("null");
        return Ok(());
    }
    match kind {
        ElementKind::Number if is_json_number(value) => out.push_str(value),
        ElementKind::Bool if value == "t" || value == "true" => out.push_str("true"),
        ElementKind::Bool if value == "f" || value == "false" => out.push_str("false"),
        ElementKind::Json if serde_json::from_str::<serde_json::Value>(value).is_ok() => out.push_str(value.trim()),
        _ => out.push_str(&serde_json::Value::String(value.to_string()).to_string()),
    }
    Ok(())
}

/// The JSON number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let int_start = i;
    let n = digits(&mut i);
    if n == 0 || (n > 1 && b[int_start] == b'0') {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn col(kind: ColumnType, native: &str) -> Column {
        Column { name: "c".into(), kind, native_type: native.into(), nullable: true, existing_rows_value: None }
    }

    fn schema(engine: Engine) -> TableSchema {
        TableSchema {
            id: tidewater_core::TableId::new("public", "t"),
            engine,
            columns: vec![],
            key: vec![],
            enum_labels: vec![],
        }
    }

    #[test]
    fn type_table_for_postgres_sources() {
        let s = schema(Engine::Postgres);
        let t = |kind: ColumnType, key: bool| mysql_type(&s, &col(kind, "x"), key);
        assert_eq!(t(ColumnType::Bool, false), "BOOLEAN");
        assert_eq!(t(ColumnType::Int32, false), "INT");
        assert_eq!(t(ColumnType::Numeric { precision: Some(10), scale: Some(2) }, false), "VARCHAR(13)");
        assert_eq!(t(ColumnType::Numeric { precision: Some(3), scale: Some(3) }, false), "VARCHAR(6)");
        assert_eq!(t(ColumnType::Numeric { precision: None, scale: None }, false), "LONGTEXT");
        assert_eq!(t(ColumnType::Numeric { precision: None, scale: None }, true), "VARCHAR(255)");
        assert_eq!(t(ColumnType::Numeric { precision: Some(80), scale: Some(2) }, false), "VARCHAR(83)");
        assert_eq!(t(ColumnType::Float64, false), "VARCHAR(32)");
        assert_eq!(t(ColumnType::Date, true), "VARCHAR(32)");
        assert_eq!(t(ColumnType::Text, false), "LONGTEXT");
        assert_eq!(t(ColumnType::Text, true), "VARCHAR(255)");
        assert_eq!(t(ColumnType::Varchar(Some(20)), false), "VARCHAR(20)");
        assert_eq!(t(ColumnType::Varchar(Some(700)), true), "VARCHAR(700)");
        assert_eq!(t(ColumnType::Varchar(Some(5000)), true), "VARCHAR(255)");
        assert_eq!(t(ColumnType::Varchar(Some(20000)), false), "LONGTEXT");
        assert_eq!(t(ColumnType::Char(Some(5)), false), "CHAR(5)");
        assert_eq!(t(ColumnType::Bytes, false), "LONGBLOB");
        assert_eq!(t(ColumnType::Bytes, true), "VARBINARY(255)");
        assert_eq!(t(ColumnType::Jsonb, false), "JSON");
        assert_eq!(t(ColumnType::Uuid, true), "CHAR(36)");
        assert_eq!(t(ColumnType::TimestampTz, false), "VARCHAR(48)");
        assert_eq!(t(ColumnType::Array, false), "JSON");
        assert_eq!(t(ColumnType::Enum, false), "VARCHAR(255)");
        assert_eq!(t(ColumnType::Other, false), "LONGTEXT");
    }

    #[test]
    fn mysql_sources_keep_plain_native_types() {
        let s = schema(Engine::Mysql);
        assert_eq!(mysql_type(&s, &col(ColumnType::Int32, "int(11) unsigned"), false), "int(11) unsigned");
        assert_eq!(
            mysql_type(&s, &col(ColumnType::Numeric { precision: Some(10), scale: Some(2) }, "decimal(10,2)"), false),
            "decimal(10,2)"
        );
        assert_eq!(mysql_type(&s, &col(ColumnType::Text, "text"), true), "VARCHAR(255)");
        assert_eq!(mysql_type(&s, &col(ColumnType::Enum, "enum('a','b')"), false), "VARCHAR(255)");
        assert_eq!(mysql_type(&s, &col(ColumnType::Other, "geometry"), false), "LONGTEXT");
    }

    fn target(t: &str) -> TargetColumn {
        TargetColumn::declared("c", t)
    }

    #[test]
    fn decimals_are_exact_or_rejected() {
        let d102 = target("DECIMAL(10,2)");
        let conv = |s: &str, t: &TargetColumn| convert_decimal(s, t);
        assert_eq!(conv("12345678.91", &d102).unwrap(), "12345678.91");
        assert_eq!(conv("-0.010", &d102).unwrap(), "-0.01");
        assert_eq!(conv("-0.000", &d102).unwrap(), "0");
        assert!(conv("1.234", &d102).unwrap_err().contains("3 decimal places"));
        assert!(conv("123456789.1", &d102).unwrap_err().contains("integer digits"));
        let wide = target("DECIMAL(65,30)");
        assert_eq!(
            conv("123456789012345678901234567890.123456789", &wide).unwrap(),
            "123456789012345678901234567890.123456789"
        );
        assert!(conv("1e-50", &wide).is_err());
        assert_eq!(conv("1e3", &wide).unwrap(), "1000");
        assert_eq!(conv("1.5e-3", &wide).unwrap(), "0.0015");
        assert!(conv("1e100", &wide).is_err());
        assert!(conv("NaN", &wide).unwrap_err().contains("NaN"));
        assert!(conv("Infinity", &wide).is_err());
        assert!(conv("12a", &wide).is_err());
        // Text targets take any decimal text.
        assert_eq!(conv("1e-50", &target("LONGTEXT")).unwrap(), format!("0.{}1", "0".repeat(49)));
    }

    #[test]
    fn timestamps_convert_to_utc_and_out_of_range_is_rejected() {
        let dt = target("DATETIME(6)");
        let tz = |s: &str| convert_datetime(s, true, Engine::Postgres, &dt).map(Cow::into_owned);
        assert_eq!(tz("2026-11-22 12:00:00.123456+00").unwrap(), "2026-11-22 12:00:00.123456");
        assert_eq!(tz("2026-11-22 12:00:00+05:30").unwrap(), "2026-11-22 06:30:00");
        assert_eq!(tz("2026-01-01 01:00:00.5-08").unwrap(), "2026-01-01 09:00:00.5");
        assert_eq!(tz("2024-02-29 23:59:59-01").unwrap(), "2024-03-01 00:59:59");
        assert_eq!(tz("1900-01-01 00:00:00+00:53:28").unwrap(), "1899-12-31 23:06:32");
        assert_eq!(tz("2026-11-22T12:00:00Z").unwrap(), "2026-11-22 12:00:00");
        assert!(tz("infinity").unwrap_err().contains("infinite"));
        assert!(tz("-infinity").is_err());
        assert!(tz("0044-03-15 12:00:00+00 BC").unwrap_err().contains("BC"));
        assert!(tz("0999-12-31 23:59:59+00").unwrap_err().contains("1000"));
        assert!(tz("10000-01-01 00:00:00+00").is_err());
        assert!(tz("1000-01-01 00:30:00+01").unwrap_err().contains("in UTC"));
        let ts = |s: &str, t: &TargetColumn| convert_datetime(s, false, Engine::Postgres, t).map(Cow::into_owned);
        assert_eq!(ts("2024-02-29 12:34:56.123456", &dt).unwrap(), "2024-02-29 12:34:56.123456");
        assert!(ts("2024-02-29 12:34:56.123456", &target("DATETIME")).unwrap_err().contains("fractional"));
        assert_eq!(ts("2024-02-29 12:34:56.000", &target("DATETIME")).unwrap(), "2024-02-29 12:34:56");
        assert_eq!(ts("2024-02-29", &target("DATE")).unwrap(), "2024-02-29");
        assert!(ts("0044-03-15 BC", &target("DATE")).is_err());
        assert!(ts("2024-02-30", &target("DATE")).is_err());
        assert_eq!(convert_datetime("0000-00-00 00:00:00", false, Engine::Mysql, &dt).unwrap(), "0000-00-00 00:00:00");
        assert_eq!(
            convert_datetime("0000-00-00 00:00:00+00", true, Engine::Mysql, &dt).unwrap(),
            "0000-00-00 00:00:00"
        );
    }

    #[test]
    fn canonical_date_times_are_borrowed_and_agree_with_the_general_path() {
        let dt6 = target("DATETIME(6)");
        let cases: &[(&str, &TargetColumn)] = &[
            ("2024-01-01 00:00:01", &dt6),
            ("2024-01-01 00:00:01.5", &dt6),
            ("2024-01-01 00:00:01.123456", &dt6),
            ("2024-01-01 00:00:01.123456+00", &dt6),
            ("2024-02-29 23:59:59+00", &dt6),
            ("2024-01-01", &target("DATE")),
        ];
        for &(text, t) in cases {
            for tz in [false, true] {
                let got = convert_datetime(text, tz, Engine::Mysql, t).unwrap();
                assert!(matches!(got, Cow::Borrowed(_)), "{text}");
                assert_eq!(Some(got.as_ref()), canonical_datetime(text, t));
                assert_eq!(got.as_ref(), text.strip_suffix("+00").unwrap_or(text));
            }
        }
        // Everything else takes the general path (and gets its answer or error).
        let dt0 = target("DATETIME");
        let general: &[(&str, &TargetColumn)] = &[
            ("2024-01-01 00:00:01.", &dt6),
            ("2024-01-01 00:00:01.50", &dt6),
            ("2024-01-01 00:00:01.5", &dt0),
            ("2024-01-01 00:00:01.1234567", &dt6),
            ("2024-01-01T00:00:01", &dt6),
            ("2024-01-01 00:00:01+01", &dt6),
            ("2024-01-01 00:00:01+00 BC", &dt6),
            ("2024-01-01 24:00:00", &dt6),
            ("2024-02-30 00:00:00", &dt6),
            ("0999-12-31 00:00:00", &dt6),
            ("0000-00-00 00:00:00", &dt6),
            ("2024-01-01", &dt6),
            ("2024-01-01 00:00:00", &target("DATE")),
            ("2024-1-01 00:00:00", &dt6),
        ];
        for &(text, t) in general {
            assert_eq!(canonical_datetime(text, t), None, "{text}");
        }
        assert_eq!(
            convert_datetime("2024-01-01 00:00:01.50", false, Engine::Mysql, &dt6).unwrap(),
            "2024-01-01 00:00:01.5"
        );
        assert_eq!(convert_datetime("2024-01-01", false, Engine::Mysql, &dt6).unwrap(), "2024-01-01 00:00:00");
        assert_eq!(
            convert_datetime("2024-01-01 00:00:00", false, Engine::Mysql, &target("DATE")).unwrap(),
            "2024-01-01"
        );
    }

    #[test]
    fn values_are_bound_typed_and_unstorable_ones_rejected() {
        let c = col(ColumnType::Float64, "double precision");
        let dbl = target("DOUBLE");
        assert_eq!(convert(&Value::Float(1.5), &c, Engine::Postgres, &dbl).unwrap(), Bind::Float(1.5));
        assert!(convert(&Value::Float(f64::NAN), &c, Engine::Postgres, &dbl).unwrap_err().contains("NaN"));
        assert!(convert(&Value::Float(f64::NEG_INFINITY), &c, Engine::Postgres, &dbl)
            .unwrap_err()
            .contains("-Infinity"));
        // Into the text columns Tidewater creates for them: exact text, nothing rejected.
        let text = target("VARCHAR(32)");
        assert_eq!(
            convert(&Value::Float(f64::NAN), &c, Engine::Postgres, &text).unwrap(),
            Bind::Text(Cow::Owned("NaN".into()))
        );
        let n = col(ColumnType::Numeric { precision: None, scale: None }, "numeric");
        for s in ["-Infinity", "NaN", "123456789012345678901234567890123456789012345678901234567890.5"] {
            let v = Value::Decimal(s.into());
            assert_eq!(convert(&v, &n, Engine::Postgres, &target("LONGTEXT")).unwrap(), Bind::Text(Cow::Borrowed(s)));
        }
        let tz = col(ColumnType::TimestampTz, "timestamp with time zone");
        let v = Value::TimestampTz("2024-02-29 12:34:56.5+02".into());
        assert_eq!(
            convert(&v, &tz, Engine::Postgres, &target("VARCHAR(48)")).unwrap(),
            Bind::Text(Cow::Owned("2024-02-29 10:34:56.5".into()))
        );
        let v = Value::TimestampTz("12345-01-01 00:00:00+00".into());
        assert_eq!(
            convert(&v, &tz, Engine::Postgres, &target("VARCHAR(48)")).unwrap(),
            Bind::Text(Cow::Borrowed("12345-01-01 00:00:00+00"))
        );
        let d = col(ColumnType::Date, "date");
        assert_eq!(
            convert(&Value::Date("infinity".into()), &d, Engine::Postgres, &text).unwrap(),
            Bind::Text(Cow::Borrowed("infinity"))
        );
        let t = col(ColumnType::Time, "time");
        assert_eq!(
            convert(&Value::Time("24:00:00".into()), &t, Engine::Postgres, &target("TIME(6)")).unwrap(),
            Bind::Text(Cow::Borrowed("24:00:00"))
        );
        assert!(convert(&Value::Time("12:00:00.5".into()), &t, Engine::Postgres, &target("TIME")).is_err());
        let a = col(ColumnType::Array, "integer[]");
        assert_eq!(
            convert(&Value::Other("{1,NULL,3}".into()), &a, Engine::Postgres, &target("JSON")).unwrap(),
            Bind::Text(Cow::Owned("[1,null,3]".into()))
        );
        // A timestamptz into a text column keeps its text.
        let tz = col(ColumnType::TimestampTz, "timestamp with time zone");
        assert_eq!(
            convert(&Value::TimestampTz("infinity".into()), &tz, Engine::Postgres, &target("LONGTEXT")).unwrap(),
            Bind::Text(Cow::Borrowed("infinity"))
        );
    }

    #[test]
    fn pg_arrays_become_json() {
        let j = |s: &str, t: &str| pg_array_to_json(s, t).unwrap();
        assert_eq!(j("{1,2,NULL}", "integer[]"), "[1,2,null]");
        assert_eq!(j("{}", "integer[]"), "[]");
        assert_eq!(j("{{1,2},{3,4}}", "integer[]"), "[[1,2],[3,4]]");
        assert_eq!(j("{{{1,2}},{{3,4}}}", "integer[]"), "[[[1,2]],[[3,4]]]");
        assert_eq!(j("[0:1][1:2]={{5,6},{7,8}}", "integer[]"), "[[5,6],[7,8]]");
        assert_eq!(j(r#"{"a b","c\"d",NULL,"NULL","",x}"#, "text[]"), r#"["a b","c\"d",null,"NULL","","x"]"#);
        assert_eq!(j(r#"{"back\\slash","comma,brace}"}"#, "text[]"), r#"["back\\slash","comma,brace}"]"#);
        assert_eq!(j("{1.5,NaN,Infinity,-Infinity}", "double precision[]"), r#"[1.5,"NaN","Infinity","-Infinity"]"#);
        assert_eq!(j("{1.50,2}", "numeric(10,2)[]"), r#"["1.50","2"]"#);
        assert_eq!(j("{t,f,NULL}", "boolean[]"), "[true,false,null]");
        assert_eq!(j(r#"{"{\"a\": 1}","[1, 2]",NULL}"#, "jsonb[]"), r#"[{"a": 1},[1, 2],null]"#);
        assert_eq!(j("{Grüße,🌊}", "text[]"), r#"["Grüße","🌊"]"#);
        assert_eq!(j("{(1,1),(0,0);(2,2),(1,1)}", "box[]"), r#"["(1,1),(0,0)","(2,2),(1,1)"]"#);
        assert_eq!(j("{007,-0,1e5}", "integer[]"), r#"["007",-0,1e5]"#);
        assert!(pg_array_to_json("{1,2", "integer[]").is_err());
        assert!(pg_array_to_json("1,2}", "integer[]").is_err());
        assert!(pg_array_to_json("{1}x", "integer[]").is_err());
        assert!(pg_array_to_json(r#"{"abc}"#, "text[]").is_err());
    }

    #[test]
    fn literals_for_defaults() {
        assert_eq!(Bind::Text(Cow::Borrowed("it's \\ ok")).literal(), "'it''s \\ ok'");
        assert_eq!(Bind::Bytes(&[0, 255]).literal(), "X'00FF'");
        assert_eq!(Bind::Bool(true).literal(), "1");
        assert_eq!(Bind::Int(-5).literal(), "-5");
    }

    #[test]
    fn row_bytes_of_declarations() {
        assert_eq!(row_bytes("VARCHAR(255)"), 1022);
        assert_eq!(row_bytes("varbinary(255)"), 257);
        assert_eq!(row_bytes("LONGTEXT"), 0);
        assert_eq!(row_bytes("CHAR(36)"), 146);
    }
}
