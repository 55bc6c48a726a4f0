//! Column values: binlog row images and snapshot rows decoded straight into core values.
//!
//! A column is decoded with two facts: its binlog [`Layout`] (how the bytes are laid out;
//! taken from the table-map event, which is authoritative for the row it precedes) and its
//! [`ValueKind`] (what the bytes mean: signedness, character set, JSON, ENUM/SET labels;
//! taken from the catalog, or from the table map's optional metadata). Nothing goes
//! through an intermediate representation: the bytes become the typed [`Value`] directly.
//!
//! Canonical text forms, identical for snapshot rows and binlog rows:
//! - DATE `YYYY-MM-DD`, DATETIME `YYYY-MM-DD HH:MM:SS[.f]`, TIMESTAMP the same in UTC with
//!   `+00`, TIME `[-]HH:MM:SS[.f]` (hours may exceed 23: MySQL TIME is a duration); the
//!   fraction is present only when non-zero, trailing zeros trimmed. Zero dates stay as
//!   MySQL writes them (`0000-00-00 00:00:00`): the target decides what to do with them.
//! - DECIMAL: exact, with the column's scale (`12.50`).
//! - FLOAT: the shortest text that reads back to the same 32-bit float, as a double
//!   (`0.1f32` becomes `0.1`, not `0.10000000149011612`).

use std::sync::Arc;

use tidewater_core::Value;

/// What a column's bytes mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// TINYINT..BIGINT; unsigned values of BIGINT UNSIGNED that exceed `i64` become
    /// [`Value::UInt`], everything else [`Value::Int`].
    Int {
        unsigned: bool,
    },
    /// BIGINT UNSIGNED: always [`Value::UInt`].
    UInt64,
    Float32,
    Float64,
    Decimal,
    Year,
    Text(Charset),
    /// BINARY(n) (pad back to `pad_to`), VARBINARY, BLOB, GEOMETRY, BIT.
    Bytes {
        pad_to: Option<usize>,
    },
    /// JSON stored as text (MariaDB: LONGTEXT with a `json_valid` check).
    JsonText(Charset),
    /// MySQL's binary JSON type.
    JsonBinary,
    Date,
    Time,
    DateTime,
    Timestamp,
    Enum(Arc<[String]>),
    Set(Arc<[String]>),
    /// MariaDB UUID (16 bytes, logged in text order).
    Uuid,
    /// MariaDB INET6 / INET4 (address bytes, network order).
    Inet6,
    Inet4,
    /// A column the binlog still has but the table no longer does (dropped later): its
    /// bytes are skipped.
    Ignored,
}

/// Character sets text columns can be decoded from. MySQL's `latin1` is Windows-1252.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    Latin1,
    /// UCS-2 / UTF-16, big-endian (MySQL `ucs2`, `utf16`).
    Utf16Be,
    Utf16Le,
    /// UTF-32, big-endian.
    Utf32,
}

impl Charset {
    /// The charset of a MySQL/MariaDB character set name; `None` for `binary` and sets
    /// this decoder does not know.
    pub fn from_name(name: &str) -> Option<Charset> {
        Some(match name.to_ascii_lowercase().as_str() {
            "utf8mb4" | "utf8mb3" | "utf8" | "ascii" => Charset::Utf8,
            "latin1" => Charset::Latin1,
            "ucs2" | "utf16" => Charset::Utf16Be,
            "utf16le" => Charset::Utf16Le,
            "utf32" => Charset::Utf32,
            _ => return None,
        })
    }

    pub fn decode(self, bytes: &[u8]) -> Result<String, String> {
        match self {
            Charset::Utf8 => std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| format!("invalid UTF-8 ({e})")),
            Charset::Latin1 => Ok(bytes.iter().map(|&b| cp1252(b)).collect()),
            Charset::Utf16Be | Charset::Utf16Le => {
                if !bytes.len().is_multiple_of(2) {
                    return Err("odd number of bytes in UTF-16 text".into());
                }
                let units = bytes.chunks_exact(2).map(|c| {
                    let pair = [c[0], c[1]];
                    if self == Charset::Utf16Be {
                        u16::from_be_bytes(pair)
                    } else {
                        u16::from_le_bytes(pair)
                    }
                });
                char::decode_utf16(units)
                    .collect::<Result<String, _>>()
                    .map_err(|e| format!("invalid UTF-16 text ({e})"))
            }
            Charset::Utf32 => {
                if !bytes.len().is_multiple_of(4) {
                    return Err("UTF-32 text length is not a multiple of 4".into());
                }
                bytes
                    .chunks_exact(4)
                    .map(|c| {
                        let n = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                        char::from_u32(n).ok_or_else(|| format!("invalid UTF-32 code point {n:#x}"))
                    })
                    .collect()
            }
        }
    }
}

/// MySQL's `latin1` (cp1252, with the five undefined bytes mapped to C1 controls as MySQL does).
fn cp1252(b: u8) -> char {
    const HIGH: [u16; 32] = [
        0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D,
        0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A,
        0x0153, 0x009D, 0x017E, 0x0178,
    ];
    match b {
        0x80..=0x9F => char::from_u32(u32::from(HIGH[usize::from(b - 0x80)])).unwrap_or('\u{FFFD}'),
        _ => char::from(b),
    }
}

/// How a column's value is laid out in a binlog row image (from the table-map event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Tiny,
    Short,
    Int24,
    Long,
    LongLong,
    Float,
    Double,
    Year,
    Decimal {
        precision: u8,
        scale: u8,
    },
    Date,
    /// Pre-5.6 TIME: 3-byte integer `HHMMSS`.
    Time,
    Time2 {
        fsp: u8,
    },
    /// Pre-5.6 DATETIME: 8-byte integer `YYYYMMDDhhmmss`.
    DateTime,
    DateTime2 {
        fsp: u8,
    },
    /// Pre-5.6 TIMESTAMP: 4-byte epoch seconds.
    Timestamp,
    Timestamp2 {
        fsp: u8,
    },
    Bit {
        bytes: usize,
    },
    Enum {
        size: u8,
    },
    Set {
        size: u8,
    },
    /// CHAR/BINARY/VARCHAR/VARBINARY: a 1- or 2-byte length, then the bytes.
    Str {
        len_bytes: u8,
    },
    /// BLOB/TEXT/GEOMETRY/JSON/VECTOR: a 1- to 4-byte length, then the bytes.
    Blob {
        len_bytes: u8,
    },
}

/// Binlog column type codes (`enum_field_types`).
pub mod types {
    pub const DECIMAL: u8 = 0;
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const NULL: u8 = 6;
    pub const TIMESTAMP: u8 = 7;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const TIME: u8 = 11;
    pub const DATETIME: u8 = 12;
    pub const YEAR: u8 = 13;
    pub const NEWDATE: u8 = 14;
    pub const VARCHAR: u8 = 15;
    pub const BIT: u8 = 16;
    pub const TIMESTAMP2: u8 = 17;
    pub const DATETIME2: u8 = 18;
    pub const TIME2: u8 = 19;
    pub const VECTOR: u8 = 242;
    pub const JSON: u8 = 245;
    pub const NEWDECIMAL: u8 = 246;
    pub const ENUM: u8 = 247;
    pub const SET: u8 = 248;
    pub const TINY_BLOB: u8 = 249;
    pub const MEDIUM_BLOB: u8 = 250;
    pub const LONG_BLOB: u8 = 251;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
    pub const GEOMETRY: u8 = 255;
}

impl Layout {
    /// The layout of a column from its table-map type code and metadata bytes. For
    /// `STRING` the real type (CHAR, ENUM, SET) is read out of the metadata here.
    pub fn from_table_map(type_code: u8, meta: &[u8]) -> Result<Layout, String> {
        use types::*;
        let m = |i: usize| -> Result<u8, String> {
            meta.get(i).copied().ok_or_else(|| format!("table map metadata too short for column type {type_code}"))
        };
        let fsp = |i: usize| -> Result<u8, String> {
            let f = m(i)?;
            if f > 6 {
                return Err(format!("fractional seconds precision {f} > 6"));
            }
            Ok(f)
        };
        Ok(match type_code {
            TINY => Layout::Tiny,
            SHORT => Layout::Short,
            INT24 => Layout::Int24,
            LONG => Layout::Long,
            LONGLONG => Layout::LongLong,
            FLOAT => Layout::Float,
            DOUBLE => Layout::Double,
            YEAR => Layout::Year,
            NEWDECIMAL => {
                let (precision, scale) = (m(0)?, m(1)?);
                if precision == 0 || precision > 65 || scale > 30 || scale > precision {
                    return Err(format!("invalid DECIMAL({precision},{scale}) in table map"));
                }
                Layout::Decimal { precision, scale }
            }
            DATE | NEWDATE => Layout::Date,
            TIME => Layout::Time,
            TIME2 => Layout::Time2 { fsp: fsp(0)? },
            DATETIME => Layout::DateTime,
            DATETIME2 => Layout::DateTime2 { fsp: fsp(0)? },
            TIMESTAMP => Layout::Timestamp,
            TIMESTAMP2 => Layout::Timestamp2 { fsp: fsp(0)? },
            BIT => {
                let (bits, bytes) = (usize::from(m(0)?), usize::from(m(1)?));
                Layout::Bit { bytes: bytes + usize::from(bits > 0) }
            }
            VARCHAR | VAR_STRING => {
                let max = u16::from_le_bytes([m(0)?, m(1)?]);
                Layout::Str { len_bytes: if max < 256 { 1 } else { 2 } }
            }
            STRING => {
                let (b0, b1) = (m(0)?, m(1)?);
                // The real type and the maximum length share the two bytes (see
                // Field_string::save_field_metadata): lengths >= 256 borrow two bits.
                let (real, max) = if b0 & 0x30 != 0x30 {
                    (b0 | 0x30, usize::from(b1) | ((usize::from(b0 & 0x30) ^ 0x30) << 4))
                } else {
                    (b0, usize::from(b1))
                };
                match real {
                    ENUM => Layout::Enum { size: b1 },
                    SET => Layout::Set { size: b1 },
                    STRING => Layout::Str { len_bytes: if max < 256 { 1 } else { 2 } },
                    other => return Err(format!("unexpected real type {other} in a STRING column's table map")),
                }
            }
            ENUM => Layout::Enum { size: m(1)? },
            SET => Layout::Set { size: m(1)? },
            TINY_BLOB | MEDIUM_BLOB | LONG_BLOB | BLOB | GEOMETRY | JSON | VECTOR => {
                let n = m(0)?;
                if !(1..=4).contains(&n) {
                    return Err(format!("invalid length size {n} for a BLOB-like column"));
                }
                Layout::Blob { len_bytes: n }
            }
            DECIMAL => {
                return Err("pre-5.0 DECIMAL columns are not supported (ALTER TABLE ... FORCE converts them)".into())
            }
            NULL => return Err("column of type NULL".into()),
            other => return Err(format!("column type {other} is not supported")),
        })
    }

    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Layout::Tiny => "TINYINT",
            Layout::Short => "SMALLINT",
            Layout::Int24 => "MEDIUMINT",
            Layout::Long => "INT",
            Layout::LongLong => "BIGINT",
            Layout::Float => "FLOAT",
            Layout::Double => "DOUBLE",
            Layout::Year => "YEAR",
            Layout::Decimal { .. } => "DECIMAL",
            Layout::Date => "DATE",
            Layout::Time | Layout::Time2 { .. } => "TIME",
            Layout::DateTime | Layout::DateTime2 { .. } => "DATETIME",
            Layout::Timestamp | Layout::Timestamp2 { .. } => "TIMESTAMP",
            Layout::Bit { .. } => "BIT",
            Layout::Enum { .. } => "ENUM",
            Layout::Set { .. } => "SET",
            Layout::Str { .. } => "CHAR/VARCHAR/BINARY/VARBINARY",
            Layout::Blob { .. } => "BLOB/TEXT/JSON/GEOMETRY",
        }
    }

    /// Whether values of this layout can carry the meaning `kind` (the catalog's view).
    /// A mismatch means the catalog and the binlog disagree about the column: never guess.
    pub fn fits(&self, kind: &ValueKind) -> bool {
        use Layout as L;
        use ValueKind as K;
        match kind {
            K::Ignored => true,
            K::Int { .. } | K::UInt64 => matches!(self, L::Tiny | L::Short | L::Int24 | L::Long | L::LongLong),
            K::Float32 | K::Float64 => matches!(self, L::Float | L::Double),
            K::Decimal => matches!(self, L::Decimal { .. }),
            K::Year => matches!(self, L::Year),
            K::Text(_) | K::JsonText(_) => matches!(self, L::Str { .. } | L::Blob { .. }),
            K::Uuid | K::Inet6 | K::Inet4 => matches!(self, L::Str { .. }),
            K::Bytes { .. } => matches!(self, L::Str { .. } | L::Blob { .. } | L::Bit { .. }),
            K::JsonBinary => matches!(self, L::Blob { .. }),
            K::Date => matches!(self, L::Date),
            K::Time => matches!(self, L::Time | L::Time2 { .. }),
            K::DateTime => matches!(self, L::DateTime | L::DateTime2 { .. }),
            K::Timestamp => matches!(self, L::Timestamp | L::Timestamp2 { .. }),
            K::Enum(_) => matches!(self, L::Enum { .. }),
            K::Set(_) => matches!(self, L::Set { .. }),
        }
    }
}

/// One column of a table map: where its bytes are and what they mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDecoder {
    pub layout: Layout,
    pub kind: ValueKind,
}

/// A bounds-checked cursor over row-image bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
            format!("row image ends after {} bytes, {} more needed", self.buf.len(), n.saturating_sub(self.rest()))
        })?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn rest(&self) -> usize {
        self.buf.len() - self.at
    }

    fn le(&mut self, n: usize) -> Result<u64, String> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn be(&mut self, n: usize) -> Result<u64, String> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }
}

/// A decoded row image: one entry per table column, `None` where the image does not
/// include the column (only with `binlog_row_image` other than FULL).
pub type RowImage = Vec<Option<Value>>;

/// The (before, after) images of one row of a rows event.
pub type RowPair = (Option<RowImage>, Option<RowImage>);

/// Decodes the rows of a rows event. `before` / `after` are the events' column-presence
/// bitmaps (one flag per table column; `None` when the event type has no such image).
/// Returns (before, after) image pairs.
pub fn decode_rows(
    columns: &[ColumnDecoder],
    before: Option<&[bool]>,
    after: Option<&[bool]>,
    data: &[u8],
) -> Result<Vec<RowPair>, String> {
    for present in [before, after].into_iter().flatten() {
        if present.len() != columns.len() {
            return Err(format!(
                "the rows event has {} columns but its table map has {}",
                present.len(),
                columns.len()
            ));
        }
    }
    let mut cur = Cursor { buf: data, at: 0 };
    let mut rows = Vec::new();
    while cur.rest() > 0 {
        let start = cur.at;
        let b = before.map(|p| decode_image(columns, p, &mut cur)).transpose()?;
        let a = after.map(|p| decode_image(columns, p, &mut cur)).transpose()?;
        if b.is_none() && a.is_none() {
            return Err("rows event without a row image".into());
        }
        if cur.at == start {
            // Images of no column take no bytes: the rest could never be read (and looping
            // on it would grow `rows` without end).
            return Err(format!("{} bytes left after the rows, but the row images hold no columns", cur.rest()));
        }
        rows.push((b, a));
    }
    Ok(rows)
}

fn decode_image(columns: &[ColumnDecoder], present: &[bool], cur: &mut Cursor<'_>) -> Result<RowImage, String> {
    let n_present = present.iter().filter(|&&p| p).count();
    let nulls = cur.take(n_present.div_ceil(8))?;
    let mut row = Vec::with_capacity(columns.len());
    let mut k = 0usize;
    for (i, col) in columns.iter().enumerate() {
        if !present[i] {
            row.push(None);
            continue;
        }
        let is_null = nulls[k / 8] & (1 << (k % 8)) != 0;
        k += 1;
        if is_null {
            row.push(Some(Value::Null));
            continue;
        }
        let v = decode_value(col, cur).map_err(|e| format!("column {}: {e}", i + 1))?;
        row.push(Some(v));
    }
    Ok(row)
}

fn sign_extend(v: u64, bytes: usize) -> i64 {
    let shift = 64 - 8 * bytes as u32;
    ((v << shift) as i64) >> shift
}

fn int_value(raw: u64, bytes: usize, kind: &ValueKind) -> Value {
    match kind {
        ValueKind::UInt64 => Value::UInt(raw),
        ValueKind::Int { unsigned: true } => i64::try_from(raw).map_or(Value::UInt(raw), Value::Int),
        _ => Value::Int(sign_extend(raw, bytes)),
    }
}

fn decode_value(col: &ColumnDecoder, cur: &mut Cursor<'_>) -> Result<Value, String> {
    let kind = &col.kind;
    if *kind == ValueKind::Ignored {
        return skip_value(col.layout, cur).map(|()| Value::Null);
    }
    Ok(match col.layout {
        Layout::Tiny => int_value(cur.le(1)?, 1, kind),
        Layout::Short => int_value(cur.le(2)?, 2, kind),
        Layout::Int24 => int_value(cur.le(3)?, 3, kind),
        Layout::Long => int_value(cur.le(4)?, 4, kind),
        Layout::LongLong => int_value(cur.le(8)?, 8, kind),
        Layout::Float => {
            let f = f32::from_bits(cur.le(4)? as u32);
            Value::Float(f32_to_f64(f))
        }
        Layout::Double => Value::Float(f64::from_bits(cur.le(8)?)),
        Layout::Year => {
            // 0 is the zero year, not 1900.
            let y = cur.le(1)?;
            Value::Int(if y == 0 { 0 } else { 1900 + y as i64 })
        }
        Layout::Decimal { precision, scale } => {
            let bytes = cur.take(decimal_bin_size(precision, scale))?;
            Value::Decimal(decode_decimal(bytes, precision, scale)?)
        }
        Layout::Date => {
            let v = cur.le(3)?;
            Value::Date(fmt_date((v >> 9) as u32, ((v >> 5) & 15) as u32, (v & 31) as u32))
        }
        Layout::Time => {
            let v = sign_extend(cur.le(3)?, 3);
            let (neg, v) = (v < 0, v.unsigned_abs());
            Value::Time(fmt_time(neg, v / 10000, (v / 100 % 100) as u32, (v % 100) as u32, 0))
        }
        Layout::Time2 { fsp } => {
            let packed = time2_packed(cur, fsp)?;
            let (neg, v) = (packed < 0, packed.unsigned_abs());
            let hms = v >> 24;
            let micros = (v % (1 << 24)) as u32;
            Value::Time(fmt_time(neg, (hms >> 12) % (1 << 10), ((hms >> 6) % 64) as u32, (hms % 64) as u32, micros))
        }
        Layout::DateTime => {
            let v = cur.le(8)?;
            let (d, t) = (v / 1_000_000, v % 1_000_000);
            let s = fmt_datetime(
                (d / 10000) as u32,
                (d / 100 % 100) as u32,
                (d % 100) as u32,
                (t / 10000) as u32,
                (t / 100 % 100) as u32,
                (t % 100) as u32,
                0,
            );
            Value::Timestamp(s)
        }
        Layout::DateTime2 { fsp } => {
            let int_part = cur.be(5)? as i64 - 0x80_0000_0000;
            let frac = read_frac(cur, fsp, true)?;
            let packed = (int_part << 24) + frac;
            let v = packed.unsigned_abs();
            let micros = (v % (1 << 24)) as u32;
            let ymdhms = v >> 24;
            let ymd = ymdhms >> 17;
            let ym = ymd >> 5;
            let hms = ymdhms % (1 << 17);
            Value::Timestamp(fmt_datetime(
                (ym / 13) as u32,
                (ym % 13) as u32,
                (ymd % 32) as u32,
                (hms >> 12) as u32,
                ((hms >> 6) % 64) as u32,
                (hms % 64) as u32,
                micros,
            ))
        }
        Layout::Timestamp => Value::TimestampTz(fmt_epoch(cur.le(4)?, 0)),
        Layout::Timestamp2 { fsp } => {
            let secs = cur.be(4)?;
            let micros = read_frac(cur, fsp, false)?;
            Value::TimestampTz(fmt_epoch(secs, micros as u32))
        }
        Layout::Bit { bytes } => Value::Bytes(cur.take(bytes)?.to_vec()),
        Layout::Enum { size } => {
            let index = cur.le(usize::from(size))? as usize;
            let ValueKind::Enum(labels) = kind else {
                return Err("ENUM value for a non-ENUM column".into());
            };
            match index {
                0 => Value::Text(String::new()), // MySQL's "invalid value" index
                i => Value::Text(
                    labels
                        .get(i - 1)
                        .cloned()
                        .ok_or_else(|| format!("ENUM index {i} beyond its {} labels", labels.len()))?,
                ),
            }
        }
        Layout::Set { size } => {
            if size > 8 {
                return Err(format!("SET of {size} bytes"));
            }
            let bits = cur.le(usize::from(size))?;
            let ValueKind::Set(labels) = kind else {
                return Err("SET value for a non-SET column".into());
            };
            Value::Text(set_labels(bits, labels)?)
        }
        Layout::Str { len_bytes } | Layout::Blob { len_bytes } => {
            let len = cur.le(usize::from(len_bytes))? as usize;
            let bytes = cur.take(len)?;
            bytes_value(kind, bytes)?
        }
    })
}

/// Steps over a value of `layout`.
fn skip_value(layout: Layout, cur: &mut Cursor<'_>) -> Result<(), String> {
    let frac = |fsp: u8| usize::from(fsp).div_ceil(2);
    let n = match layout {
        Layout::Tiny | Layout::Year => 1,
        Layout::Short => 2,
        Layout::Int24 | Layout::Date | Layout::Time => 3,
        Layout::Long | Layout::Float | Layout::Timestamp => 4,
        Layout::LongLong | Layout::Double | Layout::DateTime => 8,
        Layout::Decimal { precision, scale } => decimal_bin_size(precision, scale),
        Layout::Time2 { fsp } => 3 + frac(fsp),
        Layout::DateTime2 { fsp } => 5 + frac(fsp),
        Layout::Timestamp2 { fsp } => 4 + frac(fsp),
        Layout::Bit { bytes } => bytes,
        Layout::Enum { size } | Layout::Set { size } => usize::from(size),
        Layout::Str { len_bytes } | Layout::Blob { len_bytes } => cur.le(usize::from(len_bytes))? as usize,
    };
    cur.take(n).map(|_| ())
}

/// The value of a string-like column's bytes.
fn bytes_value(kind: &ValueKind, bytes: &[u8]) -> Result<Value, String> {
    Ok(match kind {
        ValueKind::Text(cs) => Value::Text(cs.decode(bytes)?),
        ValueKind::JsonText(cs) => Value::Json(cs.decode(bytes)?),
        ValueKind::JsonBinary => Value::Json(decode_json_binary(bytes)?),
        ValueKind::Bytes { pad_to } => {
            let mut v = bytes.to_vec();
            if let Some(n) = *pad_to {
                // BINARY(n) is logged without its trailing zero bytes.
                if v.len() < n {
                    v.resize(n, 0);
                }
            }
            Value::Bytes(v)
        }
        ValueKind::Uuid => {
            let b = fixed::<16>(bytes, "UUID")?;
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            Value::Uuid(format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]))
        }
        ValueKind::Inet6 => Value::Other(std::net::Ipv6Addr::from(fixed::<16>(bytes, "INET6")?).to_string()),
        ValueKind::Inet4 => Value::Other(std::net::Ipv4Addr::from(fixed::<4>(bytes, "INET4")?).to_string()),
        other => return Err(format!("string bytes for a column of kind {other:?}")),
    })
}

/// A fixed-size binary value; trailing zero bytes the binlog may have trimmed come back.
fn fixed<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], String> {
    if bytes.len() > N {
        return Err(format!("{what} value of {} bytes", bytes.len()));
    }
    let mut out = [0u8; N];
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
}

fn set_labels(bits: u64, labels: &[String]) -> Result<String, String> {
    let mut out = String::new();
    for i in 0..64 {
        if bits & (1 << i) == 0 {
            continue;
        }
        let label = labels.get(i).ok_or_else(|| format!("SET bit {i} beyond its {} labels", labels.len()))?;
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(label);
    }
    Ok(out)
}

/// Fractional seconds of TIME2/DATETIME2/TIMESTAMP2, in microseconds (signed for TIME2 and
/// DATETIME2, whose fraction is stored as a signed big-endian number).
fn read_frac(cur: &mut Cursor<'_>, fsp: u8, signed: bool) -> Result<i64, String> {
    let n = match fsp {
        0 => return Ok(0),
        1 | 2 => 1,
        3 | 4 => 2,
        _ => 3,
    };
    let raw = cur.be(n)?;
    let v = if signed { sign_extend(raw, n) } else { raw as i64 };
    Ok(match n {
        1 => v * 10_000,
        2 => v * 100,
        _ => v,
    })
}

/// TIME2's packed value (MySQL `my_time_packed_from_binary`): integer part in the high
/// bits, microseconds in the low 24.
fn time2_packed(cur: &mut Cursor<'_>, fsp: u8) -> Result<i64, String> {
    const INT_OFS: i64 = 0x80_0000;
    Ok(match fsp {
        0 => (cur.be(3)? as i64 - INT_OFS) << 24,
        1 | 2 => {
            let mut int_part = cur.be(3)? as i64 - INT_OFS;
            let mut frac = cur.be(1)? as i64;
            if int_part < 0 && frac != 0 {
                int_part += 1;
                frac -= 0x100;
            }
            (int_part << 24) + frac * 10_000
        }
        3 | 4 => {
            let mut int_part = cur.be(3)? as i64 - INT_OFS;
            let mut frac = cur.be(2)? as i64;
            if int_part < 0 && frac != 0 {
                int_part += 1;
                frac -= 0x10000;
            }
            (int_part << 24) + frac * 100
        }
        _ => cur.be(6)? as i64 - 0x8000_0000_0000,
    })
}

/// The shortest decimal text of a 32-bit float, read as a double.
pub fn f32_to_f64(f: f32) -> f64 {
    if f.is_finite() {
        f.to_string().parse().unwrap_or(f64::from(f))
    } else {
        f64::from(f)
    }
}

// The date/time texts below are built digit by digit: they are made for every temporal
// value of every row, and `format!` costs several times more.

/// Appends `v` in decimal, zero-padded to at least `width` digits.
fn push_padded(out: &mut String, v: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    let mut rest = v;
    loop {
        digits[n] = b'0' + (rest % 10) as u8;
        n += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for _ in n..width {
        out.push('0');
    }
    out.extend(digits[..n].iter().rev().map(|&d| char::from(d)));
}

/// Appends `.ffffff` without trailing zeros (nothing for 0).
fn push_fraction(out: &mut String, micros: u32) {
    if micros == 0 {
        return;
    }
    let mut digits = 6;
    let mut v = micros;
    while v.is_multiple_of(10) {
        v /= 10;
        digits -= 1;
    }
    out.push('.');
    push_padded(out, u64::from(v), digits);
}

fn push_date(out: &mut String, y: u32, m: u32, d: u32) {
    push_padded(out, u64::from(y), 4);
    out.push('-');
    push_padded(out, u64::from(m), 2);
    out.push('-');
    push_padded(out, u64::from(d), 2);
}

fn push_hms(out: &mut String, h: u64, mi: u32, s: u32, micros: u32) {
    push_padded(out, h, 2);
    out.push(':');
    push_padded(out, u64::from(mi), 2);
    out.push(':');
    push_padded(out, u64::from(s), 2);
    push_fraction(out, micros);
}

pub fn fmt_date(y: u32, m: u32, d: u32) -> String {
    let mut out = String::with_capacity(10);
    push_date(&mut out, y, m, d);
    out
}

pub fn fmt_time(negative: bool, hours: u64, minutes: u32, seconds: u32, micros: u32) -> String {
    let mut out = String::with_capacity(17);
    if negative && (hours, minutes, seconds, micros) != (0, 0, 0, 0) {
        out.push('-');
    }
    push_hms(&mut out, hours, minutes, seconds, micros);
    out
}

pub fn fmt_datetime(y: u32, mo: u32, d: u32, h: u32, mi: u32, s: u32, micros: u32) -> String {
    // Room for the `+00` fmt_epoch appends.
    let mut out = String::with_capacity(29);
    push_date(&mut out, y, mo, d);
    out.push(' ');
    push_hms(&mut out, u64::from(h), mi, s, micros);
    out
}

/// A TIMESTAMP (seconds since the epoch, UTC) as `YYYY-MM-DD HH:MM:SS[.f]+00`; 0 is
/// MySQL's zero timestamp.
pub fn fmt_epoch(secs: u64, micros: u32) -> String {
    if secs == 0 && micros == 0 {
        return "0000-00-00 00:00:00+00".into();
    }
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let mut out = fmt_datetime(y as u32, m, d, (rem / 3600) as u32, (rem / 60 % 60) as u32, (rem % 60) as u32, micros);
    out.push_str("+00");
    out
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

const DIG_PER_DEC: usize = 9;
const DIG_TO_BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

/// Bytes of a DECIMAL(precision, scale) in binlog/storage format.
pub fn decimal_bin_size(precision: u8, scale: u8) -> usize {
    let (p, s) = (usize::from(precision), usize::from(scale));
    let intg = p.saturating_sub(s);
    (intg / DIG_PER_DEC) * 4 + DIG_TO_BYTES[intg % DIG_PER_DEC] + (s / DIG_PER_DEC) * 4 + DIG_TO_BYTES[s % DIG_PER_DEC]
}

/// Exact text of a DECIMAL in MySQL's binary format: groups of nine digits in big-endian
/// 4-byte words (shorter words for the leading and trailing partial groups), the sign in
/// the top bit (set = positive), negative numbers with every bit inverted.
pub fn decode_decimal(bytes: &[u8], precision: u8, scale: u8) -> Result<String, String> {
    let (p, s) = (usize::from(precision), usize::from(scale));
    if s > p || bytes.len() != decimal_bin_size(precision, scale) || bytes.is_empty() {
        return Err(format!("malformed DECIMAL({p},{s}) of {} bytes", bytes.len()));
    }
    let negative = bytes[0] & 0x80 == 0;
    let mask: u8 = if negative { 0xFF } else { 0 };
    let mut buf: Vec<u8> = bytes.iter().map(|b| b ^ mask).collect();
    buf[0] ^= 0x80;
    let mut at = 0usize;
    let mut word = |n: usize, digits: usize| -> Result<String, String> {
        let v = buf[at..at + n].iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        at += n;
        if v >= 10u64.pow(digits as u32) {
            return Err(format!("corrupt DECIMAL({p},{s}) digits"));
        }
        Ok(format!("{v:0digits$}"))
    };
    let intg = p - s;
    let mut int_digits = String::new();
    if intg % DIG_PER_DEC > 0 {
        int_digits.push_str(&word(DIG_TO_BYTES[intg % DIG_PER_DEC], intg % DIG_PER_DEC)?);
    }
    for _ in 0..intg / DIG_PER_DEC {
        int_digits.push_str(&word(4, DIG_PER_DEC)?);
    }
    let mut frac_digits = String::new();
    for _ in 0..s / DIG_PER_DEC {
        frac_digits.push_str(&word(4, DIG_PER_DEC)?);
    }
    if s % DIG_PER_DEC > 0 {
        frac_digits.push_str(&word(DIG_TO_BYTES[s % DIG_PER_DEC], s % DIG_PER_DEC)?);
    }
    let int_digits = int_digits.trim_start_matches('0');
    let zero = int_digits.is_empty() && frac_digits.bytes().all(|b| b == b'0');
    let mut out = String::with_capacity(p + 3);
    if negative && !zero {
        out.push('-');
    }
    out.push_str(if int_digits.is_empty() { "0" } else { int_digits });
    if s > 0 {
        out.push('.');
        out.push_str(&frac_digits);
    }
    Ok(out)
}

/// MySQL binary JSON → JSON text. Rare enough (MySQL only) to go through a DOM.
fn decode_json_binary(bytes: &[u8]) -> Result<String, String> {
    use mysql_common::proto::MyDeserialize;
    if bytes.is_empty() {
        return Ok("null".into()); // an empty document is JSON null
    }
    let mut buf = mysql_common::io::ParseBuf(bytes);
    let value = mysql_common::binlog::jsonb::Value::deserialize((), &mut buf)
        .map_err(|e| format!("undecodable binary JSON ({e})"))?;
    let dom = value.parse().map_err(|e| format!("undecodable binary JSON ({e})"))?;
    Ok(mysql_common::serde_json::Value::from(dom).to_string())
}

/// A value read from a snapshot (`SELECT` over the binary protocol, session time zone
/// UTC, result character set utf8mb4) → the same core value the binlog gives.
pub fn from_protocol(kind: &ValueKind, v: mysql_common::value::Value) -> Result<Value, String> {
    use mysql_common::value::Value as M;
    Ok(match (kind, v) {
        (_, M::NULL) => Value::Null,
        (ValueKind::UInt64, M::UInt(u)) => Value::UInt(u),
        (ValueKind::UInt64, M::Int(i)) => {
            Value::UInt(u64::try_from(i).map_err(|_| format!("{i} in an unsigned column"))?)
        }
        (ValueKind::Int { .. } | ValueKind::Year, M::Int(i)) => Value::Int(i),
        (ValueKind::Int { .. } | ValueKind::Year, M::UInt(u)) => i64::try_from(u).map_or(Value::UInt(u), Value::Int),
        (ValueKind::Float32 | ValueKind::Float64, M::Float(f)) => Value::Float(f32_to_f64(f)),
        (ValueKind::Float32 | ValueKind::Float64, M::Double(f)) => Value::Float(f),
        (ValueKind::Decimal, M::Bytes(b)) => Value::Decimal(utf8(b)?),
        (ValueKind::Year, M::Bytes(b)) => Value::Int(utf8(b)?.parse().map_err(|_| "YEAR text is not a number")?),
        // Text arrives converted to utf8mb4 (the connection's character set).
        (ValueKind::Text(_) | ValueKind::Enum(_) | ValueKind::Set(_), M::Bytes(b)) => Value::Text(utf8(b)?),
        (ValueKind::JsonText(_), M::Bytes(b)) => Value::Json(utf8(b)?),
        (ValueKind::Uuid, M::Bytes(b)) => Value::Uuid(utf8(b)?.to_ascii_lowercase()),
        (ValueKind::Inet6 | ValueKind::Inet4, M::Bytes(b)) => Value::Other(utf8(b)?),
        (ValueKind::JsonBinary, M::Bytes(b)) => {
            // MySQL prints JSON with spaces; the binlog path prints it compact: normalize.
            let text = utf8(b)?;
            let parsed: mysql_common::serde_json::Value =
                mysql_common::serde_json::from_str(&text).map_err(|e| format!("invalid JSON from the server ({e})"))?;
            Value::Json(parsed.to_string())
        }
        (ValueKind::Bytes { pad_to }, M::Bytes(b)) => bytes_value(&ValueKind::Bytes { pad_to: *pad_to }, &b)?,
        (ValueKind::Date, M::Date(y, m, d, ..)) => Value::Date(fmt_date(y.into(), m.into(), d.into())),
        (ValueKind::DateTime, M::Date(y, mo, d, h, mi, s, us)) => {
            Value::Timestamp(fmt_datetime(y.into(), mo.into(), d.into(), h.into(), mi.into(), s.into(), us))
        }
        (ValueKind::Timestamp, M::Date(y, mo, d, h, mi, s, us)) => Value::TimestampTz(format!(
            "{}+00",
            fmt_datetime(y.into(), mo.into(), d.into(), h.into(), mi.into(), s.into(), us)
        )),
        (ValueKind::Time, M::Time(neg, days, h, m, s, us)) => {
            Value::Time(fmt_time(neg, u64::from(days) * 24 + u64::from(h), m.into(), s.into(), us))
        }
        (kind, v) => return Err(format!("unexpected value {v:?} for a column of kind {kind:?}")),
    })
}

fn utf8(b: Vec<u8>) -> Result<String, String> {
    String::from_utf8(b).map_err(|e| format!("invalid UTF-8 from the server ({e})"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn col(layout: Layout, kind: ValueKind) -> ColumnDecoder {
        ColumnDecoder { layout, kind }
    }

    fn one(layout: Layout, kind: ValueKind, bytes: &[u8]) -> Result<Value, String> {
        let mut cur = Cursor { buf: bytes, at: 0 };
        let v = decode_value(&col(layout, kind), &mut cur)?;
        assert_eq!(cur.rest(), 0, "all bytes consumed");
        Ok(v)
    }

    #[test]
    fn integers_follow_the_catalogs_signedness() {
        let signed = ValueKind::Int { unsigned: false };
        let unsigned = ValueKind::Int { unsigned: true };
        assert_eq!(one(Layout::Tiny, signed.clone(), &[0xFF]).unwrap(), Value::Int(-1));
        assert_eq!(one(Layout::Tiny, unsigned.clone(), &[0xFF]).unwrap(), Value::Int(255));
        assert_eq!(one(Layout::Int24, signed.clone(), &[0xFF, 0xFF, 0xFF]).unwrap(), Value::Int(-1));
        assert_eq!(one(Layout::Int24, unsigned.clone(), &[0xFF, 0xFF, 0xFF]).unwrap(), Value::Int(16_777_215));
        assert_eq!(one(Layout::Long, signed.clone(), &[0, 0, 0, 0x80]).unwrap(), Value::Int(i64::from(i32::MIN)));
        assert_eq!(one(Layout::LongLong, ValueKind::UInt64, &[0xFF; 8]).unwrap(), Value::UInt(u64::MAX));
        assert_eq!(one(Layout::LongLong, signed, &[0xFF; 8]).unwrap(), Value::Int(-1));
        assert_eq!(one(Layout::LongLong, ValueKind::UInt64, &[1, 0, 0, 0, 0, 0, 0, 0]).unwrap(), Value::UInt(1));
    }

    #[test]
    fn years_floats_bits() {
        assert_eq!(one(Layout::Year, ValueKind::Year, &[0]).unwrap(), Value::Int(0));
        assert_eq!(one(Layout::Year, ValueKind::Year, &[124]).unwrap(), Value::Int(2024));
        assert_eq!(one(Layout::Float, ValueKind::Float32, &0.1f32.to_le_bytes()).unwrap(), Value::Float(0.1));
        assert_eq!(one(Layout::Double, ValueKind::Float64, &1e300f64.to_le_bytes()).unwrap(), Value::Float(1e300));
        let bits = Layout::from_table_map(types::BIT, &[1, 8]).unwrap();
        assert_eq!(bits, Layout::Bit { bytes: 9 });
        assert_eq!(Layout::from_table_map(types::BIT, &[0, 8]).unwrap(), Layout::Bit { bytes: 8 });
        assert_eq!(
            one(Layout::Bit { bytes: 2 }, ValueKind::Bytes { pad_to: None }, &[0x01, 0x02]).unwrap(),
            Value::Bytes(vec![1, 2])
        );
    }

    #[test]
    fn temporal_values() {
        // DATE 2024-02-29: (2024 << 9) | (2 << 5) | 29
        let v: u32 = (2024 << 9) | (2 << 5) | 29;
        assert_eq!(
            one(Layout::Date, ValueKind::Date, &v.to_le_bytes()[..3]).unwrap(),
            Value::Date("2024-02-29".into())
        );
        assert_eq!(one(Layout::Date, ValueKind::Date, &[0, 0, 0]).unwrap(), Value::Date("0000-00-00".into()));
        // TIMESTAMP2(0) 1 second after the epoch; zero timestamp.
        assert_eq!(
            one(Layout::Timestamp2 { fsp: 0 }, ValueKind::Timestamp, &[0, 0, 0, 1]).unwrap(),
            Value::TimestampTz("1970-01-01 00:00:01+00".into())
        );
        assert_eq!(
            one(Layout::Timestamp2 { fsp: 0 }, ValueKind::Timestamp, &[0, 0, 0, 0]).unwrap(),
            Value::TimestampTz("0000-00-00 00:00:00+00".into())
        );
        // 2038-01-19 03:14:07.5 with fsp 1 (fraction byte holds 50 hundredths... fsp 1/2
        // store hundredths of a second).
        let secs: u32 = 2_147_483_647;
        let mut b = secs.to_be_bytes().to_vec();
        b.push(50);
        assert_eq!(
            one(Layout::Timestamp2 { fsp: 1 }, ValueKind::Timestamp, &b).unwrap(),
            Value::TimestampTz("2038-01-19 03:14:07.5+00".into())
        );
        assert_eq!(fmt_epoch(951_782_400, 123), "2000-02-29 00:00:00.000123+00");
    }

    #[test]
    fn date_time_texts_match_the_format_macro() {
        let frac = |micros: u32| {
            if micros == 0 {
                String::new()
            } else {
                format!(".{micros:06}").trim_end_matches('0').to_string()
            }
        };
        for &(y, mo, d) in &[(0, 0, 0), (1, 2, 3), (999, 12, 31), (2024, 1, 9), (9999, 12, 31), (12345, 1, 1)] {
            assert_eq!(fmt_date(y, mo, d), format!("{y:04}-{mo:02}-{d:02}"));
            for &(h, mi, s) in &[(0, 0, 0), (9, 5, 7), (23, 59, 59)] {
                for micros in [0, 1, 10, 500_000, 123_456, 999_999, 120_000] {
                    assert_eq!(
                        fmt_datetime(y, mo, d, h, mi, s, micros),
                        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}{}", frac(micros))
                    );
                }
            }
        }
        assert_eq!(fmt_time(true, 838, 59, 59, 0), "-838:59:59");
        assert_eq!(fmt_time(true, 0, 0, 0, 0), "00:00:00");
        assert_eq!(fmt_time(false, 1, 2, 3, 40), "01:02:03.00004");
        assert_eq!(fmt_time(true, 0, 0, 0, 5), "-00:00:00.000005");
    }

    /// DATETIME2 bytes as MySQL's `my_datetime_packed_to_binary` writes them.
    #[allow(clippy::too_many_arguments)]
    fn datetime2_bytes(y: u64, mo: u64, d: u64, h: u64, mi: u64, s: u64, micros: i64, fsp: u8) -> Vec<u8> {
        let ymd = ((y * 13 + mo) << 5) | d;
        let hms = (h << 12) | (mi << 6) | s;
        let int_part = ((ymd << 17) | hms) as i64;
        let mut out = ((int_part + 0x80_0000_0000) as u64).to_be_bytes()[3..].to_vec();
        match fsp {
            0 => {}
            1 | 2 => out.push((micros / 10_000) as u8),
            3 | 4 => out.extend_from_slice(&((micros / 100) as u16).to_be_bytes()),
            _ => out.extend_from_slice(&(micros as u32).to_be_bytes()[1..]),
        }
        out
    }

    #[test]
    fn datetime2_and_zero_dates() {
        let b = datetime2_bytes(2024, 12, 31, 23, 59, 58, 123_456, 6);
        assert_eq!(
            one(Layout::DateTime2 { fsp: 6 }, ValueKind::DateTime, &b).unwrap(),
            Value::Timestamp("2024-12-31 23:59:58.123456".into())
        );
        let b = datetime2_bytes(1000, 1, 1, 0, 0, 0, 0, 0);
        assert_eq!(
            one(Layout::DateTime2 { fsp: 0 }, ValueKind::DateTime, &b).unwrap(),
            Value::Timestamp("1000-01-01 00:00:00".into())
        );
        let b = datetime2_bytes(0, 0, 0, 0, 0, 0, 0, 3);
        assert_eq!(
            one(Layout::DateTime2 { fsp: 3 }, ValueKind::DateTime, &b).unwrap(),
            Value::Timestamp("0000-00-00 00:00:00".into())
        );
        let b = datetime2_bytes(2020, 1, 2, 3, 4, 5, 500_000, 2);
        assert_eq!(
            one(Layout::DateTime2 { fsp: 2 }, ValueKind::DateTime, &b).unwrap(),
            Value::Timestamp("2020-01-02 03:04:05.5".into())
        );
    }

    /// TIME2 bytes as MySQL's `my_time_packed_to_binary` writes them (the integer part is
    /// floored, the fraction keeps its sign).
    fn time2_bytes(negative: bool, h: i64, m: i64, s: i64, micros: i64, fsp: u8) -> Vec<u8> {
        let hms = (h << 12) | (m << 6) | s;
        let mut packed = (hms << 24) + micros;
        if negative {
            packed = -packed;
        }
        let int_part = packed >> 24;
        let frac = packed % (1 << 24);
        match fsp {
            0 => ((int_part + 0x80_0000) as u32).to_be_bytes()[1..].to_vec(),
            1 | 2 => {
                let mut out = ((int_part + 0x80_0000) as u32).to_be_bytes()[1..].to_vec();
                out.push((frac / 10_000) as i8 as u8);
                out
            }
            3 | 4 => {
                let mut out = ((int_part + 0x80_0000) as u32).to_be_bytes()[1..].to_vec();
                out.extend_from_slice(&((frac / 100) as i16).to_be_bytes());
                out
            }
            _ => ((packed + 0x8000_0000_0000) as u64).to_be_bytes()[2..].to_vec(),
        }
    }

    #[test]
    fn time2_values_including_negative() {
        for (neg, h, m, s, us, fsp, text) in [
            (false, 12, 34, 56, 0, 0, "12:34:56"),
            (false, 838, 59, 59, 0, 0, "838:59:59"),
            (true, 838, 59, 59, 0, 0, "-838:59:59"),
            (true, 0, 0, 1, 500_000, 1, "-00:00:01.5"),
            (false, 1, 2, 3, 450_000, 2, "01:02:03.45"),
            (true, 1, 2, 3, 456_700, 4, "-01:02:03.4567"),
            (false, 23, 59, 59, 999_999, 6, "23:59:59.999999"),
            (true, 0, 0, 0, 1, 6, "-00:00:00.000001"),
        ] {
            let b = time2_bytes(neg, h, m, s, us, fsp);
            assert_eq!(
                one(Layout::Time2 { fsp }, ValueKind::Time, &b).unwrap(),
                Value::Time(text.into()),
                "{text} with fsp {fsp}"
            );
        }
    }

    #[test]
    fn strings_enums_sets() {
        let text = ValueKind::Text(Charset::Utf8);
        assert_eq!(
            one(Layout::Str { len_bytes: 1 }, text.clone(), b"\x04\xF0\x9F\x98\x80").unwrap(),
            Value::Text("😀".into())
        );
        assert!(one(Layout::Str { len_bytes: 1 }, text, b"\x01\xFF").unwrap_err().contains("UTF-8"));
        assert_eq!(
            one(Layout::Str { len_bytes: 1 }, ValueKind::Text(Charset::Latin1), b"\x04caf\xE9").unwrap(),
            Value::Text("café".into())
        );
        assert_eq!(Charset::Latin1.decode(b"caf\xE9 \x80").unwrap(), "café €");
        assert_eq!(Charset::Utf16Be.decode(&[0xD8, 0x3D, 0xDE, 0x00]).unwrap(), "😀");
        assert_eq!(Charset::Utf32.decode(&[0, 1, 0xF6, 0]).unwrap(), "😀");
        assert_eq!(
            one(Layout::Str { len_bytes: 1 }, ValueKind::Bytes { pad_to: Some(4) }, b"\x02ab").unwrap(),
            Value::Bytes(b"ab\0\0".to_vec())
        );
        assert_eq!(
            one(Layout::Blob { len_bytes: 2 }, ValueKind::JsonText(Charset::Utf8), b"\x07\x00{\"a\":1}").unwrap(),
            Value::Json("{\"a\":1}".into())
        );
        let labels: Arc<[String]> = vec!["a".to_string(), "b".to_string(), "c".to_string()].into();
        assert_eq!(
            one(Layout::Enum { size: 1 }, ValueKind::Enum(labels.clone()), &[2]).unwrap(),
            Value::Text("b".into())
        );
        assert_eq!(
            one(Layout::Enum { size: 1 }, ValueKind::Enum(labels.clone()), &[0]).unwrap(),
            Value::Text("".into())
        );
        assert!(one(Layout::Enum { size: 1 }, ValueKind::Enum(labels.clone()), &[4]).is_err());
        assert_eq!(
            one(Layout::Set { size: 1 }, ValueKind::Set(labels.clone()), &[0b101]).unwrap(),
            Value::Text("a,c".into())
        );
        assert_eq!(one(Layout::Set { size: 1 }, ValueKind::Set(labels.clone()), &[0]).unwrap(), Value::Text("".into()));
        assert!(one(Layout::Set { size: 1 }, ValueKind::Set(labels), &[0b1000]).is_err());
        let uuid: Vec<u8> = (0u8..16).collect();
        let mut b = vec![16];
        b.extend_from_slice(&uuid);
        assert_eq!(
            one(Layout::Str { len_bytes: 1 }, ValueKind::Uuid, &b).unwrap(),
            Value::Uuid("00010203-0405-0607-0809-0a0b0c0d0e0f".into())
        );
        assert_eq!(
            one(Layout::Str { len_bytes: 1 }, ValueKind::Inet4, b"\x04\x01\x02\x03\x04").unwrap(),
            Value::Other("1.2.3.4".into())
        );
        let mut b = vec![16];
        b.extend_from_slice(&[0; 15]);
        b.push(1);
        assert_eq!(one(Layout::Str { len_bytes: 1 }, ValueKind::Inet6, &b).unwrap(), Value::Other("::1".into()));
    }

    #[test]
    fn string_table_map_metadata() {
        // CHAR(10) utf8mb4: 40 bytes, real type STRING.
        assert_eq!(Layout::from_table_map(types::STRING, &[254, 40]).unwrap(), Layout::Str { len_bytes: 1 });
        // CHAR(255) utf8mb4 = 1020 bytes: the high bits of the length hide in byte 0
        // (Field_string::do_save_field_metadata).
        let len: usize = 1020;
        let meta = [254u8 ^ (((len & 0x300) >> 4) as u8), (len & 0xFF) as u8];
        assert_eq!(Layout::from_table_map(types::STRING, &meta).unwrap(), Layout::Str { len_bytes: 2 });
        assert_eq!(Layout::from_table_map(types::STRING, &[types::ENUM, 2]).unwrap(), Layout::Enum { size: 2 });
        assert_eq!(Layout::from_table_map(types::STRING, &[types::SET, 8]).unwrap(), Layout::Set { size: 8 });
        assert_eq!(Layout::from_table_map(types::VARCHAR, &[255, 0]).unwrap(), Layout::Str { len_bytes: 1 });
        assert_eq!(Layout::from_table_map(types::VARCHAR, &[0, 1]).unwrap(), Layout::Str { len_bytes: 2 });
        assert!(Layout::from_table_map(types::NEWDECIMAL, &[10]).is_err(), "metadata too short");
        assert!(Layout::from_table_map(141, &[]).is_err(), "MariaDB compressed columns are refused");
    }

    #[test]
    fn decimals_known_values() {
        // DECIMAL(5,2) 123.45 (a classic example: 0x80 0x7B 0x2D for 123 and 45).
        assert_eq!(decode_decimal(&[0x80, 0x7B, 0x2D], 5, 2).unwrap(), "123.45");
        // -123.45: all bits inverted.
        assert_eq!(decode_decimal(&[0x7F, 0x84, 0xD2], 5, 2).unwrap(), "-123.45");
        assert_eq!(decode_decimal(&[0x80, 0x00, 0x05], 5, 2).unwrap(), "0.05");
        assert!(decode_decimal(&[0x80, 0x00], 5, 2).is_err());
    }

    fn reference_bytes(text: &str, precision: u8, scale: u8) -> Vec<u8> {
        // mysql_common writes the value with the text's own digits; pad it to the
        // column's shape by parsing a zero-padded rendition.
        let d: mysql_common::binlog::decimal::Decimal = text.parse().unwrap();
        let mut out = Vec::new();
        d.write_bin(&mut out).unwrap();
        assert_eq!(out.len(), decimal_bin_size(precision, scale), "{text} as ({precision},{scale})");
        out
    }

    /// Every kind a column may be decoded as (the value half of a column's decoder).
    fn any_kind() -> impl Strategy<Value = ValueKind> {
        let labels: Arc<[String]> = Arc::from(vec!["a".to_string(), "b".to_string()]);
        prop_oneof![
            any::<bool>().prop_map(|unsigned| ValueKind::Int { unsigned }),
            Just(ValueKind::UInt64),
            Just(ValueKind::Float32),
            Just(ValueKind::Float64),
            Just(ValueKind::Decimal),
            Just(ValueKind::Year),
            prop_oneof![
                Just(Charset::Utf8),
                Just(Charset::Latin1),
                Just(Charset::Utf16Be),
                Just(Charset::Utf16Le),
                Just(Charset::Utf32)
            ]
            .prop_map(ValueKind::Text),
            proptest::option::of(0usize..40).prop_map(|pad_to| ValueKind::Bytes { pad_to }),
            Just(ValueKind::JsonText(Charset::Utf8)),
            Just(ValueKind::JsonBinary),
            Just(ValueKind::Date),
            Just(ValueKind::Time),
            Just(ValueKind::DateTime),
            Just(ValueKind::Timestamp),
            Just(ValueKind::Enum(labels.clone())),
            Just(ValueKind::Set(labels)),
            Just(ValueKind::Uuid),
            Just(ValueKind::Inet6),
            Just(ValueKind::Inet4),
            Just(ValueKind::Ignored),
        ]
    }

    proptest! {
        /// Malformed input never panics: any table map (type code and metadata bytes),
        /// any decoding kind, any presence bitmaps and any row bytes give rows or an error.
        #[test]
        fn random_rows_events_never_panic(
            columns in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..4), any_kind()), 1..8),
            before in proptest::option::of(proptest::collection::vec(any::<bool>(), 8)),
            after in proptest::option::of(proptest::collection::vec(any::<bool>(), 8)),
            data in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let decoders: Vec<ColumnDecoder> = columns
                .into_iter()
                .filter_map(|(code, meta, kind)| Layout::from_table_map(code, &meta).ok().map(|layout| col(layout, kind)))
                .collect();
            let n = decoders.len();
            let before = before.map(|b| b[..n].to_vec());
            let after = after.map(|a| a[..n].to_vec());
            let _ = decode_rows(&decoders, before.as_deref(), after.as_deref(), &data);
        }

        #[test]
        fn decimals_round_trip(
            negative in any::<bool>(),
            int_digits in proptest::collection::vec(0u8..10, 1..36),
            frac_digits in proptest::collection::vec(0u8..10, 0..30),
        ) {
            let mut int_part: String = int_digits.iter().map(|d| char::from(b'0' + d)).collect();
            if int_part.len() > 1 {
                int_part.replace_range(0..1, "1"); // keep the digit count = precision - scale
            }
            let frac: String = frac_digits.iter().map(|d| char::from(b'0' + d)).collect();
            let (precision, scale) = ((int_part.len() + frac.len()) as u8, frac.len() as u8);
            let body = if frac.is_empty() { int_part.clone() } else { format!("{int_part}.{frac}") };
            let all_zero = body.bytes().all(|b| b == b'0' || b == b'.');
            let text = if negative && !all_zero { format!("-{body}") } else { body.clone() };
            let bytes = reference_bytes(&text, precision, scale);
            let int_trimmed = int_part.trim_start_matches('0');
            let expected_int = if int_trimmed.is_empty() { "0" } else { int_trimmed };
            let expected = format!(
                "{}{}{}",
                if negative && !all_zero { "-" } else { "" },
                expected_int,
                if frac.is_empty() { String::new() } else { format!(".{frac}") }
            );
            prop_assert_eq!(decode_decimal(&bytes, precision, scale).unwrap(), expected);
        }
    }

    #[test]
    fn images_without_columns_cannot_loop_forever() {
        let cols = vec![col(Layout::Long, ValueKind::Int { unsigned: false })];
        let err = decode_rows(&cols, None, Some(&[false]), &[0, 0]).unwrap_err();
        assert!(err.contains("hold no columns"), "{err}");
    }

    #[test]
    fn rows_with_nulls_and_partial_images() {
        let cols = vec![
            col(Layout::Long, ValueKind::Int { unsigned: false }),
            col(Layout::Str { len_bytes: 1 }, ValueKind::Text(Charset::Utf8)),
            col(Layout::Tiny, ValueKind::Int { unsigned: false }),
        ];
        // Two rows: (7, NULL, 1) and (8, "x", 2).
        let mut data = vec![0b010];
        data.extend_from_slice(&7i32.to_le_bytes());
        data.push(1);
        data.push(0);
        data.extend_from_slice(&8i32.to_le_bytes());
        data.extend_from_slice(b"\x01x");
        data.push(2);
        let all = [true, true, true];
        let rows = decode_rows(&cols, None, Some(&all), &data).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].1.as_ref().unwrap(), &vec![Some(Value::Int(7)), Some(Value::Null), Some(Value::Int(1))]);
        assert_eq!(
            rows[1].1.as_ref().unwrap(),
            &vec![Some(Value::Int(8)), Some(Value::Text("x".into())), Some(Value::Int(2))]
        );
        // A truncated image is an error, not a panic.
        assert!(decode_rows(&cols, None, Some(&all), &data[..data.len() - 1]).unwrap_err().contains("ends"));
        // An image without column 2.
        let partial = [true, false, true];
        let mut data = vec![0];
        data.extend_from_slice(&9i32.to_le_bytes());
        data.push(3);
        let rows = decode_rows(&cols, Some(&partial), None, &data).unwrap();
        assert_eq!(rows[0].0.as_ref().unwrap(), &vec![Some(Value::Int(9)), None, Some(Value::Int(3))]);
        assert!(decode_rows(&cols, Some(&[true, true]), None, &data).is_err(), "column count mismatch");
        // A column dropped since is stepped over.
        let cols = vec![
            col(Layout::Long, ValueKind::Int { unsigned: false }),
            col(Layout::Str { len_bytes: 1 }, ValueKind::Ignored),
            col(Layout::DateTime2 { fsp: 3 }, ValueKind::Ignored),
            col(Layout::Tiny, ValueKind::Int { unsigned: false }),
        ];
        let mut data = vec![0];
        data.extend_from_slice(&9i32.to_le_bytes());
        data.extend_from_slice(b"\x02ab");
        data.extend_from_slice(&datetime2_bytes(2020, 1, 1, 0, 0, 0, 0, 3));
        data.push(3);
        let rows = decode_rows(&cols, None, Some(&[true; 4]), &data).unwrap();
        assert_eq!(rows[0].1.as_ref().unwrap()[3], Some(Value::Int(3)));
    }

    #[test]
    fn mysql_binary_json() {
        assert_eq!(decode_json_binary(&[0x04, 0x01]).unwrap(), "true");
        assert_eq!(decode_json_binary(&[]).unwrap(), "null");
        // {"a": 1}: small object, 1 element, 12 bytes; key at 11 (1 byte); int16 1 inline.
        let doc = [0x00, 0x01, 0x00, 0x0C, 0x00, 0x0B, 0x00, 0x01, 0x00, 0x05, 0x01, 0x00, b'a'];
        assert_eq!(decode_json_binary(&doc).unwrap(), "{\"a\":1}");
        assert_eq!(
            one(Layout::Blob { len_bytes: 4 }, ValueKind::JsonBinary, &[2, 0, 0, 0, 0x04, 0x02]).unwrap(),
            Value::Json("false".into())
        );
        assert!(decode_json_binary(&[0x00, 0x05]).is_err());
    }

    #[test]
    fn protocol_values_match_binlog_forms() {
        use mysql_common::value::Value as M;
        assert_eq!(from_protocol(&ValueKind::UInt64, M::UInt(u64::MAX)).unwrap(), Value::UInt(u64::MAX));
        assert_eq!(from_protocol(&ValueKind::Float32, M::Float(0.1)).unwrap(), Value::Float(0.1));
        assert_eq!(
            from_protocol(&ValueKind::Timestamp, M::Date(2024, 1, 2, 3, 4, 5, 600_000)).unwrap(),
            Value::TimestampTz("2024-01-02 03:04:05.6+00".into())
        );
        assert_eq!(
            from_protocol(&ValueKind::DateTime, M::Date(0, 0, 0, 0, 0, 0, 0)).unwrap(),
            Value::Timestamp("0000-00-00 00:00:00".into())
        );
        assert_eq!(
            from_protocol(&ValueKind::Time, M::Time(true, 1, 2, 3, 4, 0)).unwrap(),
            Value::Time("-26:03:04".into())
        );
        assert_eq!(
            from_protocol(&ValueKind::Bytes { pad_to: Some(3) }, M::Bytes(vec![1])).unwrap(),
            Value::Bytes(vec![1, 0, 0])
        );
        assert_eq!(
            from_protocol(&ValueKind::JsonBinary, M::Bytes(b"{\"a\": [1, 2]}".to_vec())).unwrap(),
            Value::Json("{\"a\":[1,2]}".into())
        );
        assert!(from_protocol(&ValueKind::Date, M::Int(1)).is_err());
    }
}
