//! `tidewater check` for a SQLite target: can the daemon write the database file?
//! Creates nothing that stays behind.

use std::path::Path;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::ConnectOptions;
use tidewater_core::ConnectorError;

use crate::sql::sqlite_error;

/// Fails (fatal, naming the path and the fix) unless `path` can name a database file: its
/// directory exists and it is not a directory itself. Returns the directory.
pub(crate) fn check_location(path: &Path) -> Result<&Path, ConnectorError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(ConnectorError::fatal(format!(
            "SQLite target {}: the directory {} does not exist; create it (writable by the daemon's user) or fix \
             the target's `path`",
            path.display(),
            dir.display()
        )));
    }
    if path.is_dir() {
        return Err(ConnectorError::fatal(format!(
            "SQLite target {}: is a directory; the target's `path` must name the database file",
            path.display()
        )));
    }
    Ok(dir)
}

/// Checks that the target at `path` is usable: its directory exists and is writable, and
/// an existing file is a SQLite database the daemon may write. Returns a one-line
/// description for the `[ok]` line.
pub async fn check_target(path: &Path) -> Result<String, ConnectorError> {
    let dir = check_location(path)?;
    // SQLite writes `<path>-wal` and `<path>-shm` next to the database: the directory must
    // take new files even when the database exists.
    let probe = dir.join(format!(
        ".{}.tidewater-check",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    std::fs::write(&probe, b"").map_err(|e| {
        ConnectorError::fatal(format!(
            "SQLite target {}: cannot create files in {} ({e}); give the daemon's user write access to it",
            path.display(),
            dir.display()
        ))
    })?;
    let _ = std::fs::remove_file(&probe);
    if !path.exists() {
        return Ok(format!("SQLite database {} will be created", path.display()));
    }
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .disable_statement_logging()
        .connect()
        .await
        .map_err(|e| sqlite_error(format_args!("opening the SQLite database {}", path.display()), path, e))?;
    let what = format!("reading the SQLite database {}", path.display());
    // Reading the schema fails on a file that is not a database; BEGIN IMMEDIATE needs
    // write access (and waits for another writer).
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_schema")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| sqlite_error(&what, path, e))?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await.map_err(|e| sqlite_error(&what, path, e))?;
    sqlx::query("ROLLBACK").execute(&mut conn).await.map_err(|e| sqlite_error(&what, path, e))?;
    let version: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| sqlite_error(&what, path, e))?;
    Ok(format!("SQLite database {} is writable ({tables} schema objects, SQLite {version})", path.display()))
}
