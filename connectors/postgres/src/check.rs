//! `tidewater check` for Postgres endpoints: each check passes or fails with the fix.

use crate::catalog::{resolve_tables, table_schema};
use crate::conn::{connect, tls_in_use, PgEndpoint};
use crate::replication::{ReplicationConfig, ReplicationConnection, ReplicationError};
use crate::sql::pg_error;
use crate::tls::SslMode;

#[derive(Debug, Clone)]
pub struct CheckResult {
    pub what: String,
    pub ok: bool,
    /// What was found; for a failure, also what to do.
    pub detail: String,
}

fn pass(what: impl Into<String>, detail: impl Into<String>) -> CheckResult {
    CheckResult { what: what.into(), ok: true, detail: detail.into() }
}

fn fail(what: impl Into<String>, detail: impl Into<String>) -> CheckResult {
    CheckResult { what: what.into(), ok: false, detail: detail.into() }
}

/// "connected to postgres://… (TLS TLSv1.3 …)" or "(no TLS)", as the server sees it.
async fn connected(endpoint: &PgEndpoint, client: &tokio_postgres::Client) -> CheckResult {
    let tls = match tls_in_use(client).await {
        Ok(Some(session)) => format!("TLS {session}"),
        Ok(None) => "no TLS".to_owned(),
        Err(e) => format!("TLS state unknown: {e}"),
    };
    pass("connect", format!("connected to {} ({tls})", endpoint.describe()))
}

/// Checks a Postgres source: reachable, `wal_level`, REPLICATION, a replication
/// connection, every configured table present with a key.
pub async fn check_source(source_name: &str, endpoint: &PgEndpoint, tables: &[String]) -> Vec<CheckResult> {
    let mut results = Vec::new();
    let client = match connect(endpoint).await {
        Ok(c) => {
            results.push(connected(endpoint, &c).await);
            c
        }
        Err(e) => {
            results.push(fail(
                "connect",
                format!(
                    "{e}; check sources.{source_name}.url, its password_file/password_env, sslmode and ssl_ca_file"
                ),
            ));
            return results;
        }
    };
    match client.query_one("SHOW wal_level", &[]).await {
        Ok(row) => {
            let level: String = row.get(0);
            if level == "logical" {
                results.push(pass("wal_level", "logical"));
            } else {
                results.push(fail(
                    "wal_level",
                    format!("is {level}; set wal_level = logical (ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"),
                ));
            }
        }
        Err(e) => results.push(fail("wal_level", pg_error("reading wal_level", e).to_string())),
    }
    match client.query_one("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user", &[]).await {
        Ok(row) if row.get::<_, bool>(0) => {
            results.push(pass("replication privilege", format!("{} has REPLICATION", endpoint.user)))
        }
        Ok(_) => results.push(fail(
            "replication privilege",
            format!("{} lacks REPLICATION; run ALTER ROLE {} REPLICATION as a superuser", endpoint.user, endpoint.user),
        )),
        Err(e) => results.push(fail("replication privilege", pg_error("reading role attributes", e).to_string())),
    }
    let repl_cfg = ReplicationConfig {
        host: endpoint.host.clone(),
        port: endpoint.port,
        user: endpoint.user.clone(),
        password: endpoint.password.clone(),
        database: endpoint.database.clone(),
        application_name: endpoint.application_name.clone(),
        connect_timeout: std::time::Duration::from_secs(10),
        tls: endpoint.tls.clone(),
    };
    match ReplicationConnection::connect(&repl_cfg).await {
        Ok(conn) => {
            let detail = format!(
                "accepted ({}, {})",
                conn.tls().map_or_else(|| "no TLS".to_owned(), |session| format!("TLS {session}")),
                conn.auth_method()
            );
            let _ = conn.close().await;
            results.push(pass("replication connection", detail));
        }
        Err(e @ ReplicationError::Tls(_)) => results
            .push(fail("replication connection", format!("{e}; check sources.{source_name}.sslmode and ssl_ca_file"))),
        Err(e) => {
            let hint = if endpoint.tls.mode() == SslMode::Disable && e.to_string().contains("no encryption") {
                "; the server only accepts TLS connections from here: \
                 set sslmode = \"verify-full\" (with ssl_ca_file) or \"require\""
            } else {
                "; allow it in pg_hba.conf and check max_wal_senders"
            };
            results.push(fail("replication connection", format!("{e}{hint}")))
        }
    }
    match resolve_tables(&client, tables, source_name).await {
        Ok(found) => {
            for (id, relid) in found {
                match table_schema(&client, &id, relid).await {
                    Ok(schema) => results.push(pass(
                        format!("table {id}"),
                        format!("{} columns, key ({})", schema.columns.len(), schema.key_names().join(", ")),
                    )),
                    Err(e) => results.push(fail(format!("table {id}"), e.message)),
                }
            }
        }
        Err(e) => results.push(fail("tables", e.message)),
    }
    results
}

/// Checks a Postgres target: reachable and writable (DDL and DML in a rolled-back
/// transaction).
pub async fn check_target(target_name: &str, endpoint: &PgEndpoint) -> Vec<CheckResult> {
    let mut results = Vec::new();
    let mut client = match connect(endpoint).await {
        Ok(c) => {
            results.push(connected(endpoint, &c).await);
            c
        }
        Err(e) => {
            results.push(fail(
                "connect",
                format!(
                    "{e}; check targets.{target_name}.url, its password_file/password_env, sslmode and ssl_ca_file"
                ),
            ));
            return results;
        }
    };
    let probe = async {
        let tx = client.transaction().await?;
        tx.batch_execute(
            "CREATE TABLE public.tidewater_check_probe (id int PRIMARY KEY); INSERT INTO public.tidewater_check_probe VALUES (1)",
        )
        .await?;
        tx.rollback().await
    };
    match probe.await {
        Ok(()) => results.push(pass("writable", "can create tables and write in schema public")),
        Err(e) => results.push(fail(
            "writable",
            format!("{}; grant the user CREATE on the target database and schema public", pg_error("probing", e)),
        )),
    }
    results
}
