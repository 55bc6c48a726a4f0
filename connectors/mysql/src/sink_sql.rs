//! SQL text for a MySQL/MariaDB target: server flavour, and the statements the sink runs.
//! Pure functions (no I/O), so both flavours' syntax is unit-tested without a server.

use crate::quote::quote_ident;

/// Most rows one multi-row statement carries (a power of two; see [`plan_chunks`]). Larger
/// statements were not faster in the benchmark, and a prepared statement costs the server
/// memory per placeholder (about 2 MB for 1024 rows of 4 columns, 15 MB for 8192).
pub const MAX_ROWS_PER_STATEMENT: usize = 1024;
/// MySQL's limit on placeholders in one prepared statement.
pub const MAX_PLACEHOLDERS: usize = 65_535;

/// The server the sink talks to, from `SELECT VERSION()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    pub mariadb: bool,
    pub version: (u32, u32, u32),
}

impl Server {
    /// Parses `8.0.36`, `8.4.0-log`, `10.11.19-MariaDB-0+deb12u1`, `5.5.5-10.6.12-MariaDB`.
    pub fn parse(version: &str) -> Server {
        let mariadb = version.to_ascii_lowercase().contains("mariadb");
        // MariaDB behind old clients may be prefixed with a fake `5.5.5-`.
        let text = if mariadb { version.strip_prefix("5.5.5-").unwrap_or(version) } else { version };
        let mut numbers = text
            .split(|c: char| !c.is_ascii_digit())
            .take_while(|s| !s.is_empty())
            .map(|s| s.parse::<u32>().unwrap_or(0));
        let major = numbers.next().unwrap_or(0);
        let minor = numbers.next().unwrap_or(0);
        let patch = numbers.next().unwrap_or(0);
        Server { mariadb, version: (major, minor, patch) }
    }

    /// MySQL ≥ 8.0.20 wants a row alias (`VALUES ... AS new ... new.c`) and deprecates
    /// `VALUES(c)` in `ON DUPLICATE KEY UPDATE`; MariaDB (through 11.x) rejects the alias.
    pub fn row_alias(&self) -> bool {
        !self.mariadb && self.version >= (8, 0, 20)
    }

    /// A binary utf8mb4 collation for created tables: keys compare byte for byte, so `a`
    /// and `A` (and `a` and `a `, where the server has a NO PAD binary collation) stay
    /// distinct rows, as they are in the source.
    pub fn binary_collation(&self) -> &'static str {
        if self.mariadb {
            if self.version >= (10, 2, 0) {
                "utf8mb4_nopad_bin"
            } else {
                "utf8mb4_bin"
            }
        } else if self.version >= (8, 0, 17) {
            "utf8mb4_0900_bin"
        } else {
            "utf8mb4_bin"
        }
    }

    /// `DEFAULT (expr)` on TEXT/BLOB/JSON columns: MariaDB ≥ 10.2.1, MySQL ≥ 8.0.13.
    pub fn expression_defaults(&self) -> bool {
        if self.mariadb {
            self.version >= (10, 2, 1)
        } else {
            self.version >= (8, 0, 13)
        }
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (a, b, c) = self.version;
        write!(f, "{} {a}.{b}.{c}", if self.mariadb { "MariaDB" } else { "MySQL" })
    }
}

/// The shape of one target table as the statements need it.
#[derive(Debug, Clone)]
pub struct TableSql {
    /// `` `db`.`table` ``.
    pub table: String,
    /// Quoted column names, in source column order.
    pub columns: Vec<String>,
    /// Indexes of the key columns.
    pub key: Vec<usize>,
    /// The target has a unique index other than the key's: an upsert that collides with
    /// it must fail (and be dead-lettered), not update that other row.
    pub guard: bool,
}

/// The incoming value of column `i` in `ON DUPLICATE KEY UPDATE`.
fn incoming(server: &Server, t: &TableSql, i: usize) -> String {
    if server.row_alias() {
        format!("tw_new.{}", t.columns[i])
    } else {
        format!("VALUES({})", t.columns[i])
    }
}

/// `ON DUPLICATE KEY UPDATE` assignments: every non-key column from the incoming row,
/// preceded by the guard (a key column set to NULL, which strict mode rejects, when the
/// existing row is not the one with the incoming key).
fn duplicate_key_update(t: &TableSql, existing: impl Fn(usize) -> String, new: impl Fn(usize) -> String) -> String {
    let mut sets = Vec::new();
    if t.guard {
        let same = t.key.iter().map(|&k| format!("{} <=> {}", existing(k), new(k))).collect::<Vec<_>>().join(" AND ");
        let k0 = t.key[0];
        sets.push(format!("{} = IF({same}, {}, NULL)", t.columns[k0], existing(k0)));
    }
    for i in (0..t.columns.len()).filter(|i| !t.key.contains(i)) {
        sets.push(format!("{} = {}", t.columns[i], new(i)));
    }
    if sets.is_empty() {
        // Only key columns: nothing to update, but the clause needs an assignment.
        let k0 = t.key[0];
        sets.push(format!("{} = {}", t.columns[k0], existing(k0)));
    }
    format!("ON DUPLICATE KEY UPDATE {}", sets.join(", "))
}

/// `(?, ?, ?)` for `n` placeholders.
fn tuple(n: usize) -> String {
    tuples(n, 1)
}

/// `rows` tuples of `width` placeholders, comma-separated.
fn tuples(width: usize, rows: usize) -> String {
    let one = 3 * width.max(1);
    let mut s = String::with_capacity(rows * (one + 2));
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for i in 0..width {
            if i > 0 {
                s.push_str(", ");
            }
            s.push('?');
        }
        s.push(')');
    }
    s
}

/// Multi-row upsert of full rows (every column bound, row after row).
pub fn upsert_sql(server: &Server, t: &TableSql, rows: usize) -> String {
    if t.key.is_empty() {
        // A keyless table: rows are appended (equal rows are rows of their own).
        return format!("INSERT INTO {} ({}) VALUES {}", t.table, t.columns.join(", "), tuples(t.columns.len(), rows));
    }
    let alias = if server.row_alias() { " AS tw_new" } else { "" };
    format!(
        "INSERT INTO {} ({}) VALUES {}{alias} {}",
        t.table,
        t.columns.join(", "),
        tuples(t.columns.len(), rows),
        duplicate_key_update(t, |i| t.columns[i].clone(), |i| incoming(server, t, i))
    )
}

/// Multi-key delete (key columns bound, row after row).
pub fn delete_sql(t: &TableSql, rows: usize) -> String {
    if t.key.len() == 1 {
        format!("DELETE FROM {} WHERE {} IN {}", t.table, t.columns[t.key[0]], tuple(rows))
    } else {
        let key = t.key.iter().map(|&k| t.columns[k].as_str()).collect::<Vec<_>>().join(", ");
        format!("DELETE FROM {} WHERE ({key}) IN ({})", t.table, tuples(t.key.len(), rows))
    }
}

/// Deletes `n` rows equal to one row image (every column bound, in column order; NULLs
/// match NULLs) of a keyless table.
pub fn delete_equal_sql(t: &TableSql, n: usize) -> String {
    let all = t.columns.iter().map(|c| format!("{c} <=> ?")).collect::<Vec<_>>().join(" AND ");
    format!("DELETE FROM {} WHERE {all} LIMIT {n}", t.table)
}

/// `key = ? AND ...` over `alias`'s key columns (`alias` may be empty).
fn key_match(t: &TableSql, alias: &str) -> String {
    t.key.iter().map(|&k| format!("{alias}{} = ?", t.columns[k])).collect::<Vec<_>>().join(" AND ")
}

/// Update of the columns `set` of one row by key (binds: `set` values, then key values).
/// For rows whose other columns were not sent (unchanged TOAST).
pub fn update_sql(t: &TableSql, set: &[usize]) -> String {
    let sets = set.iter().map(|&i| format!("{} = ?", t.columns[i])).collect::<Vec<_>>().join(", ");
    format!("UPDATE {} SET {sets} WHERE {}", t.table, key_match(t, ""))
}

/// A row moved to a new key with some columns not sent (`sent[i]` false): inserted at the
/// new key with those columns taken from the old key's row. Binds: the sent columns' values
/// in column order, then the old key's values.
pub fn move_sql(server: &Server, t: &TableSql, sent: &[bool]) -> String {
    let columns = t.columns.join(", ");
    let from_old = format!("FROM {} AS tw_old WHERE {}", t.table, key_match(t, "tw_old."));
    // In ON DUPLICATE KEY UPDATE the existing row is named by the full table name: the
    // SELECT reads the same table under the alias tw_old.
    let existing = |i: usize| format!("{}.{}", t.table, t.columns[i]);
    if server.row_alias() {
        let select = (0..t.columns.len())
            .map(|i| if sent[i] { format!("? AS c{i}") } else { format!("tw_old.{} AS c{i}", t.columns[i]) })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "INSERT INTO {} ({columns}) SELECT * FROM (SELECT {select} {from_old}) AS tw_new {}",
            t.table,
            duplicate_key_update(t, existing, |i| format!("tw_new.c{i}"))
        )
    } else {
        let select = (0..t.columns.len())
            .map(|i| if sent[i] { "?".to_string() } else { format!("tw_old.{}", t.columns[i]) })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "INSERT INTO {} ({columns}) SELECT {select} {from_old} {}",
            t.table,
            duplicate_key_update(t, existing, |i| format!("VALUES({})", t.columns[i]))
        )
    }
}

/// `DELETE FROM t`: a source TRUNCATE. (MySQL's TRUNCATE is DDL and commits the open
/// transaction, so it cannot be part of a batch.)
/// Deletes the rows of a key range (see `tidewater_core::KeyRange`): key greater than
/// the first bound's placeholders (`after`), at most the next ones (`upto`), not one of
/// `keep` tuples. Key columns listed in `bytewise` are compared by their bytes.
pub fn clear_sql(t: &TableSql, bytewise: &[bool], after: bool, upto: bool, keep: usize) -> String {
    let keys = t
        .key
        .iter()
        .zip(bytewise)
        .map(|(&k, &b)| if b { format!("BINARY {}", t.columns[k]) } else { t.columns[k].clone() })
        .collect::<Vec<_>>()
        .join(", ");
    let mut terms = Vec::new();
    if after {
        terms.push(format!("({keys}) > {}", tuple(t.key.len())));
    }
    if upto {
        terms.push(format!("({keys}) <= {}", tuple(t.key.len())));
    }
    if keep > 0 {
        let plain = t.key.iter().map(|&k| t.columns[k].as_str()).collect::<Vec<_>>().join(", ");
        terms.push(format!("({plain}) NOT IN ({})", tuples(t.key.len(), keep)));
    }
    if terms.is_empty() {
        return truncate_sql(t);
    }
    format!("DELETE FROM {} WHERE {}", t.table, terms.join(" AND "))
}

pub fn truncate_sql(t: &TableSql) -> String {
    format!("DELETE FROM {}", t.table)
}

/// One column of a table being created or altered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDecl {
    pub name: String,
    pub mysql_type: String,
    pub key: bool,
    /// A literal for `DEFAULT` (existing rows' value of an added column).
    pub default: Option<String>,
}

fn column_definition(server: &Server, c: &ColumnDecl) -> String {
    let mut s = format!("{} {}", quote_ident(&c.name), c.mysql_type);
    s.push_str(if c.key { " NOT NULL" } else { " NULL" });
    if let Some(d) = &c.default {
        if crate::sink_types::needs_expression_default(&c.mysql_type) && server.expression_defaults() {
            s.push_str(&format!(" DEFAULT ({d})"));
        } else {
            s.push_str(&format!(" DEFAULT {d}"));
        }
    }
    s
}

pub fn create_database_sql(server: &Server, database: &str) -> String {
    format!(
        "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4 COLLATE {}",
        quote_ident(database),
        server.binary_collation()
    )
}

pub fn create_table_sql(server: &Server, table: &str, columns: &[ColumnDecl]) -> String {
    let defs = columns.iter().map(|c| column_definition(server, c)).collect::<Vec<_>>();
    let key = columns.iter().filter(|c| c.key).map(|c| quote_ident(&c.name)).collect::<Vec<_>>();
    let primary_key = if key.is_empty() { String::new() } else { format!(", PRIMARY KEY ({})", key.join(", ")) };
    format!(
        "CREATE TABLE IF NOT EXISTS {table} ({}{primary_key}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={}",
        defs.join(", "),
        server.binary_collation()
    )
}

pub fn add_column_sql(server: &Server, table: &str, column: &ColumnDecl) -> String {
    format!("ALTER TABLE {table} ADD COLUMN {}", column_definition(server, column))
}

pub fn modify_column_sql(server: &Server, table: &str, column: &ColumnDecl) -> String {
    format!("ALTER TABLE {table} MODIFY COLUMN {}", column_definition(server, column))
}

/// One multi-row statement of a [`plan_chunks`] plan: rows `start..start + rows`, sent in a
/// statement made for `size` rows (`size > rows`: the last row fills the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub start: usize,
    pub rows: usize,
    pub size: usize,
}

/// Splits rows of `row_bytes` bytes with `params_per_row` placeholders into multi-row
/// statements: power-of-two sizes (so a handful of distinct statements are prepared and
/// cached per table), at most [`MAX_ROWS_PER_STATEMENT`] rows and [`MAX_PLACEHOLDERS`]
/// placeholders, and about `byte_budget` bytes (a single larger row goes alone).
///
/// With `pad`, for statements where a repeated row changes nothing (a `DELETE ... IN` list
/// of keys), the rows after the last full statement go in one statement of the next power
/// of two, the last row repeated, instead of one statement per set bit of their count:
/// fewer round trips for batches of any size.
pub fn plan_chunks(row_bytes: &[usize], params_per_row: usize, byte_budget: usize, pad: bool) -> Vec<Chunk> {
    let max_rows = max_rows_per_statement(params_per_row);
    let mut prefix = Vec::with_capacity(row_bytes.len() + 1);
    prefix.push(0usize);
    for b in row_bytes {
        prefix.push(prefix.last().copied().unwrap_or(0).saturating_add(*b));
    }
    let mut out = Vec::new();
    let mut start = 0;
    while start < row_bytes.len() {
        let left = row_bytes.len() - start;
        let bytes = |rows: usize| prefix[start + rows] - prefix[start];
        if pad && left < max_rows && !left.is_power_of_two() {
            let size = left.next_power_of_two();
            let last = row_bytes[row_bytes.len() - 1];
            if bytes(left).saturating_add((size - left).saturating_mul(last)) <= byte_budget {
                out.push(Chunk { start, rows: left, size });
                break;
            }
        }
        let mut rows = prev_power_of_two(left.min(max_rows));
        while rows > 1 && bytes(rows) > byte_budget {
            rows /= 2;
        }
        out.push(Chunk { start, rows, size: rows });
        start += rows;
    }
    out
}

/// The most rows one statement of [`plan_chunks`] holds with `params_per_row` placeholders
/// per row (a power of two).
pub fn max_rows_per_statement(params_per_row: usize) -> usize {
    prev_power_of_two((MAX_PLACEHOLDERS / params_per_row.max(1)).clamp(1, MAX_ROWS_PER_STATEMENT))
}

fn prev_power_of_two(n: usize) -> usize {
    if n <= 1 {
        1
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARIADB: Server = Server { mariadb: true, version: (10, 11, 19) };
    const MYSQL8: Server = Server { mariadb: false, version: (8, 0, 36) };
    const MYSQL57: Server = Server { mariadb: false, version: (5, 7, 44) };

    fn orders(guard: bool) -> TableSql {
        TableSql {
            table: "`shop`.`orders`".into(),
            columns: vec!["`id`".into(), "`note`".into(), "`total`".into()],
            key: vec![0],
            guard,
        }
    }

    #[test]
    fn flavours_from_version_strings() {
        assert_eq!(Server::parse("10.11.19-MariaDB-0+deb12u1"), MARIADB);
        assert_eq!(Server::parse("5.5.5-10.6.12-MariaDB-log"), Server { mariadb: true, version: (10, 6, 12) });
        assert_eq!(Server::parse("8.0.36"), MYSQL8);
        assert_eq!(Server::parse("8.4.0-log").version, (8, 4, 0));
        assert!(!MARIADB.row_alias());
        assert!(MYSQL8.row_alias());
        assert!(!Server::parse("8.0.19").row_alias());
        assert!(Server::parse("8.0.20").row_alias());
        assert!(!MYSQL57.row_alias());
        assert_eq!(MARIADB.binary_collation(), "utf8mb4_nopad_bin");
        assert_eq!(MYSQL8.binary_collation(), "utf8mb4_0900_bin");
        assert_eq!(MYSQL57.binary_collation(), "utf8mb4_bin");
        assert_eq!(MARIADB.to_string(), "MariaDB 10.11.19");
    }

    #[test]
    fn upsert_uses_values_on_mariadb_and_a_row_alias_on_mysql8() {
        assert_eq!(
            upsert_sql(&MARIADB, &orders(false), 2),
            "INSERT INTO `shop`.`orders` (`id`, `note`, `total`) VALUES (?, ?, ?), (?, ?, ?) \
             ON DUPLICATE KEY UPDATE `note` = VALUES(`note`), `total` = VALUES(`total`)"
        );
        assert_eq!(upsert_sql(&MYSQL57, &orders(false), 1), upsert_sql(&MARIADB, &orders(false), 1));
        assert_eq!(
            upsert_sql(&MYSQL8, &orders(false), 2),
            "INSERT INTO `shop`.`orders` (`id`, `note`, `total`) VALUES (?, ?, ?), (?, ?, ?) AS tw_new \
             ON DUPLICATE KEY UPDATE `note` = tw_new.`note`, `total` = tw_new.`total`"
        );
    }

    #[test]
    fn upsert_guard_and_key_only_tables() {
        assert_eq!(
            upsert_sql(&MARIADB, &orders(true), 1),
            "INSERT INTO `shop`.`orders` (`id`, `note`, `total`) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE `id` = IF(`id` <=> VALUES(`id`), `id`, NULL), \
             `note` = VALUES(`note`), `total` = VALUES(`total`)"
        );
        let link = TableSql {
            table: "`db`.`link`".into(),
            columns: vec!["`a`".into(), "`b`".into()],
            key: vec![0, 1],
            guard: false,
        };
        assert_eq!(
            upsert_sql(&MYSQL8, &link, 1),
            "INSERT INTO `db`.`link` (`a`, `b`) VALUES (?, ?) AS tw_new ON DUPLICATE KEY UPDATE `a` = `a`"
        );
        let guarded = TableSql { guard: true, ..link };
        assert_eq!(
            upsert_sql(&MYSQL8, &guarded, 1),
            "INSERT INTO `db`.`link` (`a`, `b`) VALUES (?, ?) AS tw_new ON DUPLICATE KEY UPDATE \
             `a` = IF(`a` <=> tw_new.`a` AND `b` <=> tw_new.`b`, `a`, NULL)"
        );
    }

    #[test]
    fn deletes_by_single_and_composite_keys() {
        assert_eq!(delete_sql(&orders(false), 3), "DELETE FROM `shop`.`orders` WHERE `id` IN (?, ?, ?)");
        let link = TableSql {
            table: "`db`.`link`".into(),
            columns: vec!["`a`".into(), "`b`".into()],
            key: vec![1, 0],
            guard: false,
        };
        assert_eq!(delete_sql(&link, 2), "DELETE FROM `db`.`link` WHERE (`b`, `a`) IN ((?, ?), (?, ?))");
    }

    #[test]
    fn key_ranges_are_cleared_by_bytes_for_text_keys() {
        let mut t = orders(false);
        t.key = vec![0, 1];
        assert_eq!(
            clear_sql(&t, &[false, true], true, true, 2),
            format!(
                "DELETE FROM `shop`.`orders` WHERE ({c0}, BINARY {c1}) > (?, ?) AND ({c0}, BINARY {c1}) <= (?, ?) \
                 AND ({c0}, {c1}) NOT IN ((?, ?), (?, ?))",
                c0 = t.columns[0],
                c1 = t.columns[1]
            )
        );
        assert_eq!(clear_sql(&t, &[false, false], false, false, 0), "DELETE FROM `shop`.`orders`");
    }

    #[test]
    fn partial_updates_and_truncate() {
        assert_eq!(update_sql(&orders(false), &[2]), "UPDATE `shop`.`orders` SET `total` = ? WHERE `id` = ?");
        assert_eq!(truncate_sql(&orders(false)), "DELETE FROM `shop`.`orders`");
    }

    #[test]
    fn moves_read_unsent_columns_from_the_old_row() {
        let sent = [true, false, true];
        assert_eq!(
            move_sql(&MARIADB, &orders(false), &sent),
            "INSERT INTO `shop`.`orders` (`id`, `note`, `total`) SELECT ?, tw_old.`note`, ? \
             FROM `shop`.`orders` AS tw_old WHERE tw_old.`id` = ? \
             ON DUPLICATE KEY UPDATE `note` = VALUES(`note`), `total` = VALUES(`total`)"
        );
        assert_eq!(
            move_sql(&MYSQL8, &orders(true), &sent),
            "INSERT INTO `shop`.`orders` (`id`, `note`, `total`) SELECT * FROM (SELECT ? AS c0, \
             tw_old.`note` AS c1, ? AS c2 FROM `shop`.`orders` AS tw_old WHERE tw_old.`id` = ?) AS tw_new \
             ON DUPLICATE KEY UPDATE `id` = IF(`shop`.`orders`.`id` <=> tw_new.c0, `shop`.`orders`.`id`, NULL), \
             `note` = tw_new.c1, `total` = tw_new.c2"
        );
    }

    #[test]
    fn ddl() {
        let cols = vec![
            ColumnDecl { name: "id".into(), mysql_type: "BIGINT".into(), key: true, default: None },
            ColumnDecl { name: "we`ird".into(), mysql_type: "LONGTEXT".into(), key: false, default: None },
        ];
        assert_eq!(
            create_table_sql(&MARIADB, "`db`.`t`", &cols),
            "CREATE TABLE IF NOT EXISTS `db`.`t` (`id` BIGINT NOT NULL, `we``ird` LONGTEXT NULL, PRIMARY KEY (`id`)) \
             ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin"
        );
        let text =
            ColumnDecl { name: "c".into(), mysql_type: "LONGTEXT".into(), key: false, default: Some("'x'".into()) };
        assert_eq!(
            add_column_sql(&MYSQL8, "`db`.`t`", &text),
            "ALTER TABLE `db`.`t` ADD COLUMN `c` LONGTEXT NULL DEFAULT ('x')"
        );
        let int = ColumnDecl { name: "n".into(), mysql_type: "INT".into(), key: false, default: Some("5".into()) };
        assert_eq!(
            add_column_sql(&MARIADB, "`db`.`t`", &int),
            "ALTER TABLE `db`.`t` ADD COLUMN `n` INT NULL DEFAULT 5"
        );
        assert_eq!(
            modify_column_sql(&MARIADB, "`db`.`t`", &ColumnDecl { default: None, ..int }),
            "ALTER TABLE `db`.`t` MODIFY COLUMN `n` INT NULL"
        );
        assert_eq!(
            create_database_sql(&MYSQL8, "replica"),
            "CREATE DATABASE IF NOT EXISTS `replica` CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_bin"
        );
    }

    /// The row counts of a plan.
    fn sizes(plan: &[Chunk]) -> Vec<usize> {
        plan.iter().map(|c| c.rows).collect()
    }

    #[test]
    fn chunks_are_powers_of_two_within_limits() {
        let plain =
            |rows: usize, params: usize, budget: usize| sizes(&plan_chunks(&vec![10; rows], params, budget, false));
        assert_eq!(plain(1000, 3, 1 << 20), vec![512, 256, 128, 64, 32, 8]);
        assert_eq!(plain(3000, 3, 1 << 20), vec![1024, 1024, 512, 256, 128, 32, 16, 8]);
        // 65535 / 100 placeholders per row = 655 rows → 512.
        assert_eq!(plain(600, 100, 1 << 20), vec![512, 64, 16, 8]);
        // A byte budget of 25 bytes fits two rows of 10.
        assert_eq!(plain(5, 1, 25), vec![2, 2, 1]);
        // A row larger than the budget goes alone.
        assert_eq!(sizes(&plan_chunks(&[100, 1, 1], 1, 50, false)), vec![1, 2]);
        assert!(plan_chunks(&[], 1, 10, false).is_empty());
        assert_eq!(sizes(&plan_chunks(&[1; 5], 70_000, 100, false)), vec![1; 5]);
        let plan = plan_chunks(&[10; 3], 1, 1 << 20, false);
        assert_eq!(plan, vec![Chunk { start: 0, rows: 2, size: 2 }, Chunk { start: 2, rows: 1, size: 1 }]);
    }

    #[test]
    fn padded_chunks_fill_the_rest_with_one_statement() {
        assert_eq!(plan_chunks(&[10; 1000], 1, 1 << 20, true), vec![Chunk { start: 0, rows: 1000, size: 1024 }]);
        assert_eq!(
            plan_chunks(&[10; 1032], 1, 1 << 20, true),
            vec![Chunk { start: 0, rows: 1024, size: 1024 }, Chunk { start: 1024, rows: 8, size: 8 }]
        );
        assert_eq!(
            plan_chunks(&[10; 2051], 1, 1 << 20, true),
            vec![
                Chunk { start: 0, rows: 1024, size: 1024 },
                Chunk { start: 1024, rows: 1024, size: 1024 },
                Chunk { start: 2048, rows: 3, size: 4 }
            ]
        );
        // Padding that would break the byte budget: plain powers of two instead.
        assert_eq!(sizes(&plan_chunks(&[10; 5], 1, 70, true)), vec![4, 1]);
        assert_eq!(plan_chunks(&[10; 5], 1, 80, true), vec![Chunk { start: 0, rows: 5, size: 8 }]);
    }
}
