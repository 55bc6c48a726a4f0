//! Statements in QUERY events: which tables a DDL statement touches (their cached
//! schemas are refreshed), TRUNCATE (replicated as a truncate event), and DML logged as a
//! statement (a session with `binlog_format = STATEMENT`: fatal, the rows are not in the
//! binlog).

use tidewater_core::TableId;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Dot,
    Other,
}

/// Identifiers, dots and everything else; comments skipped (`/*!...*/` version comments
/// included: their content is optional syntax like `IF NOT EXISTS`).
fn tokens(sql: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if c == '#' || (c == '-' && chars.get(i + 1) == Some(&'-')) {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '`' {
            let mut name = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == '`' {
                    if chars.get(i + 1) == Some(&'`') {
                        name.push('`');
                        i += 2;
                        continue;
                    }
                    break;
                }
                name.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(Token::Ident(name));
        } else if c == '\'' || c == '"' {
            // A string literal: skip it whole.
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(Token::Other);
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == '.' {
            out.push(Token::Dot);
            i += 1;
        } else {
            out.push(Token::Other);
            i += 1;
        }
    }
    out
}

/// What a statement means for replication.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Upper-case first keyword (`BEGIN`, `COMMIT`, `ALTER`, ...); empty for comments only.
    pub keyword: String,
    /// `ROLLBACK TO ...` / `SAVEPOINT` / `RELEASE SAVEPOINT`: no transaction boundary.
    pub savepoint: bool,
    /// Every name that could be a table (over-approximates: harmless, it only refreshes).
    pub mentioned: Vec<TableId>,
    /// `TRUNCATE [TABLE] t`.
    pub truncated: Option<TableId>,
    /// The table an INSERT/REPLACE/UPDATE/DELETE/LOAD DATA statement writes.
    pub dml_target: Option<TableId>,
}

fn name_at(t: &[Token], i: usize, default_db: &str) -> Option<(TableId, usize)> {
    match (t.get(i), t.get(i + 1), t.get(i + 2)) {
        (Some(Token::Ident(db)), Some(Token::Dot), Some(Token::Ident(name))) => Some((TableId::new(db, name), i + 3)),
        (Some(Token::Ident(name)), _, _) => Some((TableId::new(default_db, name), i + 1)),
        _ => None,
    }
}

fn is_kw(t: Option<&Token>, kw: &str) -> bool {
    matches!(t, Some(Token::Ident(w)) if w.eq_ignore_ascii_case(kw))
}

/// Reads a QUERY event's statement (`default_db`: the event's current database).
pub fn parse_statement(sql: &str, default_db: &str) -> Statement {
    let t = tokens(sql);
    let keyword = match t.first() {
        Some(Token::Ident(w)) => w.to_ascii_uppercase(),
        _ => String::new(),
    };
    let mut s = Statement { keyword, ..Statement::default() };
    s.savepoint = matches!(s.keyword.as_str(), "SAVEPOINT" | "RELEASE")
        || (s.keyword == "ROLLBACK" && (is_kw(t.get(1), "TO") || is_kw(t.get(2), "TO")));
    let mut i = 0;
    while i < t.len() {
        if let Some((id, next)) = name_at(&t, i, default_db) {
            s.mentioned.push(id);
            i = next;
        } else {
            i += 1;
        }
    }
    // The first name after leading keywords.
    let skip = |mut i: usize, words: &[&str]| {
        while words.iter().any(|w| is_kw(t.get(i), w)) {
            i += 1;
        }
        i
    };
    match s.keyword.as_str() {
        "TRUNCATE" => s.truncated = name_at(&t, skip(1, &["TABLE"]), default_db).map(|(id, _)| id),
        "INSERT" | "REPLACE" => {
            s.dml_target =
                name_at(&t, skip(1, &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"]), default_db)
                    .map(|(id, _)| id)
        }
        "UPDATE" => s.dml_target = name_at(&t, skip(1, &["LOW_PRIORITY", "IGNORE"]), default_db).map(|(id, _)| id),
        "DELETE" => {
            let from = t.iter().position(|x| is_kw(Some(x), "FROM"));
            s.dml_target = from.and_then(|f| name_at(&t, f + 1, default_db)).map(|(id, _)| id);
        }
        "LOAD" => {
            let into = t.iter().position(|x| is_kw(Some(x), "TABLE"));
            s.dml_target = into.and_then(|f| name_at(&t, f + 1, default_db)).map(|(id, _)| id);
        }
        _ => {}
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(db: &str, t: &str) -> TableId {
        TableId::new(db, t)
    }

    #[test]
    fn transaction_keywords() {
        assert_eq!(parse_statement("BEGIN", "d").keyword, "BEGIN");
        assert_eq!(parse_statement("COMMIT", "d").keyword, "COMMIT");
        let r = parse_statement("ROLLBACK", "d");
        assert_eq!(r.keyword, "ROLLBACK");
        assert!(!r.savepoint);
        assert!(parse_statement("ROLLBACK TO SAVEPOINT `a`", "d").savepoint);
        assert!(parse_statement("ROLLBACK WORK TO a", "d").savepoint);
        assert!(parse_statement("SAVEPOINT a", "d").savepoint);
        assert_eq!(parse_statement("# Dummy event replacing event type 160", "d").keyword, "");
    }

    #[test]
    fn ddl_names() {
        let s = parse_statement("ALTER TABLE `shop`.`orders` ADD COLUMN note TEXT", "x");
        assert_eq!(s.keyword, "ALTER");
        assert!(s.mentioned.contains(&id("shop", "orders")));
        let s = parse_statement("alter table orders add c int", "shop");
        assert!(s.mentioned.contains(&id("shop", "orders")));
        let s = parse_statement("RENAME TABLE a TO b, shop.c TO shop.d", "shop");
        assert!(s.mentioned.contains(&id("shop", "a")) && s.mentioned.contains(&id("shop", "d")));
        let s = parse_statement("CREATE /*!32312 IF NOT EXISTS*/ TABLE `we``ird` (x int)", "d");
        assert!(s.mentioned.contains(&id("d", "we`ird")));
        let s = parse_statement("ALTER TABLE t COMMENT 'shop.orders'", "d");
        assert!(!s.mentioned.contains(&id("shop", "orders")), "string literals are not names");
    }

    #[test]
    fn truncate_and_statement_dml() {
        assert_eq!(parse_statement("TRUNCATE TABLE `shop`.`orders`", "x").truncated, Some(id("shop", "orders")));
        assert_eq!(parse_statement("truncate orders", "shop").truncated, Some(id("shop", "orders")));
        assert_eq!(parse_statement("ALTER TABLE orders", "shop").truncated, None);
        assert_eq!(parse_statement("INSERT INTO shop.orders VALUES (1)", "x").dml_target, Some(id("shop", "orders")));
        assert_eq!(parse_statement("insert ignore into t select * from u", "d").dml_target, Some(id("d", "t")));
        assert_eq!(parse_statement("REPLACE t VALUES (1)", "d").dml_target, Some(id("d", "t")));
        assert_eq!(parse_statement("UPDATE LOW_PRIORITY t SET a = 1", "d").dml_target, Some(id("d", "t")));
        assert_eq!(parse_statement("DELETE FROM `d`.`t` WHERE 1", "x").dml_target, Some(id("d", "t")));
        assert_eq!(parse_statement("LOAD DATA INFILE 'f' INTO TABLE t", "d").dml_target, Some(id("d", "t")));
        assert_eq!(parse_statement("CREATE TABLE t (a int)", "d").dml_target, None);
    }
}
