//! The SQL of `verify`'s scratch-table comparison, written once for every engine.
//!
//! The scratch table holds the source's rows as the sink stores them; the comparison
//! matches it with the target table by key (`LEFT JOIN` one way, `NOT EXISTS` the other)
//! and compares the source's columns with the engine's own notion of "different value".

use crate::schema::TableSchema;
use crate::traits::{Comparison, Difference};

/// What differs between engines in the comparison queries.
pub struct CompareDialect {
    pub quote_ident: fn(&str) -> String,
    /// A condition true when column expressions `a` and `b` hold different values
    /// (NULL-safe).
    pub differs: fn(&str, &str) -> String,
    /// An expression counting the rows where a condition holds (an aggregate).
    pub count_if: fn(&str) -> String,
    /// A text expression holding a JSON array of the texts of the given key columns.
    pub key_json: fn(&[String]) -> String,
    /// `SELECT … LIMIT n` made into an operand of `UNION ALL`.
    pub limited: fn(&str, usize) -> String,
}

/// The two queries of a comparison.
pub struct CompareSql {
    /// One row: target rows, missing, differing, extra (integers).
    pub counts: String,
    /// Rows of (tag, key as JSON text); see [`Comparison::add_example`].
    pub examples: String,
}

/// The comparison of `scratch` (source rows) with `target`, both already quoted and
/// qualified, over `schema`'s columns.
///
/// A table without a key is compared as a multiset: in both tables each row gets its
/// number among the rows equal to it (`row_number()` over all columns), and the rows are
/// matched on every column (NULL-safe) plus that number, so a duplicate missing on one side
/// counts as missing (or extra) and nothing counts as "different".
pub fn compare_sql(d: &CompareDialect, schema: &TableSchema, scratch: &str, target: &str, n: usize) -> CompareSql {
    let col = |alias: &str, i: usize| format!("{alias}.{}", (d.quote_ident)(&schema.columns[i].name));
    let every: Vec<usize> = (0..schema.columns.len()).collect();
    let keyless = schema.key.is_empty();
    let key_idx: &[usize] = if keyless { &every } else { &schema.key };
    let differs = every.iter().map(|&i| (d.differs)(&col("s", i), &col("t", i))).collect::<Vec<_>>().join(" OR ");
    let (from_scratch, from_target, join, absent) = if keyless {
        let all = every.iter().map(|&i| col("x", i)).collect::<Vec<_>>().join(", ");
        let numbered = |table: &str| {
            format!("(SELECT x.*, row_number() OVER (PARTITION BY {all} ORDER BY {all}) AS tw_dup FROM {table} x)")
        };
        (
            numbered(scratch),
            numbered(target),
            format!("s.tw_dup = t.tw_dup AND NOT ({differs})"),
            "t.tw_dup IS NULL".into(),
        )
    } else {
        let join =
            key_idx.iter().map(|&i| format!("{} = {}", col("s", i), col("t", i))).collect::<Vec<_>>().join(" AND ");
        // After the LEFT JOIN a key column of `t` is NULL only when no target row matched:
        // key columns of a real row are never NULL.
        let absent = format!("{} IS NULL", col("t", key_idx[0]));
        (scratch.to_string(), target.to_string(), join, absent)
    };
    let key = |alias: &str| (d.key_json)(&key_idx.iter().map(|&i| col(alias, i)).collect::<Vec<_>>());
    let paired = format!("{from_scratch} s LEFT JOIN {from_target} t ON {join}");
    let unpaired = format!("{from_target} t WHERE NOT EXISTS (SELECT 1 FROM {from_scratch} s WHERE {join})");
    let changed = format!("NOT ({absent}) AND ({differs})");
    let counts = format!(
        "SELECT (SELECT count(*) FROM {target}), {}, {}, (SELECT count(*) FROM {unpaired}) FROM {paired}",
        (d.count_if)(&absent),
        (d.count_if)(&changed),
    );
    let examples = [
        (d.limited)(&format!("SELECT 'm', {} FROM {paired} WHERE {absent}", key("s")), n),
        (d.limited)(&format!("SELECT 'd', {} FROM {paired} WHERE {changed}", key("s")), n),
        (d.limited)(&format!("SELECT 'e', {} FROM {unpaired}", key("t")), n),
    ]
    .join(" UNION ALL ");
    CompareSql { counts, examples }
}

impl Comparison {
    /// A comparison from the four integers of [`CompareSql::counts`].
    pub fn from_counts(target_rows: i64, missing: i64, differing: i64, extra: i64) -> Self {
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Comparison {
            target_rows: n(target_rows),
            missing: n(missing),
            differing: n(differing),
            extra: n(extra),
            examples: Vec::new(),
        }
    }

    /// Adds one row of [`CompareSql::examples`].
    pub fn add_example(&mut self, tag: &str, key_json: &str) {
        let Some(kind) = Difference::from_tag(tag) else { return };
        let key: Vec<Option<String>> = serde_json::from_str(key_json).unwrap_or_default();
        self.examples.push((kind, key.into_iter().map(|k| k.unwrap_or_else(|| "NULL".into())).collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Column, ColumnType, Engine, TableId};

    #[test]
    fn comparison_queries_match_by_key_and_compare_every_column() {
        let column = |name: &str| Column {
            name: name.into(),
            kind: ColumnType::Int32,
            native_type: "int".into(),
            nullable: true,
            existing_rows_value: None,
        };
        let schema = TableSchema {
            id: TableId::new("public", "t"),
            engine: Engine::Postgres,
            columns: vec![column("id"), column("v")],
            key: vec![0],
            enum_labels: Vec::new(),
        };
        let d = CompareDialect {
            quote_ident: |s| format!("\"{s}\""),
            differs: |a, b| format!("{a} IS DISTINCT FROM {b}"),
            count_if: |c| format!("count(*) FILTER (WHERE {c})"),
            key_json: |cols| format!("json_build_array({})::text", cols.join(", ")),
            limited: |sql, n| format!("({sql} LIMIT {n})"),
        };
        let sql = compare_sql(&d, &schema, "x.s", "x.t", 3);
        assert!(sql.counts.contains("x.s s LEFT JOIN x.t t ON s.\"id\" = t.\"id\""), "{}", sql.counts);
        assert!(sql.counts.contains("s.\"v\" IS DISTINCT FROM t.\"v\""), "{}", sql.counts);
        assert!(sql.counts.contains("count(*) FILTER (WHERE t.\"id\" IS NULL)"), "{}", sql.counts);
        assert_eq!(sql.examples.matches("LIMIT 3").count(), 3, "{}", sql.examples);

        let mut c = Comparison::from_counts(5, 1, 0, 2);
        assert!(!c.matches());
        c.add_example("e", r#"["7", null]"#);
        c.add_example("?", "[]");
        assert_eq!(c.examples, vec![(Difference::Extra, vec!["7".to_string(), "NULL".to_string()])]);
        assert!(Comparison::from_counts(5, 0, 0, 0).matches());
    }
}
