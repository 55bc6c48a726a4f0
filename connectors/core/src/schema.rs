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
    pub fn parse(text: &str, default_schema: &str) -> Self {
        match text.split_once('.') {
            Some((schema, name)) => TableId::new(schema, name),
            None => TableId::new(default_schema, text),
        }
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
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
    pub key: Vec<usize>,
    /// Enum type labels by native type name, so a same-engine target can create the type.
    pub enum_labels: Vec<(String, Vec<String>)>,
}

impl TableSchema {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn key_names(&self) -> Vec<&str> {
        self.key.iter().map(|&i| self.columns[i].name.as_str()).collect()
    }
}
