//! Binlog table maps matched against the source catalog: which tracked table a table id
//! names, its columns in the row images, and how to decode each of them. The catalog is
//! loaded when a reader starts and refreshed for the tables a DDL statement names.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mysql_async::Conn;
use tidewater_core::{ConnectorError, TableId, TableSchema};

use crate::binlog_events::TableMapInfo;
use crate::catalog::{load_table, CatalogColumn, CatalogTable};
use crate::decode::{ColumnDecoder, ValueKind};
use crate::sink::MysqlEndpoint;
use crate::source_conn::{connect, exec_rows, Flavour};
use crate::tls::MysqlTls;

/// The catalog as the reader sees it: loaded at start, refreshed after DDL.
pub(crate) struct Catalog {
    pub(crate) conn: Conn,
    pub(crate) endpoint: MysqlEndpoint,
    pub(crate) tls: MysqlTls,
    pub(crate) source_name: String,
    pub(crate) flavour: Flavour,
    pub(crate) tables: HashMap<TableId, CatalogTable>,
    /// Tables a DDL statement named since their last refresh.
    pub(crate) stale: HashSet<TableId>,
    /// The schema last handed on per table (reused while unchanged).
    pub(crate) published: HashMap<TableId, Arc<TableSchema>>,
    /// The source section's `tables` patterns (`name` `*` for every table of a database).
    pub(crate) patterns: Vec<TableId>,
}

impl Catalog {
    pub(crate) async fn refresh(&mut self, id: &TableId) -> Result<(), ConnectorError> {
        let table = match load_table(&mut self.conn, id, self.flavour).await {
            Ok(t) => t,
            // The connection idles between schema changes and may have been closed
            // (wait_timeout): reconnect once.
            Err(e) if !e.is_fatal() => {
                self.conn = connect(&self.endpoint, &self.tls, &self.source_name).await?;
                load_table(&mut self.conn, id, self.flavour).await?
            }
            Err(e) => return Err(e),
        };
        self.tables.insert(id.clone(), table);
        self.stale.remove(id);
        Ok(())
    }

    /// The first of `names` (from a CREATE, RENAME or ALTER statement) that is a base
    /// table now, matches the section's `tables` patterns and is not tracked: a table
    /// created or renamed into the wildcard since the reader started.
    pub(crate) async fn new_table(&mut self, names: &[TableId]) -> Result<Option<TableId>, ConnectorError> {
        let matches =
            |id: &TableId| self.patterns.iter().any(|p| p.schema == id.schema && (p.name == "*" || p.name == id.name));
        let mut candidates: Vec<TableId> =
            names.iter().filter(|id| !self.tables.contains_key(id) && matches(id)).cloned().collect();
        candidates.dedup();
        for id in candidates {
            let found = match exists(&mut self.conn, &id).await {
                Ok(found) => found,
                Err(e) if !e.is_fatal() => {
                    self.conn = connect(&self.endpoint, &self.tls, &self.source_name).await?;
                    exists(&mut self.conn, &id).await?
                }
                Err(e) => return Err(e),
            };
            if found {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// `schema`, or the equal one handed on before.
    pub(crate) fn publish(&mut self, schema: TableSchema, at: &str) -> Arc<TableSchema> {
        match self.published.get(&schema.id) {
            Some(old) if **old == schema => old.clone(),
            old => {
                if old.is_some() {
                    tracing::info!(table = %schema.id, position = %at, "source table schema changed");
                }
                let schema = Arc::new(schema);
                self.published.insert(schema.id.clone(), schema.clone());
                schema
            }
        }
    }
}

/// Whether `id` is a base table (by its exact name, as `resolve_tables` lists it).
async fn exists(conn: &mut Conn, id: &TableId) -> Result<bool, ConnectorError> {
    let rows = exec_rows(
        conn,
        "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
         WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA = ? AND TABLE_NAME = ?",
        (id.schema.as_str(), id.name.as_str()),
        "looking up a table created on the source",
    )
    .await?;
    Ok(rows.iter().any(|r| {
        r.get_opt::<String, usize>(0).and_then(Result::ok).as_deref() == Some(id.schema.as_str())
            && r.get_opt::<String, usize>(1).and_then(Result::ok).as_deref() == Some(id.name.as_str())
    }))
}

/// A tracked table as one table map describes it.
#[derive(Debug)]
pub(crate) struct MappedTable {
    pub(crate) schema: Arc<TableSchema>,
    pub(crate) decoders: Vec<ColumnDecoder>,
    /// Table-map column → schema column; `None` when every column is kept in order.
    pub(crate) keep: Option<Vec<Option<usize>>>,
}

pub(crate) enum Mapping {
    Untracked,
    Tracked(Arc<MappedTable>),
}

/// The columns, key and decoders of a table map, matched against the catalog: by name
/// when the table map carries names (binlog_row_metadata = FULL; columns dropped since are
/// skipped, columns added since are absent), else by position, which needs the same
/// column count. Types must agree. Any mismatch is an error, never a guess.
pub(crate) fn map_table(info: &TableMapInfo, cat: &CatalogTable) -> Result<Matched, String> {
    let mut columns: Vec<std::borrow::Cow<'_, CatalogColumn>> = Vec::with_capacity(info.layouts.len());
    let mut decoders = Vec::with_capacity(info.layouts.len());
    let mut keep = Vec::with_capacity(info.layouts.len());
    if info.names.is_none() && info.layouts.len() != cat.columns.len() {
        return Err(format!(
            "the binlog row has {} columns, the catalog {}; without binlog_row_metadata = FULL the columns cannot be \
             matched by name",
            info.layouts.len(),
            cat.columns.len()
        ));
    }
    let (mut enum_i, mut set_i) = (0usize, 0usize);
    for (i, layout) in info.layouts.iter().enumerate() {
        let labels = match layout {
            crate::decode::Layout::Enum { .. } => {
                enum_i += 1;
                info.enum_labels.as_ref().and_then(|l| l.get(enum_i - 1))
            }
            crate::decode::Layout::Set { .. } => {
                set_i += 1;
                info.set_labels.as_ref().and_then(|l| l.get(set_i - 1))
            }
            _ => None,
        };
        let found = match &info.names {
            Some(names) => match cat.column(&names[i]) {
                Some(c) => Some(std::borrow::Cow::Borrowed(c)),
                None => renamed_since(cat, names, i, layout).map(std::borrow::Cow::Owned),
            },
            None => cat.columns.get(i).map(std::borrow::Cow::Borrowed),
        };
        let Some(c) = found else {
            decoders.push(ColumnDecoder { layout: *layout, kind: ValueKind::Ignored });
            keep.push(None);
            // A column dropped since stays in this row's shape, in its place (as NULL: its
            // value is not decodable without the catalog), so that a target follows the
            // drop at the row logged after it, also when this row is the first one a
            // restarted pipeline sees.
            if let Some(names) = &info.names {
                columns.push(std::borrow::Cow::Owned(dropped_since(names[i].clone())));
            }
            continue;
        };
        let kind = match (&c.kind, labels) {
            (ValueKind::Enum(_), Some(l)) => ValueKind::Enum(l.clone().into()),
            (ValueKind::Set(_), Some(l)) => ValueKind::Set(l.clone().into()),
            (k, _) => k.clone(),
        };
        if !layout.fits(&kind) {
            return Err(format!(
                "column {} is {} in the binlog but {} in the catalog",
                c.column.name,
                layout.name(),
                c.column.native_type
            ));
        }
        decoders.push(ColumnDecoder { layout: *layout, kind });
        keep.push(Some(columns.len()));
        columns.push(c);
    }
    let mut key = Vec::with_capacity(cat.key.len());
    for &k in &cat.key {
        let name = &cat.columns[k].column.name;
        let i = columns
            .iter()
            .position(|c| &c.column.name == name)
            .ok_or_else(|| format!("key column {name} is not in the binlog row"))?;
        key.push(i);
    }
    let identity = keep.iter().enumerate().all(|(i, k)| *k == Some(i)) && keep.len() == columns.len();
    // ENUM labels from the table map (what the row was written with) go into the native
    // type, so the schema says which labels a target column needs.
    let mut core_columns: Vec<tidewater_core::Column> = columns.iter().map(|c| c.column.clone()).collect();
    for (dec, j) in decoders.iter().zip(&keep) {
        let Some(col) = j.and_then(|j| core_columns.get_mut(j)) else { continue };
        if let ValueKind::Enum(labels) | ValueKind::Set(labels) = &dec.kind {
            let kind = if matches!(dec.kind, ValueKind::Enum(_)) { "enum" } else { "set" };
            let quoted: Vec<String> = labels.iter().map(|l| format!("'{}'", l.replace('\'', "''"))).collect();
            let native = format!("{kind}({})", quoted.join(","));
            if !col.native_type.starts_with(&native) {
                col.native_type = native;
            }
        }
    }
    let schema = TableSchema {
        id: cat.id.clone(),
        engine: tidewater_core::Engine::Mysql,
        columns: core_columns,
        key,
        enum_labels: Vec::new(),
    };
    Ok((schema, decoders, (!identity).then_some(keep)))
}

/// Whether the table map names a column `cat` does not have (never without names).
pub(crate) fn has_unknown_column(info: &TableMapInfo, cat: &CatalogTable) -> bool {
    info.names.as_ref().is_some_and(|names| names.iter().any(|n| cat.column(n).is_none()))
}

/// A row logged under an older shape of the table (replayed after a restart): its column
/// `i`, named `names[i]`, is not in the catalog, but the catalog's column at that place is
/// not in the row and has a type the row's layout fits: the column was renamed since (or
/// dropped and another added there). The catalog's column under the logged name, so that
/// the target sees the shapes in their order (a drop, then the rename, then an add) and
/// keeps the column's values; a column with no such counterpart is left out (dropped since).
fn renamed_since(
    cat: &CatalogTable,
    names: &[String],
    i: usize,
    layout: &crate::decode::Layout,
) -> Option<CatalogColumn> {
    let now = cat.columns.get(i)?;
    if names.contains(&now.column.name) || !layout.fits(&now.kind) {
        return None;
    }
    let mut then = now.clone();
    then.column.name = names[i].clone();
    Some(then)
}

/// A placeholder for a column the catalog no longer has: nullable text.
fn dropped_since(name: String) -> CatalogColumn {
    let raw = crate::catalog::RawColumn {
        name,
        data_type: "longtext".into(),
        column_type: "longtext".into(),
        nullable: true,
        charset: Some("utf8mb4".into()),
        ..crate::catalog::RawColumn::default()
    };
    #[allow(clippy::expect_used)]
    crate::catalog::map_column(&raw, Flavour::MariaDb, false).expect("longtext maps")
}

/// A table map matched against the catalog: the schema, the decoders, the column mapping.
pub(crate) type Matched = (TableSchema, Vec<ColumnDecoder>, Option<Vec<Option<usize>>>);

/// The table id of a table map event body without decoding the rest (6 bytes LE; MySQL
/// 5.x-era post headers of 6 bytes used 4, which is not supported by these servers).
pub(crate) fn table_map_id(data: &[u8]) -> Option<u64> {
    let b = data.get(..6)?;
    Some(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::catalog::{map_column, RawColumn};
    use crate::decode::{Charset, Layout};

    fn catalog(cols: &[(&str, &str, &str)], key: &[usize]) -> CatalogTable {
        let columns: Vec<CatalogColumn> = cols
            .iter()
            .map(|(name, dt, ct)| {
                let raw = RawColumn {
                    name: name.to_string(),
                    data_type: dt.to_string(),
                    column_type: ct.to_string(),
                    nullable: true,
                    charset: Some("utf8mb4".into()),
                    char_length: Some(10),
                    ..RawColumn::default()
                };
                map_column(&raw, Flavour::MariaDb, false).unwrap()
            })
            .collect();
        let schema = Arc::new(TableSchema {
            id: TableId::new("d", "t"),
            engine: tidewater_core::Engine::Mysql,
            columns: columns.iter().map(|c| c.column.clone()).collect(),
            key: key.to_vec(),
            enum_labels: vec![],
        });
        CatalogTable { id: TableId::new("d", "t"), columns, key: key.to_vec(), schema }
    }

    fn tmi(layouts: Vec<Layout>, names: Option<Vec<&str>>) -> TableMapInfo {
        TableMapInfo {
            table_id: 1,
            database: "d".into(),
            table: "t".into(),
            layouts,
            names: names.map(|n| n.into_iter().map(String::from).collect()),
            enum_labels: None,
            set_labels: None,
        }
    }

    #[test]
    fn table_maps_match_by_name_or_position() {
        let cat = catalog(&[("id", "int", "int(11)"), ("v", "varchar", "varchar(10)")], &[0]);
        let (schema, dec, keep) =
            map_table(&tmi(vec![Layout::Long, Layout::Str { len_bytes: 1 }], None), &cat).unwrap();
        assert_eq!(schema.columns.len(), 2);
        assert_eq!(dec[1].kind, ValueKind::Text(Charset::Utf8));
        assert!(keep.is_none());
        assert_eq!(*Arc::new(schema), *cat.schema);

        // Without names a different column count is an error, never a guess.
        let err = map_table(&tmi(vec![Layout::Long], None), &cat).unwrap_err();
        assert!(err.contains("binlog_row_metadata = FULL"), "{err}");
        // Types must agree.
        let err = map_table(&tmi(vec![Layout::Long, Layout::Double], None), &cat).unwrap_err();
        assert!(err.contains("column v is DOUBLE in the binlog"), "{err}");

        // With names: a column added since is absent, one dropped since is skipped.
        let (schema, _, keep) = map_table(&tmi(vec![Layout::Long], Some(vec!["id"])), &cat).unwrap();
        assert_eq!(schema.columns.len(), 1);
        assert!(keep.is_none());
        let (schema, dec, keep) = map_table(
            &tmi(vec![Layout::Long, Layout::Tiny, Layout::Str { len_bytes: 1 }], Some(vec!["id", "gone", "v"])),
            &cat,
        )
        .unwrap();
        // The dropped column keeps its place in the row's shape, as NULL.
        assert_eq!(schema.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["id", "gone", "v"]);
        assert!(schema.columns[1].nullable);
        assert_eq!(dec[1].kind, ValueKind::Ignored);
        assert_eq!(keep, Some(vec![Some(0), None, Some(2)]));
        // Renamed since: the catalog's column in that place, under the logged name.
        let (schema, dec, keep) =
            map_table(&tmi(vec![Layout::Long, Layout::Str { len_bytes: 1 }], Some(vec!["id", "old"])), &cat).unwrap();
        assert_eq!(schema.columns[1].name, "old");
        assert_eq!(schema.columns[1].native_type, cat.columns[1].column.native_type);
        assert_eq!(dec[1].kind, ValueKind::Text(Charset::Utf8));
        assert!(keep.is_none());
        // ... but not when the types differ: then it was dropped (and another added).
        let (schema, _, _) =
            map_table(&tmi(vec![Layout::Long, Layout::Double], Some(vec!["id", "old"])), &cat).unwrap();
        assert_eq!(schema.columns[1].native_type, "longtext");
        // Names the catalog lacks are told apart from the catalog's own.
        assert!(has_unknown_column(&tmi(vec![Layout::Long], Some(vec!["added"])), &cat));
        assert!(!has_unknown_column(&tmi(vec![Layout::Long], Some(vec!["id"])), &cat));
        assert!(!has_unknown_column(&tmi(vec![Layout::Long, Layout::Long, Layout::Long], None), &cat));
        // The key must be in the row.
        let err = map_table(&tmi(vec![Layout::Str { len_bytes: 1 }], Some(vec!["v"])), &cat).unwrap_err();
        assert!(err.contains("key column id"), "{err}");
    }

    #[test]
    fn table_map_labels_win_over_the_catalog() {
        let cat = catalog(&[("id", "int", "int(11)"), ("e", "enum", "enum('a','b')")], &[0]);
        let mut info = tmi(vec![Layout::Long, Layout::Enum { size: 1 }], Some(vec!["id", "e"]));
        info.enum_labels = Some(vec![vec!["x".into(), "y".into(), "z".into()]]);
        let (schema, dec, _) = map_table(&info, &cat).unwrap();
        assert_eq!(dec[1].kind, ValueKind::Enum(vec!["x".to_string(), "y".to_string(), "z".to_string()].into()));
        assert_eq!(schema.columns[1].native_type, "enum('x','y','z')");
        assert!(schema.enum_labels.is_empty());
    }

    #[test]
    fn table_map_ids_are_read_cheaply() {
        assert_eq!(table_map_id(&[0x85, 0, 0, 0, 0, 0, 1, 0]), Some(133));
        assert_eq!(table_map_id(&[1, 2]), None);
    }
}
