//! Source catalog: which tables the configuration names, their columns (as core types and
//! as decoding rules) and their key, read from `information_schema`.
//!
//! Type mapping (MySQL/MariaDB → core [`ColumnType`]; the declaration stays in
//! `native_type`):
//!
//! | source | core | value |
//! |---|---|---|
//! | TINYINT (also TINYINT(1): it holds -128..127, not a boolean) | Int16 | Int |
//! | SMALLINT / SMALLINT UNSIGNED | Int16 / Int32 | Int |
//! | MEDIUMINT [UNSIGNED], INT | Int32 | Int |
//! | INT UNSIGNED, BIGINT | Int64 | Int |
//! | BIGINT UNSIGNED | UInt64 | UInt |
//! | FLOAT / DOUBLE | Float32 / Float64 | Float |
//! | DECIMAL(p,s) | Numeric(p,s) | Decimal (exact text) |
//! | CHAR(n) / VARCHAR(n) / *TEXT | Char(n) / Varchar(n) / Text | Text |
//! | BINARY(n), VARBINARY, *BLOB, BIT(n), GEOMETRY | Bytes | Bytes |
//! | JSON (MySQL), LONGTEXT with `json_valid` (MariaDB JSON) | Json | Json |
//! | DATE / TIME / DATETIME / TIMESTAMP | Date / Time / Timestamp / TimestampTz (UTC) | |
//! | YEAR | Int16 | Int |
//! | ENUM | Enum (labels in `native_type`, e.g. `enum('a','b')`) | Text (the label) |
//! | SET | Other | Text (`a,b`) |
//! | UUID (MariaDB) | Uuid | Uuid |
//! | INET4 / INET6 (MariaDB) | Other | Other (address text) |

use std::collections::HashSet;
use std::sync::Arc;

use mysql_async::Conn;
use tidewater_core::{Column, ColumnType, ConnectorError, Engine, TableId, TableSchema};

use crate::decode::{Charset, ValueKind};
use crate::source_conn::{col, exec_rows, Flavour};

/// A column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    pub column: Column,
    /// `DATA_TYPE`, lower case.
    pub data_type: String,
    pub kind: ValueKind,
}

/// A table as the catalog describes it.
#[derive(Debug, Clone)]
pub struct CatalogTable {
    pub id: TableId,
    pub columns: Vec<CatalogColumn>,
    /// Indexes into `columns` of the primary key (or unique NOT NULL key).
    pub key: Vec<usize>,
    pub schema: Arc<TableSchema>,
}

impl CatalogTable {
    pub fn column(&self, name: &str) -> Option<&CatalogColumn> {
        self.columns.iter().find(|c| c.column.name == name)
    }
}

/// Resolves `db.table` / `db.*` patterns (a name without a database gets
/// `default_db`) to existing base tables, in pattern order then name order.
pub async fn resolve_tables(
    conn: &mut Conn,
    patterns: &[String],
    default_db: &str,
    source_name: &str,
) -> Result<Vec<TableId>, ConnectorError> {
    let mut out: Vec<TableId> = Vec::new();
    for pattern in patterns {
        let id = TableId::parse(pattern, default_db);
        if id.schema.is_empty() {
            return Err(ConnectorError::fatal(format!(
                "sources.{source_name}.tables: {pattern:?} names no database: write it as \"db.table\" or \"db.*\""
            )));
        }
        let rows = exec_rows(
            conn,
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA = ? AND (? = '*' OR TABLE_NAME = ?) ORDER BY TABLE_NAME",
            (id.schema.as_str(), id.name.as_str(), id.name.as_str()),
            "listing source tables",
        )
        .await?;
        if rows.is_empty() {
            let what = if id.name == "*" {
                format!("database {} has no tables", id.schema)
            } else {
                format!("table {id} does not exist")
            };
            return Err(ConnectorError::fatal(format!(
                "{what} on source {source_name}: create it, or remove {pattern:?} from sources.{source_name}.tables"
            )));
        }
        for row in rows {
            let t = TableId::new(col::<String>(&row, 0, "TABLES")?, col::<String>(&row, 1, "TABLES")?);
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// InnoDB's estimate of a table's rows (`information_schema.TABLES.TABLE_ROWS`), for
/// progress reports.
pub async fn estimate_rows(conn: &mut Conn, id: &TableId) -> Option<u64> {
    let rows = exec_rows(
        conn,
        "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
        (id.schema.as_str(), id.name.as_str()),
        "reading the table's row estimate",
    )
    .await
    .ok()?;
    rows.into_iter().next().and_then(|row| row.get_opt::<Option<u64>, usize>(0)).and_then(Result::ok).flatten()
}

/// Loads a table's columns and key (none for a table without a usable key).
pub async fn load_table(conn: &mut Conn, id: &TableId, flavour: Flavour) -> Result<CatalogTable, ConnectorError> {
    let what = format!("reading the columns of source table {id}");
    let rows = exec_rows(
        conn,
        "SELECT COLUMN_NAME, LOWER(DATA_TYPE), COLUMN_TYPE, IS_NULLABLE, CHARACTER_SET_NAME, \
                CHARACTER_MAXIMUM_LENGTH, CHARACTER_OCTET_LENGTH, NUMERIC_PRECISION, NUMERIC_SCALE, \
                COLUMN_DEFAULT, EXTRA \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
        (id.schema.as_str(), id.name.as_str()),
        &what,
    )
    .await?;
    if rows.is_empty() {
        return Err(ConnectorError::fatal(format!(
            "source table {id} does not exist (any more) or the source user cannot see it: grant SELECT on it"
        )));
    }
    let json_columns = if flavour == Flavour::MariaDb { mariadb_json_columns(conn, id).await? } else { HashSet::new() };
    let mut columns = Vec::with_capacity(rows.len());
    for row in &rows {
        let info = RawColumn {
            name: col(row, 0, &what)?,
            data_type: col(row, 1, &what)?,
            column_type: col(row, 2, &what)?,
            nullable: col::<String>(row, 3, &what)? == "YES",
            charset: col(row, 4, &what)?,
            char_length: col(row, 5, &what)?,
            octet_length: col(row, 6, &what)?,
            precision: col(row, 7, &what)?,
            scale: col(row, 8, &what)?,
            default: col(row, 9, &what)?,
            extra: col::<Option<String>>(row, 10, &what)?.unwrap_or_default(),
        };
        let is_json = json_columns.contains(&info.name);
        columns.push(
            map_column(&info, flavour, is_json)
                .map_err(|e| ConnectorError::fatal(format!("source table {id}, column {}: {e}", info.name)))?,
        );
    }
    // No key: the table is replicated by whole rows (the binlog's full row images, which
    // the source check requires, identify them), see `TableSchema::is_keyless`.
    let key_names = load_key(conn, id, &columns).await?;
    let key: Vec<usize> =
        key_names.iter().filter_map(|n| columns.iter().position(|c: &CatalogColumn| &c.column.name == n)).collect();
    let schema = Arc::new(TableSchema {
        id: id.clone(),
        engine: Engine::Mysql,
        columns: columns.iter().map(|c| c.column.clone()).collect(),
        key: key.clone(),
        // MySQL has no named enum types: the labels are in each column's native type.
        enum_labels: Vec::new(),
    });
    Ok(CatalogTable { id: id.clone(), columns, key, schema })
}

/// Columns of MariaDB JSON type: LONGTEXT with a `json_valid(col)` check constraint.
async fn mariadb_json_columns(conn: &mut Conn, id: &TableId) -> Result<HashSet<String>, ConnectorError> {
    let rows = exec_rows(
        conn,
        "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
        (id.schema.as_str(), id.name.as_str()),
        "reading check constraints",
    )
    .await?;
    let mut out = HashSet::new();
    for row in &rows {
        let clause: String = col(row, 0, "CHECK_CONSTRAINTS")?;
        if let Some(name) = json_valid_column(&clause) {
            out.insert(name);
        }
    }
    Ok(out)
}

/// `json_valid(`col`)` → `col`.
pub fn json_valid_column(clause: &str) -> Option<String> {
    let inner = clause.trim().strip_prefix("json_valid(")?.strip_suffix(')')?.trim();
    let name = inner.strip_prefix('`')?.strip_suffix('`')?;
    Some(name.replace("``", "`"))
}

/// Key column names: the primary key, else the first unique index on NOT NULL columns.
async fn load_key(conn: &mut Conn, id: &TableId, columns: &[CatalogColumn]) -> Result<Vec<String>, ConnectorError> {
    let rows = exec_rows(
        conn,
        "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY INDEX_NAME = 'PRIMARY' DESC, INDEX_NAME, SEQ_IN_INDEX",
        (id.schema.as_str(), id.name.as_str()),
        "reading source table indexes",
    )
    .await?;
    let mut indexes: Vec<(String, bool, Vec<Option<String>>)> = Vec::new();
    for row in &rows {
        let name: String = col(row, 0, "STATISTICS")?;
        let non_unique: i64 = col(row, 1, "STATISTICS")?;
        let column: Option<String> = col(row, 2, "STATISTICS")?;
        match indexes.last_mut() {
            Some((n, _, cols)) if *n == name => cols.push(column),
            _ => indexes.push((name, non_unique == 0, vec![column])),
        }
    }
    Ok(choose_key(&indexes, columns))
}

/// PRIMARY, else the first unique index whose parts are all plain NOT NULL columns.
fn choose_key(indexes: &[(String, bool, Vec<Option<String>>)], columns: &[CatalogColumn]) -> Vec<String> {
    let usable = |cols: &[Option<String>]| {
        cols.iter().all(|c| {
            c.as_ref().is_some_and(|name| columns.iter().any(|col| &col.column.name == name && !col.column.nullable))
        })
    };
    indexes
        .iter()
        .find(|(name, unique, cols)| *unique && (name == "PRIMARY" || usable(cols)))
        .map(|(_, _, cols)| cols.iter().flatten().cloned().collect())
        .unwrap_or_default()
}

/// `information_schema.COLUMNS` of one column.
#[derive(Debug, Clone, Default)]
pub struct RawColumn {
    pub name: String,
    pub data_type: String,
    pub column_type: String,
    pub nullable: bool,
    pub charset: Option<String>,
    pub char_length: Option<u64>,
    pub octet_length: Option<u64>,
    pub precision: Option<u64>,
    pub scale: Option<u64>,
    pub default: Option<String>,
    pub extra: String,
}

/// The core column and decoding rule of a catalog column.
pub fn map_column(c: &RawColumn, flavour: Flavour, is_json: bool) -> Result<CatalogColumn, String> {
    let unsigned = c.column_type.to_ascii_lowercase().contains("unsigned");
    let text = || -> Result<Charset, String> {
        let name = c.charset.as_deref().unwrap_or("utf8mb4");
        Charset::from_name(name).ok_or_else(|| {
            format!(
                "character set {name} cannot be decoded (supported: utf8mb4, utf8mb3, ascii, latin1, ucs2, utf16, \
                 utf16le, utf32, binary): convert the column, e.g. ALTER TABLE ... CONVERT TO CHARACTER SET utf8mb4"
            )
        })
    };
    let binary_charset = c.charset.as_deref().is_none_or(|cs| cs.eq_ignore_ascii_case("binary"));
    let len = |v: Option<u64>| v.and_then(|n| u32::try_from(n).ok());
    let dt = c.data_type.as_str();
    let mut native_type = c.column_type.clone();
    let (kind, value) = match dt {
        "tinyint" => (ColumnType::Int16, ValueKind::Int { unsigned }),
        "smallint" => (if unsigned { ColumnType::Int32 } else { ColumnType::Int16 }, ValueKind::Int { unsigned }),
        "mediumint" => (ColumnType::Int32, ValueKind::Int { unsigned }),
        "int" | "integer" => {
            (if unsigned { ColumnType::Int64 } else { ColumnType::Int32 }, ValueKind::Int { unsigned })
        }
        "bigint" if unsigned => (ColumnType::UInt64, ValueKind::UInt64),
        "bigint" => (ColumnType::Int64, ValueKind::Int { unsigned: false }),
        "float" => (ColumnType::Float32, ValueKind::Float32),
        "double" | "real" | "double precision" => (ColumnType::Float64, ValueKind::Float64),
        "decimal" | "numeric" | "fixed" => {
            (ColumnType::Numeric { precision: len(c.precision), scale: len(c.scale) }, ValueKind::Decimal)
        }
        "char" if binary_charset => {
            (ColumnType::Bytes, ValueKind::Bytes { pad_to: c.octet_length.map(|n| n as usize) })
        }
        "char" => (ColumnType::Char(len(c.char_length)), ValueKind::Text(text()?)),
        "varchar" if binary_charset => (ColumnType::Bytes, ValueKind::Bytes { pad_to: None }),
        "varchar" => (ColumnType::Varchar(len(c.char_length)), ValueKind::Text(text()?)),
        "tinytext" | "text" | "mediumtext" | "longtext" if is_json => {
            native_type = "json".into();
            (ColumnType::Json, ValueKind::JsonText(text()?))
        }
        "tinytext" | "text" | "mediumtext" | "longtext" => (ColumnType::Text, ValueKind::Text(text()?)),
        "json" if flavour == Flavour::MySql => (ColumnType::Json, ValueKind::JsonBinary),
        "json" => (ColumnType::Json, ValueKind::JsonText(text()?)),
        "binary" => (ColumnType::Bytes, ValueKind::Bytes { pad_to: c.octet_length.map(|n| n as usize) }),
        "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            (ColumnType::Bytes, ValueKind::Bytes { pad_to: None })
        }
        "bit" => (ColumnType::Bytes, ValueKind::Bytes { pad_to: None }),
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon"
        | "geometrycollection" | "geomcollection" | "vector" => (ColumnType::Bytes, ValueKind::Bytes { pad_to: None }),
        "date" => (ColumnType::Date, ValueKind::Date),
        "time" => (ColumnType::Time, ValueKind::Time),
        "datetime" => (ColumnType::Timestamp, ValueKind::DateTime),
        "timestamp" => (ColumnType::TimestampTz, ValueKind::Timestamp),
        "year" => (ColumnType::Int16, ValueKind::Year),
        "enum" => (ColumnType::Enum, ValueKind::Enum(parse_labels(&c.column_type)?.into())),
        "set" => (ColumnType::Other, ValueKind::Set(parse_labels(&c.column_type)?.into())),
        "uuid" => (ColumnType::Uuid, ValueKind::Uuid),
        "inet6" => (ColumnType::Other, ValueKind::Inet6),
        "inet4" => (ColumnType::Other, ValueKind::Inet4),
        other => return Err(format!("type {other} ({}) is not supported", c.column_type)),
    };
    let existing_rows_value = existing_rows_value(c, flavour, &kind);
    Ok(CatalogColumn {
        column: Column { name: c.name.clone(), kind, native_type, nullable: c.nullable, existing_rows_value },
        data_type: c.data_type.clone(),
        kind: value,
    })
}

/// The value rows that existed before the column was added hold: its constant default
/// (a NOT NULL column without one gets MySQL's implicit default for numbers and text).
fn existing_rows_value(c: &RawColumn, flavour: Flavour, kind: &ColumnType) -> Option<String> {
    let numeric = matches!(
        kind,
        ColumnType::Int16
            | ColumnType::Int32
            | ColumnType::Int64
            | ColumnType::UInt64
            | ColumnType::Float32
            | ColumnType::Float64
            | ColumnType::Numeric { .. }
    );
    let textual = matches!(kind, ColumnType::Text | ColumnType::Varchar(_) | ColumnType::Char(_));
    let implicit = || {
        if c.nullable {
            None
        } else if numeric {
            Some("0".to_string())
        } else if textual {
            Some(String::new())
        } else {
            None
        }
    };
    let Some(default) = c.default.as_deref() else { return implicit() };
    match flavour {
        // MariaDB quotes literals and writes expressions as SQL: `'abc'`, `5`, `NULL`,
        // `current_timestamp()`.
        Flavour::MariaDb => {
            if let Some(inner) = default.strip_prefix('\'').and_then(|d| d.strip_suffix('\'')) {
                Some(inner.replace("''", "'").replace("\\\\", "\\"))
            } else if default.parse::<f64>().is_ok() {
                Some(default.to_string())
            } else if default.eq_ignore_ascii_case("NULL") {
                implicit()
            } else {
                None // an expression: its value for old rows is unknown
            }
        }
        // MySQL shows literals bare and marks expressions in EXTRA.
        Flavour::MySql => {
            if c.extra.to_ascii_uppercase().contains("DEFAULT_GENERATED") {
                None
            } else {
                Some(default.to_string())
            }
        }
    }
}

/// The labels of `enum('a','b''c')` / `set(...)`.
pub fn parse_labels(column_type: &str) -> Result<Vec<String>, String> {
    let open = column_type.find('(').ok_or_else(|| format!("cannot read the labels of {column_type}"))?;
    let body = column_type[open + 1..].strip_suffix(')').unwrap_or(&column_type[open + 1..]);
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        match chars.next() {
            None => break,
            Some('\'') => {
                let mut label = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated label in {column_type}")),
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            label.push('\'');
                        }
                        Some('\'') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => label.push(c),
                            None => return Err(format!("unterminated label in {column_type}")),
                        },
                        Some(c) => label.push(c),
                    }
                }
                labels.push(label);
            }
            Some(',') | Some(' ') => {}
            Some(c) => return Err(format!("unexpected {c:?} in the labels of {column_type}")),
        }
    }
    Ok(labels)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw(data_type: &str, column_type: &str) -> RawColumn {
        RawColumn {
            name: "c".into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            nullable: true,
            charset: None,
            ..RawColumn::default()
        }
    }

    fn kind(data_type: &str, column_type: &str) -> (ColumnType, ValueKind) {
        let mut r = raw(data_type, column_type);
        if matches!(data_type, "char" | "varchar" | "text" | "longtext" | "enum" | "set" | "json") {
            r.charset = Some("utf8mb4".into());
        }
        r.char_length = Some(10);
        r.octet_length = Some(16);
        r.precision = Some(65);
        r.scale = Some(30);
        let c = map_column(&r, Flavour::MariaDb, false).unwrap_or_else(|e| panic!("{e}"));
        (c.column.kind, c.kind)
    }

    #[test]
    fn integer_types_widen_for_unsigned() {
        assert_eq!(kind("tinyint", "tinyint(1)"), (ColumnType::Int16, ValueKind::Int { unsigned: false }));
        assert_eq!(kind("tinyint", "tinyint(3) unsigned"), (ColumnType::Int16, ValueKind::Int { unsigned: true }));
        assert_eq!(kind("smallint", "smallint(6)").0, ColumnType::Int16);
        assert_eq!(kind("smallint", "smallint unsigned").0, ColumnType::Int32);
        assert_eq!(kind("mediumint", "mediumint(8) unsigned").0, ColumnType::Int32);
        assert_eq!(kind("int", "int(11)").0, ColumnType::Int32);
        assert_eq!(kind("int", "int(10) unsigned").0, ColumnType::Int64);
        assert_eq!(kind("bigint", "bigint(20)").0, ColumnType::Int64);
        assert_eq!(kind("bigint", "bigint(20) unsigned"), (ColumnType::UInt64, ValueKind::UInt64));
    }

    #[test]
    fn other_types() {
        assert_eq!(kind("decimal", "decimal(65,30)").0, ColumnType::Numeric { precision: Some(65), scale: Some(30) });
        assert_eq!(kind("char", "char(10)"), (ColumnType::Char(Some(10)), ValueKind::Text(Charset::Utf8)));
        assert_eq!(kind("varchar", "varchar(10)").0, ColumnType::Varchar(Some(10)));
        assert_eq!(kind("binary", "binary(16)"), (ColumnType::Bytes, ValueKind::Bytes { pad_to: Some(16) }));
        assert_eq!(kind("bit", "bit(64)").0, ColumnType::Bytes);
        assert_eq!(kind("timestamp", "timestamp(6)"), (ColumnType::TimestampTz, ValueKind::Timestamp));
        assert_eq!(kind("datetime", "datetime"), (ColumnType::Timestamp, ValueKind::DateTime));
        assert_eq!(kind("year", "year(4)"), (ColumnType::Int16, ValueKind::Year));
        assert_eq!(
            kind("enum", "enum('a','b')"),
            (ColumnType::Enum, ValueKind::Enum(vec!["a".to_string(), "b".to_string()].into()))
        );
        assert_eq!(kind("set", "set('x')").0, ColumnType::Other);
        assert_eq!(kind("uuid", "uuid"), (ColumnType::Uuid, ValueKind::Uuid));
        assert_eq!(kind("json", "json").1, ValueKind::JsonText(Charset::Utf8));
        let mut r = raw("json", "json");
        r.charset = Some("utf8mb4".into());
        assert_eq!(map_column(&r, Flavour::MySql, false).unwrap().kind, ValueKind::JsonBinary);
        let mut r = raw("longtext", "longtext");
        r.charset = Some("utf8mb4".into());
        let c = map_column(&r, Flavour::MariaDb, true).unwrap();
        assert_eq!((c.column.kind, c.column.native_type.as_str()), (ColumnType::Json, "json"));
        let mut r = raw("varchar", "varchar(10)");
        r.charset = Some("sjis".into());
        assert!(map_column(&r, Flavour::MariaDb, false).unwrap_err().contains("CONVERT TO CHARACTER SET"));
        assert!(map_column(&raw("frobnicator", "frobnicator"), Flavour::MySql, false).is_err());
    }

    #[test]
    fn labels_and_json_checks() {
        assert_eq!(parse_labels("enum('a','b''c','d,e')").unwrap(), vec!["a", "b'c", "d,e"]);
        assert_eq!(parse_labels("set('')").unwrap(), vec![""]);
        assert!(parse_labels("enum('a").is_err());
        assert_eq!(json_valid_column("json_valid(`doc`)").as_deref(), Some("doc"));
        assert_eq!(json_valid_column("json_valid(`we``ird`)").as_deref(), Some("we`ird"));
        assert_eq!(json_valid_column("`a` > 0"), None);
    }

    #[test]
    fn defaults_for_existing_rows() {
        let mut r = raw("int", "int(11)");
        r.default = Some("5".into());
        assert_eq!(map_column(&r, Flavour::MariaDb, false).unwrap().column.existing_rows_value.as_deref(), Some("5"));
        let mut r = raw("varchar", "varchar(5)");
        r.charset = Some("utf8mb4".into());
        r.default = Some("'it''s'".into());
        assert_eq!(
            map_column(&r, Flavour::MariaDb, false).unwrap().column.existing_rows_value.as_deref(),
            Some("it's")
        );
        r.default = Some("NULL".into());
        assert_eq!(map_column(&r, Flavour::MariaDb, false).unwrap().column.existing_rows_value, None);
        let mut r = raw("timestamp", "timestamp");
        r.default = Some("current_timestamp()".into());
        assert_eq!(map_column(&r, Flavour::MariaDb, false).unwrap().column.existing_rows_value, None);
        r.default = Some("CURRENT_TIMESTAMP".into());
        r.extra = "DEFAULT_GENERATED".into();
        assert_eq!(map_column(&r, Flavour::MySql, false).unwrap().column.existing_rows_value, None);
        let mut r = raw("int", "int");
        r.nullable = false;
        assert_eq!(map_column(&r, Flavour::MySql, false).unwrap().column.existing_rows_value.as_deref(), Some("0"));
    }

    #[test]
    fn key_choice() {
        let c = |name: &str, nullable: bool| CatalogColumn {
            column: Column {
                name: name.into(),
                kind: ColumnType::Int32,
                native_type: "int".into(),
                nullable,
                existing_rows_value: None,
            },
            data_type: "int".into(),
            kind: ValueKind::Int { unsigned: false },
        };
        let cols = vec![c("a", false), c("b", true), c("d", false)];
        let idx = |n: &str, u: bool, cs: &[&str]| (n.to_string(), u, cs.iter().map(|s| Some(s.to_string())).collect());
        assert_eq!(choose_key(&[idx("PRIMARY", true, &["a"]), idx("u", true, &["d"])], &cols), vec!["a"]);
        assert_eq!(choose_key(&[idx("u1", true, &["b"]), idx("u2", true, &["d", "a"])], &cols), vec!["d", "a"]);
        assert!(choose_key(&[idx("i", false, &["a"]), idx("u1", true, &["b"])], &cols).is_empty());
        assert!(choose_key(&[("f".into(), true, vec![None])], &cols).is_empty(), "functional index parts");
    }
}
