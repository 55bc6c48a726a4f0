//! Identifier quoting for MySQL/MariaDB: the one place the connector turns names into SQL.
//!
//! Identifiers are wrapped in backticks with embedded backticks doubled, which MySQL and
//! MariaDB read back verbatim whatever the `sql_mode` (`ANSI_QUOTES` only adds `"` as a
//! second quote character). Values are never formatted into SQL: they are bound.

use tidewater_core::TableId;

/// `` `name` ``, with every backtick in `name` doubled.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        if c == '`' {
            out.push('`');
        }
        out.push(c);
    }
    out.push('`');
    out
}

/// `` `schema`.`table` `` (in MySQL the schema part names a database).
pub fn quote_table(id: &TableId) -> String {
    format!("{}.{}", quote_ident(&id.schema), quote_ident(&id.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backticks_are_doubled_and_everything_else_kept() {
        assert_eq!(quote_ident("orders"), "`orders`");
        assert_eq!(quote_ident("we`ird"), "`we``ird`");
        assert_eq!(quote_ident("``"), "``````");
        assert_eq!(quote_ident("a b.\"c\"'; DROP"), "`a b.\"c\"'; DROP`");
        assert_eq!(quote_ident("Grüße 🌊"), "`Grüße 🌊`");
        assert_eq!(quote_table(&TableId::new("sh`op", "t.x")), "`sh``op`.`t.x`");
    }
}
