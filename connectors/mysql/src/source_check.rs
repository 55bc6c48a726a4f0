//! What the source server must provide: binlog settings and grants. Pure functions over
//! what the server reports, so every rule is unit-tested without a server.

use std::collections::HashMap;

use crate::source_conn::{Flavour, ServerInfo};

/// Global variables the checks read (`SHOW GLOBAL VARIABLES WHERE Variable_name IN ...`).
pub const VARIABLES: &[&str] = &[
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "binlog_row_metadata",
    "binlog_checksum",
    "log_bin_compress",
    "binlog_row_value_options",
    "server_id",
    "binlog_expire_logs_seconds",
    "expire_logs_days",
];

/// The outcome of the settings check: problems that stop the pipeline (each with its
/// fix) and advice worth a warning.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SettingsReport {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

fn var<'a>(vars: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    vars.get(name).map(String::as_str)
}

fn is_on(v: Option<&str>) -> bool {
    matches!(v.map(str::to_ascii_uppercase).as_deref(), Some("ON" | "1" | "TRUE"))
}

/// Checks the binlog settings (variable names lowercase) and `server_id` (the replica id
/// tidewater registers with).
pub fn check_settings(
    vars: &HashMap<String, String>,
    info: &ServerInfo,
    server_id: u32,
    source_key: &str,
) -> SettingsReport {
    let mut r = SettingsReport::default();
    let cnf = match info.flavour {
        Flavour::MariaDb => "the [mariadb] section of the server's configuration",
        Flavour::MySql => "the [mysqld] section of my.cnf",
    };
    if !is_on(var(vars, "log_bin")) {
        r.errors.push(format!(
            "binary logging is off (log_bin = {}): set log_bin (and server_id) in {cnf} and restart the server",
            var(vars, "log_bin").unwrap_or("unknown")
        ));
    }
    let upper = |name: &str| var(vars, name).map(str::to_ascii_uppercase);
    match upper("binlog_format").as_deref() {
        Some("ROW") => {}
        other => r.errors.push(format!(
            "binlog_format is {}, row changes need binlog_format = ROW: SET GLOBAL binlog_format = 'ROW' and set it in {cnf}",
            other.unwrap_or("unknown")
        )),
    }
    match upper("binlog_row_image").as_deref() {
        Some("FULL") => {}
        other => r.errors.push(format!(
            "binlog_row_image is {}, whole rows need binlog_row_image = FULL: SET GLOBAL binlog_row_image = 'FULL' and set it in {cnf}",
            other.unwrap_or("unknown")
        )),
    }
    match upper("binlog_row_metadata").as_deref() {
        Some("FULL") => {}
        other => r.warnings.push(format!(
            "binlog_row_metadata is {}: with FULL, binlog table maps carry column names, so a table altered while \
             tidewater is behind is still decoded by name (SET GLOBAL binlog_row_metadata = 'FULL' and set it in {cnf})",
            other.unwrap_or("not supported by this server")
        )),
    }
    if is_on(var(vars, "log_bin_compress")) {
        r.errors.push(
            "log_bin_compress is ON: compressed binlog events cannot be decoded; SET GLOBAL log_bin_compress = OFF"
                .to_string(),
        );
    }
    if let Some(opts) = var(vars, "binlog_row_value_options").filter(|v| !v.trim().is_empty()) {
        r.errors.push(format!(
            "binlog_row_value_options is {opts}: partial JSON updates carry no whole row; SET GLOBAL binlog_row_value_options = ''"
        ));
    }
    if server_id == 0 {
        r.errors.push(format!("{source_key}.server_id is 0: choose a replica id unique among the source's replicas"));
    }
    if let Some(own) = var(vars, "server_id").and_then(|s| s.parse::<u32>().ok()) {
        if own == server_id {
            r.errors.push(format!(
                "{source_key}.server_id = {server_id} is the source server's own server_id: choose another, unique among its replicas"
            ));
        }
    }
    let expire_secs = var(vars, "binlog_expire_logs_seconds").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let expire_days = var(vars, "expire_logs_days").and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let expire = if expire_secs > 0 { expire_secs } else { (expire_days * 86_400.0) as u64 };
    if expire > 0 && expire < 86_400 {
        r.warnings.push(format!(
            "binlogs expire after {expire} s: if tidewater is stopped longer than that, the binlog it needs is purged and \
             the pipeline must be re-snapshotted"
        ));
    }
    r
}

/// One `GRANT ... ON ... TO ...` line: its privileges (upper case) and object.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    privileges: Vec<String>,
    /// Database pattern (unquoted; `*` for all) and table (`*` for all).
    db: String,
    table: String,
}

/// The privileges `SHOW GRANTS` reports for the current user.
#[derive(Debug, Default)]
pub struct Grants {
    grants: Vec<Grant>,
    /// The user has roles: their privileges are not listed, so a missing one may be there.
    has_roles: bool,
}

/// Splits on commas outside parentheses (column lists: `SELECT (a, b)`).
fn split_top_level(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut cur) = (0i32, String::new());
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Reads one identifier (`` `quoted` `` or bare, or `*`) from the front of `s`.
fn take_ident(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    if let Some(rest) = s.strip_prefix('`') {
        let mut out = String::new();
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '`' {
                if matches!(chars.peek(), Some((_, '`'))) {
                    chars.next();
                    out.push('`');
                    continue;
                }
                return Some((out, &rest[i + 1..]));
            }
            out.push(c);
        }
        None
    } else {
        let end = s.find(|c: char| c == '.' || c.is_whitespace()).unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_string(), &s[end..]))
    }
}

impl Grants {
    pub fn parse<S: AsRef<str>>(lines: &[S]) -> Grants {
        let mut g = Grants::default();
        for line in lines {
            let line = line.as_ref().trim();
            let Some(body) = line.strip_prefix("GRANT ") else { continue };
            let Some(on) = body.find(" ON ") else {
                // `GRANT role TO user`
                g.has_roles = true;
                continue;
            };
            let privileges = split_top_level(&body[..on])
                .into_iter()
                .map(|p| {
                    let name = p.split('(').next().unwrap_or("").trim().to_ascii_uppercase();
                    if name == "ALL" {
                        "ALL PRIVILEGES".to_string()
                    } else {
                        name
                    }
                })
                .collect();
            let object = &body[on + 4..];
            let object = object.strip_prefix("TABLE ").unwrap_or(object);
            let Some((db, rest)) = take_ident(object) else { continue };
            let table = match rest.strip_prefix('.') {
                Some(rest) => take_ident(rest).map(|(t, _)| t).unwrap_or_default(),
                None => String::new(),
            };
            g.grants.push(Grant { privileges, db, table });
        }
        g
    }

    fn global(&self, privilege: &str) -> bool {
        self.grants.iter().any(|g| {
            g.db == "*" && g.table == "*" && g.privileges.iter().any(|p| p == privilege || p == "ALL PRIVILEGES")
        })
    }

    /// SELECT on every table of `db` (globally, on the database, or table by table on
    /// `tables`).
    fn can_select(&self, db: &str, tables: &[&str]) -> bool {
        let has = |g: &Grant| g.privileges.iter().any(|p| p == "SELECT" || p == "ALL PRIVILEGES");
        let db_match = |g: &Grant| g.db == "*" || like(&g.db, db);
        if self.grants.iter().any(|g| has(g) && db_match(g) && g.table == "*") {
            return true;
        }
        !tables.is_empty() && tables.iter().all(|t| self.grants.iter().any(|g| has(g) && db_match(g) && g.table == *t))
    }

    /// The privileges the source user lacks, each as the statement that grants it.
    /// `tables` are the replicated tables by database.
    pub fn missing(&self, info: &ServerInfo, user: &str, tables: &[(String, Vec<String>)]) -> Vec<String> {
        let mut missing = Vec::new();
        let who = format!("'{}'@'%'", user.replace('\'', "''"));
        let mut global = vec!["REPLICATION SLAVE"];
        let monitor = info.binlog_monitor_privilege();
        // MariaDB 10.5 renamed REPLICATION CLIENT to BINLOG MONITOR; either spelling works.
        let has_monitor = self.global(monitor) || self.global("REPLICATION CLIENT") || self.global("BINLOG MONITOR");
        if info.flavour == Flavour::MySql {
            global.push("RELOAD"); // FLUSH TABLES WITH READ LOCK for the snapshot
        }
        for p in global {
            if !self.global(p) {
                missing.push(format!("GRANT {p} ON *.* TO {who}"));
            }
        }
        if !has_monitor {
            missing.push(format!("GRANT {monitor} ON *.* TO {who}"));
        }
        for (db, names) in tables {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            if !self.can_select(db, &names) {
                missing.push(format!("GRANT SELECT ON `{}`.* TO {who}", db.replace('`', "``")));
            }
        }
        missing
    }

    pub fn has_roles(&self) -> bool {
        self.has_roles
    }
}

/// SQL `LIKE` as used in grant database names: `%`, `_`, and `\` escapes.
fn like(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('%', rest)) => (0..=t.len()).any(|i| go(rest, &t[i..])),
            Some(('_', rest)) => !t.is_empty() && go(rest, &t[1..]),
            Some(('\\', rest)) if !rest.is_empty() => t.first() == rest.first() && go(&rest[1..], &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn good() -> HashMap<String, String> {
        vars(&[
            ("log_bin", "ON"),
            ("binlog_format", "ROW"),
            ("binlog_row_image", "FULL"),
            ("binlog_row_metadata", "FULL"),
            ("server_id", "1"),
        ])
    }

    #[test]
    fn settings_name_their_fix() {
        let maria = ServerInfo::parse("10.11.6-MariaDB");
        assert_eq!(check_settings(&good(), &maria, 4201, "sources.shop"), SettingsReport::default());
        let mut v = good();
        v.insert("binlog_format".into(), "MIXED".into());
        v.insert("binlog_row_image".into(), "MINIMAL".into());
        v.insert("log_bin".into(), "OFF".into());
        let r = check_settings(&v, &maria, 4201, "sources.shop");
        assert_eq!(r.errors.len(), 3, "{r:?}");
        assert!(r.errors[0].contains("log_bin"));
        assert!(r.errors[1].contains("binlog_format = ROW"));
        assert!(r.errors[2].contains("binlog_row_image = FULL"));
        let mut v = good();
        v.remove("binlog_row_metadata");
        let r = check_settings(&v, &maria, 4201, "sources.shop");
        assert!(r.errors.is_empty());
        assert!(r.warnings[0].contains("binlog_row_metadata"));
        let r = check_settings(&good(), &maria, 1, "sources.shop");
        assert!(r.errors[0].contains("sources.shop.server_id = 1 is the source server's own"));
        let r = check_settings(&good(), &maria, 0, "sources.shop");
        assert!(r.errors[0].contains("server_id is 0"));
        let mut v = good();
        v.insert("log_bin_compress".into(), "ON".into());
        assert!(check_settings(&v, &maria, 9, "s").errors[0].contains("log_bin_compress"));
        let mut v = good();
        v.insert("binlog_row_value_options".into(), "PARTIAL_JSON".into());
        assert!(check_settings(&v, &ServerInfo::parse("8.0.36"), 9, "s").errors[0].contains("PARTIAL_JSON"));
        let mut v = good();
        v.insert("binlog_expire_logs_seconds".into(), "3600".into());
        assert!(check_settings(&v, &maria, 9, "s").warnings[0].contains("3600"));
    }

    fn tables() -> Vec<(String, Vec<String>)> {
        vec![("shop".to_string(), vec!["orders".to_string(), "items".to_string()])]
    }

    #[test]
    fn grants_all_privileges_is_enough() {
        let maria = ServerInfo::parse("10.11.6-MariaDB");
        let g = Grants::parse(&["GRANT ALL PRIVILEGES ON *.* TO `replicator`@`%` IDENTIFIED BY PASSWORD '*D8'"]);
        assert!(g.missing(&maria, "replicator", &tables()).is_empty());
    }

    #[test]
    fn grants_name_what_is_missing() {
        let maria = ServerInfo::parse("10.11.6-MariaDB");
        let g = Grants::parse(&["GRANT USAGE ON *.* TO `r`@`%`", "GRANT SELECT ON `other`.* TO `r`@`%`"]);
        let m = g.missing(&maria, "r", &tables());
        assert_eq!(
            m,
            vec![
                "GRANT REPLICATION SLAVE ON *.* TO 'r'@'%'",
                "GRANT BINLOG MONITOR ON *.* TO 'r'@'%'",
                "GRANT SELECT ON `shop`.* TO 'r'@'%'"
            ]
        );
        let g = Grants::parse(&[
            "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `r`@`%`",
            "GRANT SELECT, INSERT ON `shop`.* TO `r`@`%`",
        ]);
        assert!(g.missing(&maria, "r", &tables()).is_empty());
        // Old spelling accepted, table-level SELECT on every table accepted.
        let g = Grants::parse(&[
            "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `r`@`%`",
            "GRANT SELECT ON `shop`.`orders` TO `r`@`%`",
            "GRANT SELECT (id, note), UPDATE ON `shop`.`items` TO `r`@`%`",
        ]);
        assert!(g.missing(&maria, "r", &tables()).is_empty());
        let g = Grants::parse(&[
            "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `r`@`%`",
            "GRANT SELECT ON `shop`.`orders` TO `r`@`%`",
        ]);
        assert_eq!(g.missing(&maria, "r", &tables()), vec!["GRANT SELECT ON `shop`.* TO 'r'@'%'"]);
        // Wildcard database names.
        let g = Grants::parse(&["GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON `sh%`.* TO `r`@`%`"]);
        assert_eq!(g.missing(&maria, "r", &tables()).len(), 2, "REPLICATION SLAVE on a database is not global");
        let g = Grants::parse(&["GRANT SELECT ON `sh\\_p`.* TO `r`@`%`"]);
        assert!(g.can_select("sh_p", &[]));
        assert!(!g.can_select("shop", &[]));
    }

    #[test]
    fn mysql_needs_reload_and_replication_client() {
        let my = ServerInfo::parse("8.0.36");
        let g =
            Grants::parse(&["GRANT SELECT, REPLICATION SLAVE ON *.* TO `r`@`%`", "GRANT `app_role`@`%` TO `r`@`%`"]);
        assert!(g.has_roles());
        assert_eq!(
            g.missing(&my, "r", &tables()),
            vec!["GRANT RELOAD ON *.* TO 'r'@'%'", "GRANT REPLICATION CLIENT ON *.* TO 'r'@'%'"]
        );
        let g = Grants::parse(&["GRANT SELECT, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `r`@`%`"]);
        assert!(g.missing(&my, "r", &tables()).is_empty());
    }

    #[test]
    fn like_patterns() {
        assert!(like("shop", "shop"));
        assert!(like("sh%", "shop"));
        assert!(like("s_op", "shop"));
        assert!(!like("s\\_op", "shop"));
        assert!(like("s\\_op", "s_op"));
        assert!(!like("shop", "shops"));
    }
}
