//! Binlog event details mysql_common leaves to us: MariaDB's own event types, the rotate
//! quirk, table-map and rows-event fields, and containment of decoder panics.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use mysql_async::binlog::events::{Event, OptionalMetadataField, RowsEventData, TableMapEvent};

use crate::binlog_pos::Gtid;
use crate::decode::Layout;

/// Binlog event type codes used here.
pub mod kind {
    pub const QUERY: u8 = 2;
    pub const STOP: u8 = 3;
    pub const ROTATE: u8 = 4;
    pub const FORMAT_DESCRIPTION: u8 = 15;
    pub const XID: u8 = 16;
    pub const TABLE_MAP: u8 = 19;
    pub const WRITE_ROWS_V1: u8 = 23;
    pub const UPDATE_ROWS_V1: u8 = 24;
    pub const DELETE_ROWS_V1: u8 = 25;
    pub const INCIDENT: u8 = 26;
    pub const HEARTBEAT: u8 = 27;
    pub const WRITE_ROWS: u8 = 30;
    pub const UPDATE_ROWS: u8 = 31;
    pub const DELETE_ROWS: u8 = 32;
    pub const XA_PREPARE: u8 = 38;
    pub const PARTIAL_UPDATE_ROWS: u8 = 39;
    pub const HEARTBEAT_V2: u8 = 41;
    // MariaDB
    pub const ANNOTATE_ROWS: u8 = 160;
    pub const BINLOG_CHECKPOINT: u8 = 161;
    pub const MARIADB_GTID: u8 = 162;
    pub const MARIADB_GTID_LIST: u8 = 163;
    pub const START_ENCRYPTION: u8 = 164;
    pub const QUERY_COMPRESSED: u8 = 165;
    pub const WRITE_ROWS_COMPRESSED_V1: u8 = 166;
    pub const DELETE_ROWS_COMPRESSED: u8 = 171;
}

/// MariaDB GTID event flags (`Gtid_log_event::FL_*`).
pub const FL_STANDALONE: u8 = 1;
pub const FL_PREPARED_XA: u8 = 64;
pub const FL_COMPLETED_XA: u8 = 128;

/// A MariaDB GTID event (type 162): it starts an event group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MariaGtidEvent {
    pub gtid: Gtid,
    pub flags: u8,
}

impl MariaGtidEvent {
    /// A group without BEGIN/COMMIT: one statement (DDL) that is its own transaction.
    pub fn standalone(&self) -> bool {
        self.flags & FL_STANDALONE != 0
    }

    pub fn xa(&self) -> bool {
        self.flags & (FL_PREPARED_XA | FL_COMPLETED_XA) != 0
    }
}

/// Parses a MariaDB GTID event body: `seq_no` u64, `domain_id` u32, `flags2` u8 (then
/// optional fields we do not need). The server id is the event header's.
pub fn parse_mariadb_gtid(data: &[u8], server_id: u32) -> Result<MariaGtidEvent, String> {
    if data.len() < 13 {
        return Err(format!("GTID event of {} bytes, at least 13 expected", data.len()));
    }
    let seq = u64::from_le_bytes([data[0], data[1], data[2], data[3], data[4], data[5], data[6], data[7]]);
    let domain = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    Ok(MariaGtidEvent { gtid: Gtid { domain, server: server_id, seq }, flags: data[12] })
}

/// Parses a MariaDB GTID_LIST event body (type 163): count (low 28 bits), then
/// (domain u32, server u32, seq u64) per entry.
pub fn parse_gtid_list(data: &[u8]) -> Result<Vec<Gtid>, String> {
    let head: [u8; 4] = data.get(..4).and_then(|s| s.try_into().ok()).ok_or("GTID list event too short")?;
    let count = (u32::from_le_bytes(head) & 0x0FFF_FFFF) as usize;
    let body = &data[4..];
    if body.len() < count * 16 {
        return Err(format!("GTID list of {count} entries in {} bytes", body.len()));
    }
    Ok(body
        .chunks_exact(16)
        .take(count)
        .map(|c| Gtid {
            domain: u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            server: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            seq: u64::from_le_bytes([c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15]]),
        })
        .collect())
}

/// The file and position a ROTATE event names. The artificial ROTATE the server sends
/// before the first FORMAT_DESCRIPTION is read before the reader knows the checksum
/// algorithm, so with checksums on its 4 CRC bytes are still at the end of the name
/// (mysql_async issue 189): `checksum_in_data` trims them.
pub fn parse_rotate(data: &[u8], checksum_in_data: bool) -> Result<(String, u64), String> {
    if data.len() < 8 {
        return Err(format!("ROTATE event of {} bytes", data.len()));
    }
    let pos = u64::from_le_bytes([data[0], data[1], data[2], data[3], data[4], data[5], data[6], data[7]]);
    let mut name = &data[8..];
    if checksum_in_data {
        name = &name[..name.len().saturating_sub(4)];
    }
    let name = std::str::from_utf8(name).map_err(|_| "ROTATE names a file that is not UTF-8".to_string())?;
    if name.is_empty() {
        return Err("ROTATE names no file".into());
    }
    Ok((name.to_string(), pos))
}

/// Runs pure decoding that a library may panic in (a truncated or unexpected event) and
/// turns a panic into an error naming it.
pub fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_text(p.as_ref()))
}

/// [`contain`] for a future (the binlog stream decodes events while it is polled).
pub async fn contain_future<F: Future>(f: F) -> Result<F::Output, String> {
    AssertUnwindSafe(f).catch_unwind().await.map_err(|p| panic_text(p.as_ref()))
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    format!("the binlog decoder panicked: {msg}")
}

/// What a table map says about its table, decoded once per distinct table map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMapInfo {
    pub table_id: u64,
    pub database: String,
    pub table: String,
    pub layouts: Vec<Layout>,
    /// Column names (binlog_row_metadata = FULL only).
    pub names: Option<Vec<String>>,
    /// ENUM and SET labels, per ENUM (resp. SET) column in column order (FULL only).
    pub enum_labels: Option<Vec<Vec<String>>>,
    pub set_labels: Option<Vec<Vec<String>>>,
}

fn label_text(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(s) => s.to_string(),
        Err(_) => crate::decode::Charset::Latin1.decode(raw).unwrap_or_default(),
    }
}

/// Reads the table map event's fields (call inside [`contain`]).
pub fn table_map_info(event: &Event) -> Result<TableMapInfo, String> {
    let tme: TableMapEvent<'_> = event.read_event().map_err(|e| format!("undecodable table map ({e})"))?;
    let count = usize::try_from(tme.columns_count()).map_err(|_| "absurd column count")?;
    let mut layouts = Vec::with_capacity(count);
    for i in 0..count {
        let code = match tme.get_raw_column_type(i) {
            Ok(Some(t)) => t as u8,
            Ok(None) => return Err(format!("table map lacks the type of column {}", i + 1)),
            Err(e) => {
                return Err(format!(
                "column {} has a type the decoder does not know ({e}; MariaDB COMPRESSED columns are not supported)",
                i + 1
            ))
            }
        };
        let meta = tme.get_column_metadata(i).unwrap_or(&[]);
        layouts.push(Layout::from_table_map(code, meta).map_err(|e| format!("column {}: {e}", i + 1))?);
    }
    let (mut names, mut enum_labels, mut set_labels) = (None, None, None);
    for field in tme.iter_optional_meta() {
        match field.map_err(|e| format!("undecodable table map metadata ({e})"))? {
            OptionalMetadataField::ColumnName(n) => {
                let list = n
                    .iter_names()
                    .map(|r| r.map(|c| c.name().into_owned()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("undecodable column names ({e})"))?;
                names = Some(list);
            }
            OptionalMetadataField::EnumStrValue(v) => {
                let mut all = Vec::new();
                for column in v.iter_values() {
                    let column = column.map_err(|e| format!("undecodable ENUM labels ({e})"))?;
                    all.push(column.values().iter().map(|l| label_text(l.value_raw())).collect());
                }
                enum_labels = Some(all);
            }
            OptionalMetadataField::SetStrValue(v) => {
                let mut all = Vec::new();
                for column in v.iter_values() {
                    let column = column.map_err(|e| format!("undecodable SET labels ({e})"))?;
                    all.push(column.values().iter().map(|l| label_text(l.value_raw())).collect());
                }
                set_labels = Some(all);
            }
            _ => {}
        }
    }
    if names.as_ref().is_some_and(|n| n.len() != count) {
        return Err("table map names a different number of columns than it has".into());
    }
    Ok(TableMapInfo {
        table_id: tme.table_id(),
        database: tme.database_name().into_owned(),
        table: tme.table_name().into_owned(),
        layouts,
        names,
        enum_labels,
        set_labels,
    })
}

/// A rows event's fields, borrowed from the event.
pub struct RowsFields {
    pub table_id: u64,
    pub before: Option<Vec<bool>>,
    pub after: Option<Vec<bool>>,
    /// The row images.
    pub rows: Vec<u8>,
}

/// Reads a rows event's fields (call inside [`contain`]).
pub fn rows_fields(event: &Event) -> Result<RowsFields, String> {
    let data = event.read_data().map_err(|e| format!("undecodable rows event ({e})"))?;
    let Some(mysql_async::binlog::events::EventData::RowsEvent(rows)) = data else {
        return Err("not a rows event".into());
    };
    Ok(rows_event_fields(&rows))
}

fn rows_event_fields(rows: &RowsEventData<'_>) -> RowsFields {
    RowsFields {
        table_id: rows.table_id(),
        before: rows.columns_before_image().map(|b| b.iter().by_vals().collect()),
        after: rows.columns_after_image().map(|b| b.iter().by_vals().collect()),
        rows: rows.rows_data().to_vec(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mysql_async::binlog::events::FormatDescriptionEvent;
    use mysql_async::binlog::BinlogVersion;

    #[test]
    fn mariadb_gtid_and_list() {
        let mut data = 42u64.to_le_bytes().to_vec();
        data.extend_from_slice(&3u32.to_le_bytes());
        data.push(FL_STANDALONE | 32);
        let e = parse_mariadb_gtid(&data, 7).unwrap();
        assert_eq!(e.gtid, Gtid { domain: 3, server: 7, seq: 42 });
        assert!(e.standalone());
        assert!(!e.xa());
        assert!(parse_mariadb_gtid(&data[..12], 7).is_err());

        let mut list = (2u32 | (1 << 28)).to_le_bytes().to_vec();
        for (d, s, n) in [(0u32, 1u32, 10u64), (5, 2, 7)] {
            list.extend_from_slice(&d.to_le_bytes());
            list.extend_from_slice(&s.to_le_bytes());
            list.extend_from_slice(&n.to_le_bytes());
        }
        assert_eq!(
            parse_gtid_list(&list).unwrap(),
            vec![Gtid { domain: 0, server: 1, seq: 10 }, Gtid { domain: 5, server: 2, seq: 7 }]
        );
        assert!(parse_gtid_list(&list[..20]).is_err());
    }

    #[test]
    fn rotate_names_lose_their_crc() {
        let mut data = 4u64.to_le_bytes().to_vec();
        data.extend_from_slice(b"binlog.000007");
        assert_eq!(parse_rotate(&data, false).unwrap(), ("binlog.000007".to_string(), 4));
        data.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(parse_rotate(&data, true).unwrap(), ("binlog.000007".to_string(), 4));
        assert!(parse_rotate(&data[..6], false).is_err());
    }

    /// A truncated event (its header claims more bytes than there are) makes
    /// mysql_common's `Event::read` panic; containment turns that into an error.
    #[test]
    fn decoder_panics_are_contained() {
        let fde = FormatDescriptionEvent::new(BinlogVersion::Version4);
        // Header: timestamp, type XID, server id, event size 200 (only 23 bytes follow), log pos, flags.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.push(kind::XID);
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&200u32.to_le_bytes());
        bytes.extend_from_slice(&500u32.to_le_bytes());
        bytes.extend_from_slice(&0u16.to_le_bytes());
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        let err = contain(|| Event::read(&fde, &bytes[..])).unwrap_err();
        assert!(err.contains("panicked"), "{err}");
    }

    #[tokio::test]
    async fn future_panics_are_contained() {
        let r = contain_future(async {
            let v: Vec<u8> = Vec::new();
            v[3]
        })
        .await;
        assert!(r.unwrap_err().contains("index out of bounds"));
        assert_eq!(contain_future(async { 5 }).await.unwrap(), 5);
    }
}
