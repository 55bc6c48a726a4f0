//! Source catalog introspection: which tables the configuration names, their columns, and
//! their real key.
//!
//! The key comes from `pg_index` (primary key, else the replica identity index): under
//! `REPLICA IDENTITY FULL` the Relation message flags every column as key, which is not
//! what a target should upsert on.

use std::sync::Arc;

use tidewater_core::{Column, ColumnType, ConnectorError, Engine, TableId, TableSchema};
use tokio_postgres::Client;

use crate::sql::{pg_error, quote_ident, quote_table};
use crate::types::column_type;

/// A column as the catalog describes it.
#[derive(Debug, Clone)]
pub struct CatalogColumn {
    pub name: String,
    pub kind: ColumnType,
    pub native_type: String,
    pub nullable: bool,
    pub existing_rows_value: Option<String>,
}

/// Resolves `schema.table` / `schema.*` patterns to existing tables (with their OIDs).
/// A named table that does not exist is a fatal error naming it.
///
/// A partitioned table stands for all its partitions: the publication publishes their
/// changes as the root's (`publish_via_partition_root`), so a partition whose root is
/// covered is left out (also when a wildcard or its own name matches it). A partition
/// listed on its own, without its root, is replicated as a table of its own.
pub async fn resolve_tables(
    client: &Client,
    patterns: &[String],
    source_name: &str,
) -> Result<Vec<(TableId, u32)>, ConnectorError> {
    let mut out: Vec<(TableId, u32)> = Vec::new();
    let mut roots: Vec<Option<u32>> = Vec::new();
    for pattern in patterns {
        let id = TableId::parse(pattern, "public");
        let rows = client
            .query(
                "SELECT n.nspname::text, c.relname::text, c.oid::int8,                         CASE WHEN c.relispartition THEN pg_partition_root(c.oid)::int8 END                  FROM pg_class c                  JOIN pg_namespace n ON n.oid = c.relnamespace                  WHERE c.relkind IN ('r', 'p') AND n.nspname = $1 AND ($2 = '*' OR c.relname = $2)                  ORDER BY 2",
                &[&id.schema, &id.name],
            )
            .await
            .map_err(|e| pg_error("listing source tables", e))?;
        if rows.is_empty() {
            if id.name == "*" {
                // A schema without tables yet: tables created in it later are picked up.
                let exists = client
                    .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&id.schema])
                    .await
                    .map_err(|e| pg_error("listing source schemas", e))?
                    .is_some();
                if exists {
                    continue;
                }
            }
            let what = if id.name == "*" {
                format!("schema {} does not exist", id.schema)
            } else {
                format!("table {id} does not exist")
            };
            return Err(ConnectorError::fatal(format!(
                "{what} on source {source_name}: create it, or remove {pattern:?} from sources.{source_name}.tables"
            )));
        }
        for row in rows {
            let table = TableId::new(row.get::<_, String>(0), row.get::<_, String>(1));
            let oid = row.get::<_, i64>(2) as u32;
            if !out.iter().any(|(t, _)| *t == table) {
                out.push((table, oid));
                roots.push(row.get::<_, Option<i64>>(3).map(|r| r as u32));
            }
        }
    }
    let covered: Vec<u32> = out.iter().map(|(_, oid)| *oid).collect();
    Ok(out
        .into_iter()
        .zip(roots)
        .filter(|(_, root)| !root.is_some_and(|r| covered.contains(&r)))
        .map(|(table, _)| table)
        .collect())
}

/// The leaf partitions of a partitioned table (none for a plain table), by name.
pub async fn leaf_partitions(client: &Client, relid: u32) -> Result<Vec<TableId>, ConnectorError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_partition_tree($1::oid) t \
             JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE t.isleaf AND t.relid <> $1::oid ORDER BY 1, 2",
            &[&relid],
        )
        .await
        .map_err(|e| pg_error("listing partitions", e))?;
    Ok(rows.iter().map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1))).collect())
}

/// The planner's row estimate of table `relid` (the sum over the leaf partitions of a
/// partitioned table); `None` before the table was first analyzed.
pub async fn estimate_rows(client: &Client, relid: u32) -> Result<Option<u64>, ConnectorError> {
    let row = client
        .query_one(
            "SELECT sum(c.reltuples)::float8, bool_and(c.reltuples >= 0) FROM pg_partition_tree($1::oid) t \
             JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf",
            &[&relid],
        )
        .await
        .map_err(|e| pg_error("reading the table's row estimate", e))?;
    let (sum, known): (Option<f64>, Option<bool>) = (row.get(0), row.get(1));
    Ok(sum.filter(|_| known == Some(true)).map(|n| n.max(0.0).round() as u64))
}

/// What the configured patterns cover right now: each table (by OID) and the leaf
/// partitions of the partitioned ones. When it changes while streaming (a table created
/// under a wildcard, dropped, renamed; a partition attached or detached) the pipeline
/// restarts to follow it.
pub async fn coverage(
    client: &Client,
    patterns: &[String],
    source_name: &str,
) -> Result<Vec<(TableId, u32, Vec<TableId>)>, ConnectorError> {
    let mut out = Vec::new();
    for (id, relid) in resolve_tables(client, patterns, source_name).await? {
        let parts = leaf_partitions(client, relid).await?;
        out.push((id, relid, parts));
    }
    out.sort();
    Ok(out)
}

/// Whether `relid` is a partitioned table (its rows live in its partitions: `COPY` reads
/// it through a query).
pub async fn is_partitioned(client: &Client, relid: u32) -> Result<bool, ConnectorError> {
    let row = client
        .query_opt("SELECT relkind = 'p' FROM pg_class WHERE oid = $1", &[&relid])
        .await
        .map_err(|e| pg_error("reading the table kind", e))?;
    Ok(row.is_some_and(|r| r.get(0)))
}

/// The table's columns in attribute order.
pub async fn load_columns(client: &Client, relid: u32) -> Result<Vec<CatalogColumn>, ConnectorError> {
    let rows = client
        .query(
            "SELECT a.attname::text, \
                    (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END)::int8, \
                    (CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END), \
                    (CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) \
                          ELSE format_type(a.atttypid, a.atttypmod) END), \
                    bt.typtype::text, bt.typcategory::text, NOT a.attnotnull, \
                    btn.nspname::text, bt.typname::text, \
                    CASE WHEN a.atthasmissing THEN (a.attmissingval::text::text[])[1] END \
             FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid \
             JOIN pg_type bt ON bt.oid = (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END) \
             JOIN pg_namespace btn ON btn.oid = bt.typnamespace \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&relid],
        )
        .await
        .map_err(|e| pg_error("reading source table columns", e))?;
    Ok(rows
        .iter()
        .map(|row| {
            let type_oid = row.get::<_, i64>(1) as u32;
            let typmod: i32 = row.get(2);
            let typtype: String = row.get(4);
            let typcategory: String = row.get(5);
            let kind = column_type(type_oid, typmod, &typtype, &typcategory);
            let native_type = if kind == ColumnType::Enum {
                format!("{}.{}", quote_ident(&row.get::<_, String>(7)), quote_ident(&row.get::<_, String>(8)))
            } else {
                row.get(3)
            };
            CatalogColumn { name: row.get(0), kind, native_type, nullable: row.get(6), existing_rows_value: row.get(9) }
        })
        .collect())
}

/// Key column names: the primary key, else the replica identity index.
pub async fn load_key(client: &Client, relid: u32) -> Result<Vec<String>, ConnectorError> {
    let rows = client
        .query(
            "SELECT i.indexrelid::int8, a.attname::text FROM pg_index i \
             JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) ON true \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND (i.indisprimary OR i.indisreplident) \
             ORDER BY i.indisprimary DESC, i.indexrelid, k.ord",
            &[&relid],
        )
        .await
        .map_err(|e| pg_error("reading source table key", e))?;
    let first_index = rows.first().map(|r| r.get::<_, i64>(0));
    Ok(rows.iter().filter(|r| Some(r.get::<_, i64>(0)) == first_index).map(|r| r.get(1)).collect())
}

/// Enum labels of `enum_native` types used by the columns, so a Postgres target can
/// create the same types.
async fn load_enums(client: &Client, relid: u32) -> Result<Vec<(String, Vec<String>)>, ConnectorError> {
    let rows = client
        .query(
            // The enum may sit under a domain and/or inside an array.
            "WITH col AS ( \
                 SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END AS oid \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped), \
             elem AS ( \
                 SELECT CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN t.typelem ELSE t.oid END AS oid \
                 FROM col JOIN pg_type t ON t.oid = col.oid) \
             SELECT tn.nspname::text, t.typname::text, array_agg(e.enumlabel::text ORDER BY e.enumsortorder) \
             FROM (SELECT DISTINCT oid FROM elem) u JOIN pg_type t ON t.oid = u.oid \
             JOIN pg_namespace tn ON tn.oid = t.typnamespace JOIN pg_enum e ON e.enumtypid = t.oid \
             WHERE t.typtype = 'e' GROUP BY 1, 2",
            &[&relid],
        )
        .await
        .map_err(|e| pg_error("reading enum types", e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let name = format!("{}.{}", quote_ident(&r.get::<_, String>(0)), quote_ident(&r.get::<_, String>(1)));
            (name, r.get(2))
        })
        .collect())
}

/// Builds the schema of a table whose columns are `columns` (catalog order, or the order of
/// a Relation message), failing loudly when the table cannot be keyed.
pub async fn table_schema(
    client: &Client,
    id: &TableId,
    relid: u32,
    column_names: Option<&[String]>,
) -> Result<Arc<TableSchema>, ConnectorError> {
    let catalog = load_columns(client, relid).await?;
    let columns: Vec<Column> = match column_names {
        None => catalog.iter().map(to_column).collect(),
        Some(names) => names
            .iter()
            .map(|name| {
                catalog.iter().find(|c| &c.name == name).map(to_column).ok_or_else(|| {
                    ConnectorError::transient(format!(
                        "column {name} of {id} is in the replication stream but not in the catalog (concurrent DDL); will retry"
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let key_names = load_key(client, relid).await?;
    let replident: Option<String> = client
        .query_opt("SELECT relreplident::text FROM pg_class WHERE oid = $1", &[&relid])
        .await
        .map_err(|e| pg_error("reading replica identity", e))?
        .map(|r| r.get(0));
    if replident.as_deref() == Some("n") {
        return Err(ConnectorError::fatal(format!(
            "table {id} has REPLICA IDENTITY NOTHING, so deletes carry no key: ALTER TABLE {} REPLICA IDENTITY DEFAULT",
            quote_table(id)
        )));
    }
    // Without a key the rows are identified by their whole content, which the source
    // only logs under REPLICA IDENTITY FULL.
    if key_names.is_empty() && replident.as_deref() != Some("f") {
        return Err(ConnectorError::fatal(format!(
            "table {id} has no primary key, so its updates and deletes cannot be matched to target rows: \
             add one (ALTER TABLE {t} ADD PRIMARY KEY (...)), set REPLICA IDENTITY USING INDEX on a unique index, \
             or replicate it by whole rows (ALTER TABLE {t} REPLICA IDENTITY FULL; slower, duplicates kept)",
            t = quote_table(id)
        )));
    }
    let mut key = Vec::with_capacity(key_names.len());
    for name in &key_names {
        let index = columns
            .iter()
            .position(|c| &c.name == name)
            .ok_or_else(|| ConnectorError::fatal(format!("key column {name} of table {id} is not replicated")))?;
        key.push(index);
    }
    let enum_labels = load_enums(client, relid).await?;
    Ok(Arc::new(TableSchema { id: id.clone(), engine: Engine::Postgres, columns, key, enum_labels }))
}

fn to_column(c: &CatalogColumn) -> Column {
    Column {
        name: c.name.clone(),
        kind: c.kind.clone(),
        native_type: c.native_type.clone(),
        nullable: c.nullable,
        existing_rows_value: c.existing_rows_value.clone(),
    }
}

/// Each column's type name for casts: no typmod (so `character(5)` is `bpchar`, not the
/// one-character `character`), keyed by column name.
pub async fn cast_types(
    client: &Client,
    table: &TableId,
) -> Result<std::collections::HashMap<String, String>, ConnectorError> {
    let rows = client
        .query(
            "SELECT attname::text, format_type(atttypid, -1) FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
            &[&quote_table(table)],
        )
        .await
        .map_err(|e| pg_error("reading column types", e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
