//! Postgres `COPY` text format: parsing the lines a source sends, escaping the fields a
//! target is sent.

use tidewater_core::{ColumnType, Value};

use crate::types::decode_text;

/// Parses one line of `COPY ... TO STDOUT` text format.
pub(crate) fn parse_line(line: &[u8], kinds: &[ColumnType]) -> Result<Vec<Value>, String> {
    let mut values = Vec::with_capacity(kinds.len());
    let mut field = Vec::new();
    for (n, raw) in line.split(|&b| b == b'\t').enumerate() {
        let kind = kinds.get(n).ok_or_else(|| format!("more fields than the {} columns", kinds.len()))?;
        if raw == b"\\N" {
            values.push(Value::Null);
            continue;
        }
        let text: &[u8] = if raw.contains(&b'\\') {
            unescape(raw, &mut field)?;
            &field
        } else {
            raw
        };
        values.push(decode_text(kind, text)?);
    }
    if values.len() != kinds.len() {
        return Err(format!("{} fields for {} columns", values.len(), kinds.len()));
    }
    Ok(values)
}

pub(crate) fn unescape(raw: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&next) = raw.get(i) else {
            return Err("dangling backslash".into());
        };
        i += 1;
        match next {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(value as u8);
            }
            b'x' => {
                let mut value = 0u8;
                let mut digits = 0;
                while digits < 2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d as u8;
                            i += 1;
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    out.push(b'x');
                } else {
                    out.push(value);
                }
            }
            other => out.push(other),
        }
    }
    Ok(())
}

/// Appends `text` as a `COPY` text-format field (backslash, tab, newline and carriage
/// return escaped).
pub(crate) fn escape(out: &mut bytes::BytesMut, text: &[u8]) {
    let mut rest = text;
    while let Some(at) = rest.iter().position(|&b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(match rest[at] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_fields_parse_back() {
        let mut out = bytes::BytesMut::new();
        escape(&mut out, b"a\tb\\c\nd\re");
        assert_eq!(&out[..], b"a\\tb\\\\c\\nd\\re");
        let mut back = Vec::new();
        unescape(&out, &mut back).unwrap();
        assert_eq!(back, b"a\tb\\c\nd\re");
    }
}
