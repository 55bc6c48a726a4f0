//! `tidewater check` for a MySQL/MariaDB target: reachable, the database exists, the user
//! holds what the daemon needs. Read-only: MySQL commits implicitly around DDL, so a
//! create-and-roll-back probe (as on Postgres) would leave a table behind; the grants are
//! read from `information_schema` instead, and nothing is created.

use super::{run_fetch_all, sqlx_error, text, MysqlSink};

/// Privileges the daemon uses on the URL's database: bookkeeping tables and target
/// tables are created, altered (columns followed) and written.
const NEEDED: [&str; 6] = ["SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "ALTER"];

impl MysqlSink {
    /// Connects and checks the grants without writing anything. Returns a one-line
    /// description for the `[ok]` line; the error names what is missing and the fix.
    pub async fn check(&mut self) -> Result<String, tidewater_core::ConnectorError> {
        let mut conn = self.connect().await?;
        let server = self.server().map(|s| s.to_string()).unwrap_or_default();
        let database = self.endpoint.database.clone();
        // Global grants and grants on databases matching the URL's (a grant's database may
        // be a LIKE pattern such as `app\_%`). Grantees are written 'user'@'host'; the
        // grantee is kept in a session variable of this short-lived connection.
        super::exec_raw(
            &mut conn,
            "SET @tw_grantee = CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', \
             SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')",
        )
        .await
        .map_err(|e| sqlx_error("reading the current user", e))?;
        let rows = run_fetch_all(
            sqlx::query(
                "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = @tw_grantee \
                 UNION SELECT PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES \
                 WHERE GRANTEE = @tw_grantee AND ? LIKE TABLE_SCHEMA",
            )
            .bind(&database),
            &mut conn,
        )
        .await
        .map_err(|e| sqlx_error("reading the user's grants", e))?;
        let held: Vec<String> = rows.iter().map(|r| text(r, 0)).collect::<Result<_, _>>()?;
        let missing: Vec<&str> = NEEDED.iter().copied().filter(|p| !held.iter().any(|h| h == p)).collect();
        if !missing.is_empty() {
            return Err(tidewater_core::ConnectorError::fatal(format!(
                "the user {} lacks {} on the database {database}: GRANT {} ON `{database}`.* TO '{}'@'%' \
                 (and CREATE on other databases that renamed tables go to; grants held only through a role \
                 are not seen here: grant them to the user)",
                self.endpoint.user,
                missing.join(", "),
                NEEDED.join(", "),
                self.endpoint.user
            )));
        }
        let present = run_fetch_all(
            sqlx::query(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? \
                 AND TABLE_NAME IN ('tidewater_checkpoints', 'tidewater_dead_letters')",
            )
            .bind(&database),
            &mut conn,
        )
        .await
        .map_err(|e| sqlx_error("looking for the bookkeeping tables", e))?;
        let bookkeeping = if present.len() == 2 {
            "bookkeeping tables present"
        } else {
            "bookkeeping tables are created at the first start"
        };
        Ok(format!("{server} database {database}: can create and write tables; {bookkeeping}"))
    }
}
