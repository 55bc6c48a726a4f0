//! Decoder for pgoutput logical replication messages (protocol version 1),
//! i.e. the payload of each XLogData frame received from the walsender.
//!
//! Pure and allocation-light: tuple values are zero-copy slices of the input
//! buffer, because this runs for every row change that flows through the
//! daemon. The input comes from the network, so every length is checked and
//! malformed input is reported as a [`DecodeError`] rather than a panic.
//! Streaming (v2) and two-phase (v3) messages are rejected: we only ever
//! request `proto_version '1'`.

use std::fmt;

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    Begin {
        final_lsn: u64,
        commit_time_micros: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        commit_time_micros: i64,
    },
    Origin {
        commit_lsn: u64,
        name: String,
    },
    Relation(RelationBody),
    Type {
        id: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation_id: u32,
        new: TupleData,
    },
    Update {
        relation_id: u32,
        /// Present only when the key changed ('K') or the table has
        /// `REPLICA IDENTITY FULL` ('O').
        old: Option<OldTuple>,
        new: TupleData,
    },
    Delete {
        relation_id: u32,
        old: OldTuple,
    },
    Truncate {
        /// Bit 1 = CASCADE, bit 2 = RESTART IDENTITY.
        options: u8,
        relation_ids: Vec<u32>,
    },
    /// `pg_logical_emit_message` output.
    Message {
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Bytes,
    },
}

pub const TRUNCATE_CASCADE: u8 = 1;
pub const TRUNCATE_RESTART_IDENTITY: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// Only the replica identity columns; the others are `Null`.
    Key(TupleData),
    /// The whole old row (`REPLICA IDENTITY FULL`).
    Full(TupleData),
}

impl OldTuple {
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationBody {
    pub id: u32,
    /// Empty for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Bit 1 = part of the replica identity key.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

impl RelationColumn {
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData(pub Vec<TupleValue>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    Null,
    /// A TOASTed value that did not change; its content is not sent.
    UnchangedToast,
    /// Text output of the type, as a slice of the input buffer.
    Text(Bytes),
    /// Binary send format (only with the `binary` option).
    Binary(Bytes),
}

/// Why a message could not be decoded, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// First byte of the message, `None` for empty input.
    pub msg_type: Option<u8>,
    /// Byte offset (from the message type byte) where decoding failed.
    pub offset: usize,
    /// Total length of the message.
    pub len: usize,
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.msg_type {
            Some(t) => write!(f, "cannot decode pgoutput {} message", type_name(t))?,
            None => f.write_str("cannot decode pgoutput message")?,
        }
        write!(f, " at byte offset {} of {}: {}", self.offset, self.len, self.reason)
    }
}

impl std::error::Error for DecodeError {}

fn type_name(t: u8) -> String {
    let name = match t {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        _ => "unknown",
    };
    format!("{name} ({})", show_byte(t))
}

fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        format!("0x{b:02x}")
    }
}

/// Bounds-checked big-endian cursor over one message.
struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    msg_type: u8,
}

impl<'a> Reader<'a> {
    fn err_at(&self, offset: usize, reason: impl Into<String>) -> DecodeError {
        DecodeError { msg_type: Some(self.msg_type), offset, len: self.data.len(), reason: reason.into() }
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn short(&self, what: &str, need: usize) -> DecodeError {
        self.err_at(self.pos, format!("expected {what} ({need} bytes) but only {} bytes remain", self.remaining()))
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        match self.data.get(self.pos..).and_then(|rest| rest.first_chunk::<N>()) {
            Some(a) => {
                self.pos += N;
                Ok(*a)
            }
            None => Err(self.short(what, N)),
        }
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }

    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// Int32 length that must be non-negative.
    fn len32(&mut self, what: &str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.i32(what)?;
        usize::try_from(n).map_err(|_| self.err_at(at, format!("negative {what} {n}")))
    }

    fn slice(&mut self, n: usize, what: &str) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(self.short(what, n));
        }
        let s = self.data.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(s)
    }

    fn cstr(&mut self, what: &str) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = self.data.get(start..).unwrap_or_default();
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(self.err_at(start, format!("expected NUL-terminated {what} but found no terminator")));
        };
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|e| self.err_at(start + e.valid_up_to(), format!("{what} is not valid UTF-8")))?;
        self.pos = start + nul + 1;
        Ok(s.to_owned())
    }

    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let n = usize::from(self.u16("tuple column count")?);
        // Each value takes at least one byte; capping the reservation keeps
        // garbage counts from allocating megabytes.
        let mut values = Vec::with_capacity(n.min(self.remaining()));
        for col in 0..n {
            let at = self.pos;
            let value = match self.u8("tuple value kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.len32("text value length")?;
                    TupleValue::Text(self.slice(len, "text value")?)
                }
                b'b' => {
                    let len = self.len32("binary value length")?;
                    TupleValue::Binary(self.slice(len, "binary value")?)
                }
                k => {
                    return Err(self.err_at(
                        at,
                        format!(
                            "unknown tuple value kind {} for column {col} (expected 'n', 'u', 't' or 'b')",
                            show_byte(k)
                        ),
                    ))
                }
            };
            values.push(value);
        }
        Ok(TupleData(values))
    }

    /// Reads the byte that must introduce the new tuple.
    fn expect_new_marker(&mut self) -> Result<(), DecodeError> {
        let at = self.pos;
        match self.u8("new tuple marker 'N'")? {
            b'N' => Ok(()),
            b => Err(self.err_at(at, format!("expected new tuple marker 'N', found {}", show_byte(b)))),
        }
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(self.err_at(self.pos, format!("{} unexpected trailing bytes", self.remaining())))
        }
    }
}

/// Decodes one pgoutput (proto_version 1) message.
pub fn decode(data: &Bytes) -> Result<LogicalMessage, DecodeError> {
    let Some(&msg_type) = data.first() else {
        return Err(DecodeError {
            msg_type: None,
            offset: 0,
            len: 0,
            reason: "expected message type byte, got empty message".to_owned(),
        });
    };
    let mut r = Reader { data, pos: 1, msg_type };
    let msg = match msg_type {
        b'B' => LogicalMessage::Begin {
            final_lsn: r.u64("final LSN")?,
            commit_time_micros: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
        },
        b'C' => LogicalMessage::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit LSN")?,
            end_lsn: r.u64("end LSN")?,
            commit_time_micros: r.i64("commit timestamp")?,
        },
        b'O' => LogicalMessage::Origin { commit_lsn: r.u64("origin commit LSN")?, name: r.cstr("origin name")? },
        b'R' => {
            let id = r.u32("relation OID")?;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = r.u8("replica identity setting")?;
            let n = usize::from(r.u16("column count")?);
            // Smallest column: flags + empty name + type OID + typmod.
            let mut columns = Vec::with_capacity(n.min(r.remaining() / 10));
            for _ in 0..n {
                columns.push(RelationColumn {
                    flags: r.u8("column flags")?,
                    name: r.cstr("column name")?,
                    type_oid: r.u32("column type OID")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            LogicalMessage::Relation(RelationBody { id, namespace, name, replica_identity, columns })
        }
        b'Y' => LogicalMessage::Type {
            id: r.u32("type OID")?,
            namespace: r.cstr("type namespace")?,
            name: r.cstr("type name")?,
        },
        b'I' => {
            let relation_id = r.u32("relation OID")?;
            r.expect_new_marker()?;
            LogicalMessage::Insert { relation_id, new: r.tuple()? }
        }
        b'U' => {
            let relation_id = r.u32("relation OID")?;
            let at = r.pos;
            let old = match r.u8("tuple marker 'K', 'O' or 'N'")? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                b => return Err(r.err_at(at, format!("expected tuple marker 'K', 'O' or 'N', found {}", show_byte(b)))),
            };
            if old.is_some() {
                r.expect_new_marker()?;
            }
            LogicalMessage::Update { relation_id, old, new: r.tuple()? }
        }
        b'D' => {
            let relation_id = r.u32("relation OID")?;
            let at = r.pos;
            let old = match r.u8("old tuple marker 'K' or 'O'")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                b => return Err(r.err_at(at, format!("expected old tuple marker 'K' or 'O', found {}", show_byte(b)))),
            };
            LogicalMessage::Delete { relation_id, old }
        }
        b'T' => {
            let n = r.len32("relation count")?;
            let options = r.u8("truncate options")?;
            let mut relation_ids = Vec::with_capacity(n.min(r.remaining() / 4));
            for _ in 0..n {
                relation_ids.push(r.u32("relation OID")?);
            }
            LogicalMessage::Truncate { options, relation_ids }
        }
        b'M' => {
            let flags = r.u8("message flags")?;
            let lsn = r.u64("message LSN")?;
            let prefix = r.cstr("message prefix")?;
            let len = r.len32("message content length")?;
            LogicalMessage::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.slice(len, "message content")?,
            }
        }
        b'S' | b'E' | b'c' | b'A' => {
            return Err(r.err_at(0, "streaming-transaction message (proto_version 2) is not supported"))
        }
        b'b' | b'P' | b'K' | b'r' | b'p' => {
            return Err(r.err_at(0, "two-phase commit message (proto_version 3) is not supported"))
        }
        t => return Err(r.err_at(0, format!("unknown message type {}", show_byte(t)))),
    };
    r.finish()?;
    Ok(msg)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---- test-only encoder ----------------------------------------------

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn put_tuple(out: &mut Vec<u8>, t: &TupleData) {
        out.extend_from_slice(&(t.0.len() as u16).to_be_bytes());
        for v in &t.0 {
            match v {
                TupleValue::Null => out.push(b'n'),
                TupleValue::UnchangedToast => out.push(b'u'),
                TupleValue::Text(b) | TupleValue::Binary(b) => {
                    out.push(if matches!(v, TupleValue::Text(_)) { b't' } else { b'b' });
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }

    fn put_old(out: &mut Vec<u8>, o: &OldTuple) {
        match o {
            OldTuple::Key(t) => {
                out.push(b'K');
                put_tuple(out, t);
            }
            OldTuple::Full(t) => {
                out.push(b'O');
                put_tuple(out, t);
            }
        }
    }

    fn encode(m: &LogicalMessage) -> Vec<u8> {
        let mut o = Vec::new();
        match m {
            LogicalMessage::Begin { final_lsn, commit_time_micros, xid } => {
                o.push(b'B');
                o.extend_from_slice(&final_lsn.to_be_bytes());
                o.extend_from_slice(&commit_time_micros.to_be_bytes());
                o.extend_from_slice(&xid.to_be_bytes());
            }
            LogicalMessage::Commit { flags, commit_lsn, end_lsn, commit_time_micros } => {
                o.push(b'C');
                o.push(*flags);
                o.extend_from_slice(&commit_lsn.to_be_bytes());
                o.extend_from_slice(&end_lsn.to_be_bytes());
                o.extend_from_slice(&commit_time_micros.to_be_bytes());
            }
            LogicalMessage::Origin { commit_lsn, name } => {
                o.push(b'O');
                o.extend_from_slice(&commit_lsn.to_be_bytes());
                put_str(&mut o, name);
            }
            LogicalMessage::Relation(r) => {
                o.push(b'R');
                o.extend_from_slice(&r.id.to_be_bytes());
                put_str(&mut o, &r.namespace);
                put_str(&mut o, &r.name);
                o.push(r.replica_identity);
                o.extend_from_slice(&(r.columns.len() as u16).to_be_bytes());
                for c in &r.columns {
                    o.push(c.flags);
                    put_str(&mut o, &c.name);
                    o.extend_from_slice(&c.type_oid.to_be_bytes());
                    o.extend_from_slice(&c.type_modifier.to_be_bytes());
                }
            }
            LogicalMessage::Type { id, namespace, name } => {
                o.push(b'Y');
                o.extend_from_slice(&id.to_be_bytes());
                put_str(&mut o, namespace);
                put_str(&mut o, name);
            }
            LogicalMessage::Insert { relation_id, new } => {
                o.push(b'I');
                o.extend_from_slice(&relation_id.to_be_bytes());
                o.push(b'N');
                put_tuple(&mut o, new);
            }
            LogicalMessage::Update { relation_id, old, new } => {
                o.push(b'U');
                o.extend_from_slice(&relation_id.to_be_bytes());
                if let Some(old) = old {
                    put_old(&mut o, old);
                }
                o.push(b'N');
                put_tuple(&mut o, new);
            }
            LogicalMessage::Delete { relation_id, old } => {
                o.push(b'D');
                o.extend_from_slice(&relation_id.to_be_bytes());
                put_old(&mut o, old);
            }
            LogicalMessage::Truncate { options, relation_ids } => {
                o.push(b'T');
                o.extend_from_slice(&(relation_ids.len() as i32).to_be_bytes());
                o.push(*options);
                for id in relation_ids {
                    o.extend_from_slice(&id.to_be_bytes());
                }
            }
            LogicalMessage::Message { transactional, lsn, prefix, content } => {
                o.push(b'M');
                o.push(u8::from(*transactional));
                o.extend_from_slice(&lsn.to_be_bytes());
                put_str(&mut o, prefix);
                o.extend_from_slice(&(content.len() as i32).to_be_bytes());
                o.extend_from_slice(content);
            }
        }
        o
    }

    fn dec(bytes: &[u8]) -> Result<LogicalMessage, DecodeError> {
        decode(&Bytes::copy_from_slice(bytes))
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn roundtrip(m: LogicalMessage) {
        assert_eq!(dec(&encode(&m)).unwrap(), m);
    }

    // ---- hand-built examples --------------------------------------------

    #[test]
    fn begin_and_commit() {
        // Bytes as a PG 15 walsender sends them for BEGIN of xid 740.
        let mut raw = vec![b'B'];
        raw.extend_from_slice(&0x0000_0001_6B37_4D48u64.to_be_bytes());
        raw.extend_from_slice(&700_000_000_000_000i64.to_be_bytes());
        raw.extend_from_slice(&740u32.to_be_bytes());
        assert_eq!(
            dec(&raw).unwrap(),
            LogicalMessage::Begin {
                final_lsn: 0x0000_0001_6B37_4D48,
                commit_time_micros: 700_000_000_000_000,
                xid: 740,
            }
        );
        roundtrip(LogicalMessage::Commit { flags: 0, commit_lsn: 1, end_lsn: 2, commit_time_micros: -3 });
    }

    #[test]
    fn origin_type_truncate_message() {
        roundtrip(LogicalMessage::Origin { commit_lsn: 77, name: "node_a".into() });
        roundtrip(LogicalMessage::Type { id: 16_400, namespace: "public".into(), name: "mood".into() });
        roundtrip(LogicalMessage::Truncate {
            options: TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY,
            relation_ids: vec![16_384, 16_390],
        });
        roundtrip(LogicalMessage::Message {
            transactional: true,
            lsn: 5,
            prefix: "tidewater".into(),
            content: Bytes::from_static(b"\x00\x01hello"),
        });
    }

    #[test]
    fn relation() {
        let m = LogicalMessage::Relation(RelationBody {
            id: 16_384,
            namespace: "public".into(),
            name: "orders".into(),
            replica_identity: b'd',
            columns: vec![
                RelationColumn { flags: 1, name: "id".into(), type_oid: 23, type_modifier: -1 },
                RelationColumn { flags: 0, name: "note".into(), type_oid: 1043, type_modifier: 104 },
            ],
        });
        roundtrip(m.clone());
        let LogicalMessage::Relation(r) = m else { unreachable!() };
        assert!(r.columns[0].is_key());
        assert!(!r.columns[1].is_key());
    }

    #[test]
    fn insert_update_delete() {
        let row = TupleData(vec![
            text("1"),
            TupleValue::Null,
            TupleValue::UnchangedToast,
            TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 1])),
            text(""),
        ]);
        roundtrip(LogicalMessage::Insert { relation_id: 9, new: row.clone() });
        roundtrip(LogicalMessage::Update { relation_id: 9, old: None, new: row.clone() });
        roundtrip(LogicalMessage::Update {
            relation_id: 9,
            old: Some(OldTuple::Key(TupleData(vec![text("1")]))),
            new: row.clone(),
        });
        roundtrip(LogicalMessage::Update { relation_id: 9, old: Some(OldTuple::Full(row.clone())), new: row.clone() });
        roundtrip(LogicalMessage::Delete {
            relation_id: 9,
            old: OldTuple::Key(TupleData(vec![text("1"), TupleValue::Null])),
        });
        roundtrip(LogicalMessage::Delete { relation_id: 9, old: OldTuple::Full(row) });
        roundtrip(LogicalMessage::Insert { relation_id: 1, new: TupleData(vec![]) });
    }

    #[test]
    fn text_values_are_zero_copy() {
        let enc =
            Bytes::from(encode(&LogicalMessage::Insert { relation_id: 1, new: TupleData(vec![text("hello world")]) }));
        let LogicalMessage::Insert { new, .. } = decode(&enc).unwrap() else { panic!("not an insert") };
        let TupleValue::Text(t) = &new.0[0] else { panic!("not text") };
        let start = enc.as_ptr() as usize;
        let p = t.as_ptr() as usize;
        assert!(p >= start && p + t.len() <= start + enc.len());
    }

    #[test]
    fn error_messages_are_descriptive() {
        let e = dec(b"").unwrap_err();
        assert_eq!(e.msg_type, None);
        assert!(e.to_string().contains("empty"), "{e}");

        let e = dec(b"Z").unwrap_err();
        assert!(e.to_string().contains("unknown message type 'Z'"), "{e}");

        let e = dec(b"S\0\0\0\x01\x01").unwrap_err();
        assert!(e.to_string().contains("streaming"), "{e}");

        // Begin cut inside the commit timestamp.
        let e = dec(&[b'B', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap_err();
        assert_eq!((e.msg_type, e.offset), (Some(b'B'), 9));
        let s = e.to_string();
        assert!(s.contains("Begin") && s.contains("commit timestamp") && s.contains("offset 9"), "{s}");

        // Insert with unknown value kind in column 1.
        let e = dec(b"I\0\0\0\x01N\0\x02nx").unwrap_err();
        assert_eq!(e.offset, 9);
        assert!(e.to_string().contains("column 1"), "{e}");

        // Negative text length.
        let e = dec(b"I\0\0\0\x01N\0\x01t\xff\xff\xff\xff").unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");

        // Missing 'N' marker after old key tuple.
        let e = dec(b"U\0\0\0\x01K\0\0X\0\0").unwrap_err();
        assert!(e.to_string().contains("'N'"), "{e}");

        // Invalid UTF-8 in a name.
        let e = dec(b"Y\0\0\0\x01pub\xfflic\0t\0").unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");
        assert_eq!(e.offset, 8);

        // Trailing garbage.
        let mut b = encode(&LogicalMessage::Origin { commit_lsn: 1, name: "x".into() });
        b.push(0);
        let e = dec(&b).unwrap_err();
        assert!(e.to_string().contains("trailing"), "{e}");
    }

    #[test]
    fn huge_counts_do_not_preallocate() {
        // Claims 65535 columns / 2^31-1 relations but has no data: must fail
        // quickly rather than reserve gigabytes.
        assert!(dec(b"I\0\0\0\x01N\xff\xff").is_err());
        assert!(dec(b"T\x7f\xff\xff\xff\0").is_err());
        assert!(dec(b"R\0\0\0\x01\0\0d\xff\xff").is_err());
    }

    // ---- property tests -------------------------------------------------

    fn name() -> impl Strategy<Value = String> {
        "[^\\x00]{0,10}"
    }

    fn bytes_val(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn tuple_value() -> impl Strategy<Value = TupleValue> {
        prop_oneof![
            Just(TupleValue::Null),
            Just(TupleValue::UnchangedToast),
            bytes_val(24).prop_map(TupleValue::Text),
            bytes_val(12).prop_map(TupleValue::Binary),
        ]
    }

    fn tuple() -> impl Strategy<Value = TupleData> {
        proptest::collection::vec(tuple_value(), 0..8).prop_map(TupleData)
    }

    fn old_tuple() -> impl Strategy<Value = OldTuple> {
        prop_oneof![tuple().prop_map(OldTuple::Key), tuple().prop_map(OldTuple::Full)]
    }

    fn column() -> impl Strategy<Value = RelationColumn> {
        (any::<u8>(), name(), any::<u32>(), any::<i32>())
            .prop_map(|(flags, name, type_oid, type_modifier)| RelationColumn { flags, name, type_oid, type_modifier })
    }

    fn message() -> impl Strategy<Value = LogicalMessage> {
        prop_oneof![
            (any::<u64>(), any::<i64>(), any::<u32>())
                .prop_map(|(final_lsn, t, xid)| { LogicalMessage::Begin { final_lsn, commit_time_micros: t, xid } }),
            (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(flags, commit_lsn, end_lsn, t)| {
                LogicalMessage::Commit { flags, commit_lsn, end_lsn, commit_time_micros: t }
            }),
            (any::<u64>(), name()).prop_map(|(commit_lsn, name)| LogicalMessage::Origin { commit_lsn, name }),
            (any::<u32>(), name(), name(), any::<u8>(), proptest::collection::vec(column(), 0..6)).prop_map(
                |(id, namespace, name, replica_identity, columns)| {
                    LogicalMessage::Relation(RelationBody { id, namespace, name, replica_identity, columns })
                }
            ),
            (any::<u32>(), name(), name())
                .prop_map(|(id, namespace, name)| { LogicalMessage::Type { id, namespace, name } }),
            (any::<u32>(), tuple()).prop_map(|(relation_id, new)| LogicalMessage::Insert { relation_id, new }),
            (any::<u32>(), proptest::option::of(old_tuple()), tuple())
                .prop_map(|(relation_id, old, new)| LogicalMessage::Update { relation_id, old, new }),
            (any::<u32>(), old_tuple()).prop_map(|(relation_id, old)| LogicalMessage::Delete { relation_id, old }),
            (any::<u8>(), proptest::collection::vec(any::<u32>(), 0..8))
                .prop_map(|(options, relation_ids)| LogicalMessage::Truncate { options, relation_ids }),
            (any::<bool>(), any::<u64>(), name(), bytes_val(32)).prop_map(|(transactional, lsn, prefix, content)| {
                LogicalMessage::Message { transactional, lsn, prefix, content }
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = dec(&data);
        }

        #[test]
        fn random_bodies_with_valid_type_never_panic(
            t in proptest::sample::select(b"BCORYIUDTMSEcA".to_vec()),
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut data = vec![t];
            data.extend(body);
            let _ = dec(&data);
        }

        #[test]
        fn valid_messages_roundtrip(m in message()) {
            prop_assert_eq!(dec(&encode(&m)).unwrap(), m);
        }

        #[test]
        fn every_truncation_is_an_error(m in message()) {
            let enc = encode(&m);
            for cut in 0..enc.len() {
                prop_assert!(dec(&enc[..cut]).is_err(), "prefix of {} bytes decoded", cut);
            }
        }

        #[test]
        fn mutations_never_panic(
            m in message(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let mut enc = encode(&m);
            for (i, b) in edits {
                let i = i % enc.len();
                enc[i] = b;
            }
            let _ = dec(&enc);
        }
    }
}
