//! `tidewater check` for Postgres endpoints: each check passes or fails with the fix.

use crate::catalog::{resolve_tables, table_schema};
use crate::conn::{connect, PgEndpoint};
use crate::replication::{ReplicationConfig, ReplicationConnection};
use crate::sql::pg_error;

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

/// Checks a Postgres source: reachable, `wal_level`, REPLICATION, a replication
/// connection, every configured table present with a key.
pub async fn check_source(source_name: &str, endpoint: &PgEndpoint, tables: &[String]) -> Vec<CheckResult> {
    let mut results = Vec::new();
    let client = match connect(endpoint).await {
        Ok(c) => {
            results.push(pass("connect", format!("connected to {}", endpoint.describe())));
            c
        }
        Err(e) => {
            results.push(fail(
                "connect",
                format!("{e}; check sources.{source_name}.url and its password_file/password_env"),
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
    };
    match ReplicationConnection::connect(&repl_cfg).await {
        Ok(conn) => {
            let _ = conn.close().await;
            results.push(pass("replication connection", "accepted"));
        }
        Err(e) => results
            .push(fail("replication connection", format!("{e}; allow it in pg_hba.conf and check max_wal_senders"))),
    }
    match resolve_tables(&client, tables, source_name).await {
        Ok(found) => {
            for (id, relid) in found {
                match table_schema(&client, &id, relid, None).await {
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
            results.push(pass("connect", format!("connected to {}", endpoint.describe())));
            c
        }
        Err(e) => {
            results.push(fail(
                "connect",
                format!("{e}; check targets.{target_name}.url and its password_file/password_env"),
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
