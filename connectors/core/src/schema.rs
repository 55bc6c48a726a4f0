//! Table identity and schema as seen at the source.

use std::fmt;

/// Which database engine a schema or position comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    Postgres,
    Mysql,
    Sqlite,
}

/// A schema-qualified table name. Both parts are untrusted identifiers: sinks quote them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    pub schema: String,
    pub name: String,
}

impl TableId {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableId { schema: schema.into(), name: name.into() }
    }

    /// Parses `schema.table`; a name without a dot gets `default_schema`.
    /// `schema.table` (or `table` in `default_schema`). A part may be double-quoted to
    /// hold dots (`public."my.table"`, `""` for a quote inside); unquoted text splits at
    /// the first dot.
    pub fn parse(text: &str, default_schema: &str) -> Self {
        match split_parts(text).as_deref() {
            Some([schema, name]) => return TableId::new(schema.as_str(), name.as_str()),
            Some([name]) => return TableId::new(default_schema, name.as_str()),
            _ => {}
        }
        match text.split_once('.') {
            Some((schema, name)) => TableId::new(schema, name),
            None => TableId::new(default_schema, text),
        }
    }

    /// Parses `schema.table` strictly: exactly two non-empty parts (each may be quoted).
    pub fn parse_qualified(text: &str) -> Option<Self> {
        match split_parts(text)?.as_slice() {
            [schema, name] if !schema.is_empty() && !name.is_empty() => {
                Some(TableId::new(schema.as_str(), name.as_str()))
            }
            _ => None,
        }
    }
}

/// Splits `a.b` into its parts, honouring double-quoted parts; `None` when a quote is
/// not closed or text follows a closing quote.
fn split_parts(text: &str) -> Option<Vec<String>> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars().peekable();
    let mut quoted_part = false;
    while let Some(c) = chars.next() {
        let current = parts.last_mut()?;
        match c {
            '"' if current.is_empty() && !quoted_part => {
                quoted_part = true;
                loop {
                    match chars.next()? {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            current.push('"');
                        }
                        '"' => break,
                        other => current.push(other),
                    }
                }
                if !matches!(chars.peek(), None | Some('.')) {
                    return None;
                }
            }
            '.' => {
                parts.push(String::new());
                quoted_part = false;
            }
            _ if quoted_part => return None,
            other => current.push(other),
        }
    }
    Some(parts)
}

/// `schema.table`, each part double-quoted when it holds a dot or a double quote (so the
/// text parses back to the same id with [`TableId::parse`]); plain names print as they are.
impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn part(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
            if text.contains(['.', '"']) {
                write!(f, "\"{}\"", text.replace('"', "\"\""))
            } else {
                f.write_str(text)
            }
        }
        part(f, &self.schema)?;
        f.write_str(".")?;
        part(f, &self.name)
    }
}

/// Engine-neutral column type, used to map types between engines. The source's exact
/// declaration stays in [`Column::native_type`] for same-engine targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    Bool,
    Int16,
    Int32,
    Int64,
    UInt64,
    Float32,
    Float64,
    Numeric {
        precision: Option<u32>,
        scale: Option<u32>,
    },
    Text,
    Varchar(Option<u32>),
    Char(Option<u32>),
    Bytes,
    Json,
    Jsonb,
    Uuid,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Interval,
    Array,
    Enum,
    /// Anything else; `native_type` says what.
    Other,
}

impl ColumnType {
    /// Text of any length, compared by its bytes where key ranges must agree.
    pub fn is_text_like(&self) -> bool {
        matches!(self, ColumnType::Text | ColumnType::Varchar(_) | ColumnType::Char(_))
    }

    /// Values of this type sort the same way in every source and target (text compared by
    /// its bytes, as the resync reads and clears key ranges), so a key range read from a
    /// source names the same rows in any target. Not so for floats (NaN, -0), decimals (a
    /// SQLite target stores them as text), times, intervals, JSON, arrays and enums (by
    /// label order in the source, by name in a target).
    pub fn orders_alike_everywhere(&self) -> bool {
        self.is_text_like()
            || matches!(
                self,
                ColumnType::Bool
                    | ColumnType::Int16
                    | ColumnType::Int32
                    | ColumnType::Int64
                    | ColumnType::UInt64
                    | ColumnType::Bytes
                    | ColumnType::Uuid
                    | ColumnType::Date
                    | ColumnType::Timestamp
                    | ColumnType::TimestampTz
            )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: ColumnType,
    /// The source's declaration, e.g. `numeric(10,2)` or `public.mood`.
    pub native_type: String,
    pub nullable: bool,
    /// The value rows that existed before this column was added hold without any change
    /// having been logged for them (Postgres: `attmissingval` after `ADD COLUMN ...
    /// DEFAULT <constant>`), as text. A target adding the column gives them this value.
    pub existing_rows_value: Option<String>,
}

/// A source table's schema at a point in the stream. Shared (`Arc`) by every event decoded
/// under it; a new value is made whenever the source reports a schema change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub id: TableId,
    pub engine: Engine,
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the primary key (or the configured unique key), in key order.
    /// Empty for a table without a key whose rows the source identifies by their whole
    /// content (Postgres `REPLICA IDENTITY FULL`, a MySQL full row image): see
    /// [`TableSchema::is_keyless`].
    pub key: Vec<usize>,
    /// Enum type labels by native type name, so a same-engine target can create the type.
    pub enum_labels: Vec<(String, Vec<String>)>,
}

/// How a table's columns changed from one schema of it to the next (both as the source
/// reported them), for a target to follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnChanges {
    /// (old name, new name): same place, same type, new name.
    pub renamed: Vec<(String, String)>,
    /// Columns the source no longer has (and did not rename).
    pub dropped: Vec<String>,
}

impl ColumnChanges {
    /// Compares two schemas of one table. A rename is a column at the same position with
    /// the same type under a name the old schema did not have, while the column count
    /// stayed the same (sources report columns in their table order, and a rename is the
    /// only change that keeps count, order and types); anything else is drops and adds.
    pub fn between(old: &TableSchema, new: &TableSchema) -> ColumnChanges {
        let mut changes = ColumnChanges::default();
        if old.columns.len() == new.columns.len() {
            let pairs: Vec<(&Column, &Column)> =
                old.columns.iter().zip(&new.columns).filter(|(o, n)| o.name != n.name).collect();
            let is_rename = |(o, n): &(&Column, &Column)| {
                o.native_type == n.native_type
                    && new.column_index(&o.name).is_none()
                    && old.column_index(&n.name).is_none()
            };
            if !pairs.is_empty() && pairs.iter().all(is_rename) {
                changes.renamed = pairs.iter().map(|(o, n)| (o.name.clone(), n.name.clone())).collect();
                return changes;
            }
        }
        changes.dropped =
            old.columns.iter().filter(|c| new.column_index(&c.name).is_none()).map(|c| c.name.clone()).collect();
        changes
    }
}

impl TableSchema {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// No key: a row is identified by all its values. Duplicate rows are allowed; an
    /// update or delete changes exactly one row equal to the old image.
    pub fn is_keyless(&self) -> bool {
        self.key.is_empty()
    }

    /// The columns that identify a row: the key, or every column of a keyless table.
    pub fn identity(&self) -> Vec<usize> {
        if self.key.is_empty() {
            (0..self.columns.len()).collect()
        } else {
            self.key.clone()
        }
    }

    pub fn key_names(&self) -> Vec<&str> {
        self.key.iter().map(|&i| self.columns[i].name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(columns: &[(&str, &str)]) -> TableSchema {
        TableSchema {
            id: TableId::new("s", "t"),
            engine: Engine::Postgres,
            columns: columns
                .iter()
                .map(|(n, ty)| Column {
                    name: n.to_string(),
                    kind: ColumnType::Text,
                    native_type: ty.to_string(),
                    nullable: true,
                    existing_rows_value: None,
                })
                .collect(),
            key: vec![0],
            enum_labels: Vec::new(),
        }
    }

    #[test]
    fn column_changes_tell_renames_from_drops() {
        let old = shape(&[("id", "int"), ("a", "text"), ("b", "int")]);
        let renamed = ColumnChanges::between(&old, &shape(&[("id", "int"), ("a", "text"), ("bee", "int")]));
        assert_eq!(renamed, ColumnChanges { renamed: vec![("b".into(), "bee".into())], dropped: vec![] });
        let dropped = ColumnChanges::between(&old, &shape(&[("id", "int"), ("b", "int")]));
        assert_eq!(dropped, ColumnChanges { renamed: vec![], dropped: vec!["a".into()] });
        // Another type at the same place: a drop and an add, not a rename.
        let retyped = ColumnChanges::between(&old, &shape(&[("id", "int"), ("a", "text"), ("x", "bigint")]));
        assert_eq!(retyped, ColumnChanges { renamed: vec![], dropped: vec!["b".into()] });
        // A swap of two names is no rename either.
        let swapped = ColumnChanges::between(&old, &shape(&[("id", "int"), ("b", "text"), ("a", "int")]));
        assert_eq!(swapped, ColumnChanges::default());
        assert_eq!(ColumnChanges::between(&old, &old), ColumnChanges::default());
    }

    #[test]
    fn table_names_parse_with_optional_quotes() {
        let t = |s: &str, n: &str| TableId::new(s, n);
        assert_eq!(TableId::parse("public.orders", "x"), t("public", "orders"));
        assert_eq!(TableId::parse("orders", "x"), t("x", "orders"));
        assert_eq!(TableId::parse("public.my.table", "x"), t("public", "my.table"));
        assert_eq!(TableId::parse("public.\"my.table\"", "x"), t("public", "my.table"));
        assert_eq!(TableId::parse("\"odd.schema\".\"a \"\"q\"\"\"", "x"), t("odd.schema", "a \"q\""));
        assert_eq!(TableId::parse("\"solo.name\"", "x"), t("x", "solo.name"));
        assert_eq!(TableId::parse_qualified("public.\"my.table\""), Some(t("public", "my.table")));
        assert_eq!(TableId::parse_qualified("public.*"), Some(t("public", "*")));
        for id in [t("public", "my.table"), t("a\"b", "c"), t("public", "orders")] {
            assert_eq!(TableId::parse(&id.to_string(), "x"), id, "{id}");
        }
        assert_eq!(t("public", "orders").to_string(), "public.orders");
        for bad in ["orders", "a.b.c", "public.", ".t", "public.\"open", "public.\"a\"b"] {
            assert_eq!(TableId::parse_qualified(bad), None, "{bad}");
        }
    }
}
