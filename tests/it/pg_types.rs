//! Postgres → Postgres: values of every common type arrive exactly, through both the
//! snapshot (COPY text) path and the streaming (pgoutput text tuples) path.

use std::time::Duration;

use crate::support::daemon::InProcess;
use crate::support::{wait_for, TestPipeline};
use tidewater::engine::Outcome;

const CONVERGE: Duration = Duration::from_secs(30);

/// (column, declared type) of the `typed` table, after `id int PRIMARY KEY`.
const COLUMNS: &[(&str, &str)] = &[
    ("c_int2", "int2"),
    ("c_int4", "int4"),
    ("c_int8", "int8"),
    ("c_numeric", "numeric"),
    ("c_num102", "numeric(10,2)"),
    ("c_float4", "float4"),
    ("c_float8", "float8"),
    ("c_bool", "bool"),
    ("c_text", "text"),
    ("c_varchar", "varchar(20)"),
    ("c_char", "char(5)"),
    ("c_bytea", "bytea"),
    ("c_json", "json"),
    ("c_jsonb", "jsonb"),
    ("c_uuid", "uuid"),
    ("c_date", "date"),
    ("c_time", "time"),
    ("c_timetz", "timetz"),
    ("c_ts", "timestamp"),
    ("c_tstz", "timestamptz"),
    ("c_interval", "interval"),
    ("c_inet", "inet"),
    ("c_cidr", "cidr"),
    ("c_int4arr", "int4[]"),
    ("c_textarr", "text[]"),
    ("c_2d", "int4[][]"),
    ("c_mood", "mood"),
];

/// SQL expressions for one row, in [`COLUMNS`] order.
const ROWS: &[[&str; 27]] = &[
    // 1: maxima and rich values.
    [
        "32767",
        "2147483647",
        "9223372036854775807",
        "123456789012345678901234567890.123456789",
        "12345678.91",
        "'3.4028235e38'",
        "'1.1'",
        "true",
        "'Grüße, 你好, 🌊'",
        "'exactly twenty chars'",
        "'ab'",
        r"'\x00010203ff00fe'::bytea",
        r#"E'{"a": 1,  "a": 2,\n "b" : [1, 2.50, 1e3]}'"#,
        r#"'{"b": [1, 2.50, 1e3], "a": {"x": null, "y": "ü"}}'"#,
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        "'infinity'",
        "'23:59:59.999999'",
        "'12:34:56.789+05:30'",
        "'2024-02-29 12:34:56.123456'",
        "'2024-02-29 12:34:56.123456+02'",
        "'1 year 2 mons 3 days 04:05:06.789'",
        "'192.168.1.5/24'",
        "'10.0.0.0/8'",
        "'{1,NULL,3}'",
        r#"ARRAY['a', NULL, 'with "quotes"', 'back\slash', 'comma,brace}', 'NULL', '', ' spaced ']"#,
        "'{{1,2},{3,4}}'",
        "'happy'",
    ],
    // 2: minima, NaN, BC, infinities, escapes.
    [
        "-32768",
        "-2147483648",
        "-9223372036854775808",
        "'1e-50'",
        "-0.01",
        "'NaN'",
        "'NaN'",
        "false",
        r"E'tab\there\nnewline\\backslash\r\ncrlf \\N not null \\.'",
        "''",
        "''",
        r"'\x'::bytea",
        "'[]'",
        r#"'"str"'"#,
        "'00000000-0000-0000-0000-000000000000'",
        "'0044-03-15 BC'",
        "'00:00'",
        "'00:00:00-12'",
        "'infinity'",
        "'-infinity'",
        "'-1 days -00:00:00.000001'",
        "'::1'",
        "'2001:db8::/32'",
        "'{}'",
        "'{}'",
        "'{{NULL,2},{3,NULL}}'",
        r#"'it''s "complicated"'"#,
    ],
    // 3: zeros, numeric NaN, infinities, control characters, NUL bytes, array bounds.
    [
        "0",
        "0",
        "0",
        "'NaN'",
        "0",
        "'Infinity'",
        "'-Infinity'",
        "true",
        r#"E'\\x41 is not bytea; \\\\ two; quotes '' " ; ctrl \x01 \x7f end'"#,
        "'Grüße 🌊'",
        "'äöü'",
        "decode(repeat('00', 10), 'hex')",
        r#"'"\u00e9 \ud83c\udf0a"'"#,
        r#"'{"k": "\u00e9", "t": "a\tb"}'"#,
        "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
        "'-infinity'",
        "'12:00:00.5'",
        "'23:59:59.999999+14'",
        "'-infinity'",
        "'infinity'",
        "'0'",
        "'10.1.2.3'",
        "'::/0'",
        "ARRAY[NULL]::int4[]",
        r#"ARRAY[NULL, 'NULL', 'null', E'tab\there', E'nl\nhere', E'back\\slash', '{}', 'Grüße 🌊']"#,
        "'[0:1][1:2]={{5,6},{7,8}}'",
        "'sad'",
    ],
    // 4: subnormal, negative zero, trailing zeros, whitespace, 3-D array.
    [
        "1",
        "-1",
        "1",
        "'0.000'",
        "99999999.99",
        "'1.1'",
        "'5e-324'",
        "false",
        "' '",
        "' trailing '",
        "'abcde'",
        r"'\xdeadbeef'::bytea",
        r#"'  { "spaces" : true }  '"#,
        r#"'[1, "a", null, true, {"n": -0.0}]'"#,
        "'123e4567-e89b-12d3-a456-426614174000'",
        "'2000-01-01'",
        "'24:00:00'",
        "'00:00:00.000001+00'",
        "'1999-12-31 23:59:59.999999'",
        "'1900-01-01 00:00:00+01:30'",
        "'100 years -1 days 23:59:59.999999'",
        "'2001:db8::ff00:42:8329/64'",
        "'192.168.0.0/16'",
        "'{-2147483648,2147483647}'",
        r#"ARRAY['Grüße', '你好', '🌊', 'a"b', 'a\b', 'a,b', 'a b', '"']"#,
        "'{{{1,2}},{{3,4}}}'",
        "'ok'",
    ],
    // 5: more float/numeric extremes, everything else NULL.
    [
        "NULL",
        "NULL",
        "NULL",
        "'-123456789012345678901234567890.123456789'",
        "-99999999.99",
        "'-Infinity'",
        "'1.7976931348623157e308'",
        "NULL",
        "NULL",
        "NULL",
        "NULL",
        "NULL",
        "NULL",
        "'null'",
        "NULL",
        "NULL",
        "NULL",
        "NULL",
        "NULL",
        "NULL",
        "NULL",
        "NULL",
        "NULL",
        "NULL",
        "NULL",
        "NULL",
        "NULL",
    ],
    // 6: smallest subnormals, negative zero, huge numeric.
    [
        "NULL", "NULL", "NULL", "'1e100'", "'1.5'", "'1e-45'", "'-0'", "NULL", "''", "NULL", "NULL", "NULL", "NULL",
        "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL", "NULL",
    ],
    // 7: NULL in every column.
    ["NULL"; 27],
];

const SETUP_TYPES: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s \"complicated\"');";

fn create_table_sql() -> String {
    let cols: Vec<String> = COLUMNS.iter().map(|(n, t)| format!("{n} {t}")).collect();
    format!("CREATE TABLE typed (id int PRIMARY KEY, {});", cols.join(", "))
}

/// INSERTs of every row of [`ROWS`], with ids `first_id`, `first_id + 1`, ...
fn insert_sql(first_id: i32) -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
    ROWS.iter()
        .enumerate()
        .map(|(i, row)| {
            format!(
                "INSERT INTO typed (id, {}) VALUES ({}, {});",
                names.join(", "),
                first_id + i as i32,
                row.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A client with the float output the daemon uses (exact, shortest round-trip digits).
async fn exact(client: tokio_postgres::Client) -> tokio_postgres::Client {
    client.batch_execute("SET extra_float_digits = 3; SET TimeZone = 'UTC';").await.unwrap();
    client
}

type Grid = Vec<Vec<Option<String>>>;

async fn grid(client: &tokio_postgres::Client, sql: &str) -> Result<Grid, tokio_postgres::Error> {
    let rows = client.query(sql, &[]).await?;
    Ok(rows.iter().map(|r| (0..r.len()).map(|i| r.get::<_, Option<String>>(i)).collect()).collect())
}

/// Waits until `sql` (text columns named by `names`) returns the same on source and
/// target; on timeout panics listing every differing cell.
async fn wait_same(p: &TestPipeline, sql: &str, names: &[String], timeout: Duration) -> Grid {
    let src = exact(p.source_client().await).await;
    let dst = exact(p.target_client().await).await;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let a = grid(&src, sql).await.unwrap();
        let b = grid(&dst, sql).await.unwrap_or_default();
        if a == b {
            return a;
        }
        if tokio::time::Instant::now() > deadline {
            let mut diffs = Vec::new();
            if a.len() != b.len() {
                diffs.push(format!("source {} rows, target {} rows", a.len(), b.len()));
            }
            for (ra, rb) in a.iter().zip(&b) {
                for (i, (va, vb)) in ra.iter().zip(rb).enumerate() {
                    if va != vb {
                        diffs.push(format!("row {:?} column {}: source {va:?}, target {vb:?}", ra[0], names[i]));
                    }
                }
            }
            panic!("target differs from source after {timeout:?}:\n  {}\n{}", diffs.join("\n  "), diagnostics(p).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Column-by-column text of every row (plus the raw float bits and the whole row), on
/// source and target alike.
fn column_query(table: &str) -> (String, Vec<String>) {
    let mut exprs = vec!["id::text".to_string()];
    let mut names = vec!["id".to_string()];
    for (n, _) in COLUMNS {
        exprs.push(format!("{n}::text"));
        names.push(n.to_string());
    }
    exprs.push("encode(float4send(c_float4), 'hex')".into());
    names.push("float4send(c_float4)".into());
    exprs.push("encode(float8send(c_float8), 'hex')".into());
    names.push("float8send(c_float8)".into());
    exprs.push("array_dims(c_2d)".into());
    names.push("array_dims(c_2d)".into());
    exprs.push("octet_length(c_char)::text".into());
    names.push("octet_length(c_char)".into());
    exprs.push("t::text".into());
    names.push("whole row".into());
    (format!("SELECT {} FROM {table} t ORDER BY t.id", exprs.join(", ")), names)
}

async fn single(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    client.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e:?}")).get(0)
}

async fn stop(daemon: InProcess) {
    assert_eq!(daemon.stop().await, vec![Outcome::Stopped]);
}

/// The pipeline's status and dead letters, for failure messages.
async fn diagnostics(p: &TestPipeline) -> String {
    let status = p.status().await.map(|s| s.to_string()).unwrap_or_default();
    let dead = grid(
        &p.target_client().await,
        "SELECT op, payload::text, error FROM tidewater_dead_letters ORDER BY id LIMIT 5",
    )
    .await
    .unwrap_or_default();
    format!("status: {status}\ndead letters: {dead:?}")
}

/// Waits until the pipeline streams; fails at once (with its error) if it fails.
async fn wait_streaming(p: &TestPipeline) {
    let status = wait_for("pipeline state streaming or failed", CONVERGE, || async {
        p.status().await.filter(|s| s["state"] == "streaming" || s["state"] == "failed")
    })
    .await;
    assert_eq!(status["state"], "streaming", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_exactly_via_snapshot_and_stream() {
    let setup = format!("{SETUP_TYPES}\n{}\n{}", create_table_sql(), insert_sql(1));
    let p = TestPipeline::new("types_all", &setup, &["public.typed"]).await;
    let daemon = p.start();
    wait_streaming(&p).await;
    let (sql, names) = column_query("typed");
    // Snapshot rows first.
    let snap = wait_same(&p, &sql, &names, CONVERGE).await;
    assert_eq!(snap.len(), ROWS.len());

    // Streamed: the same rows as inserts, then updates copying values into the NULL
    // row and NULLs over a full row (from a sub-select finding no row), a copy of row 1
    // and an update of only some of its columns.
    let src = p.source_client().await;
    src.batch_execute(&insert_sql(101)).await.unwrap();
    let cols = COLUMNS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    let null_row = 100 + ROWS.len() as i32;
    src.batch_execute(&format!(
        "UPDATE typed SET ({cols}) = (SELECT {cols} FROM typed WHERE id = 2) WHERE id = {null_row}; \
         UPDATE typed SET ({cols}) = (SELECT {cols} FROM typed WHERE id = {null_row} + 1000) WHERE id = 102; \
         INSERT INTO typed (id, {cols}) SELECT 200, {cols} FROM typed WHERE id = 1; \
         UPDATE typed SET c_text = c_text || E'\\t\\\\more', c_float8 = '5e-324', c_jsonb = c_jsonb || '{{\"z\": 1}}' WHERE id = 200;"
    ))
    .await
    .unwrap();
    let all = wait_same(&p, &sql, &names, CONVERGE).await;
    assert_eq!(all.len(), 2 * ROWS.len() + 1);

    // Independently of the source: some values exactly as written.
    let dst = exact(p.target_client().await).await;
    for id in [1, 101] {
        assert_eq!(
            single(&dst, &format!("SELECT c_json::text FROM typed WHERE id = {id}")).await,
            Some("{\"a\": 1,  \"a\": 2,\n \"b\" : [1, 2.50, 1e3]}".into()),
            "json keeps its text (row {id})"
        );
        assert_eq!(
            single(&dst, &format!("SELECT c_bytea::text FROM typed WHERE id = {id}")).await,
            Some("\\x00010203ff00fe".into())
        );
        assert_eq!(
            single(&dst, &format!("SELECT c_numeric::text FROM typed WHERE id = {id}")).await,
            Some("123456789012345678901234567890.123456789".into())
        );
        assert_eq!(
            single(&dst, &format!("SELECT c_text FROM typed WHERE id = {id}")).await,
            Some("Grüße, 你好, 🌊".into())
        );
        assert_eq!(single(&dst, &format!("SELECT c_char::text FROM typed WHERE id = {id}")).await, Some("ab".into()));
    }
    assert_eq!(
        single(&dst, "SELECT c_text FROM typed WHERE id = 2").await,
        Some("tab\there\nnewline\\backslash\r\ncrlf \\N not null \\.".into())
    );
    assert_eq!(
        single(&dst, &format!("SELECT c_text FROM typed WHERE id = {null_row}")).await,
        Some("tab\there\nnewline\\backslash\r\ncrlf \\N not null \\.".into())
    );
    for id in [2, null_row] {
        assert_eq!(
            single(
                &dst,
                &format!(
                    "SELECT concat_ws('|', c_numeric, c_float4, c_float8, c_date, c_ts, c_tstz, c_mood) FROM typed WHERE id = {id}"
                )
            )
            .await,
            Some("0.00000000000000000000000000000000000000000000000001|NaN|NaN|0044-03-15 BC|infinity|-infinity|it's \"complicated\"".into()),
            "row {id}"
        );
    }
    for id in [4, 104] {
        assert_eq!(
            single(
                &dst,
                &format!(
                    "SELECT concat_ws('|', c_numeric, c_float4, c_float8, c_jsonb, array_dims(c_2d)) FROM typed WHERE id = {id}"
                )
            )
            .await,
            Some("0.000|1.1|5e-324|[1, \"a\", null, true, {\"n\": 0.0}]|[1:2][1:1][1:2]".into()),
            "row {id}"
        );
    }
    for id in [3, 103] {
        assert_eq!(
            single(
                &dst,
                &format!("SELECT concat_ws('|', c_numeric, c_float4, c_float8, array_dims(c_2d), c_2d, octet_length(c_bytea), c_char || '<') FROM typed WHERE id = {id}")
            )
            .await,
            Some("NaN|Infinity|-Infinity|[0:1][1:2]|[0:1][1:2]={{5,6},{7,8}}|10|äöü<".into()),
            "row {id}"
        );
    }
    for id in [6, 106] {
        assert_eq!(
            single(
                &dst,
                &format!("SELECT concat_ws('|', c_numeric, c_num102, c_float4, c_float8) FROM typed WHERE id = {id}")
            )
            .await,
            Some(format!("1{}|1.50|1e-45|-0", "0".repeat(100))),
            "row {id}"
        );
    }
    assert_eq!(
        single(
            &dst,
            "SELECT count(*)::text FROM typed WHERE id = 102 AND num_nulls(c_int2, c_int4, c_int8, c_numeric, \
             c_num102, c_float4, c_float8, c_bool, c_text, c_varchar, c_char, c_bytea, c_json, c_jsonb, c_uuid, \
             c_date, c_time, c_timetz, c_ts, c_tstz, c_interval, c_inet, c_cidr, c_int4arr, c_textarr, c_2d, c_mood) = 27"
        )
        .await,
        Some("1".into()),
        "row 102 was set to NULL in every column"
    );

    // Same declared types on the target (the daemon created the table).
    let types_sql = "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
                     WHERE attrelid = 'public.typed'::regclass AND attnum > 0 AND NOT attisdropped \
                     ORDER BY attnum";
    let src = exact(p.source_client().await).await;
    assert_eq!(grid(&dst, types_sql).await.unwrap(), grid(&src, types_sql).await.unwrap());
    assert_eq!(
        single(&dst, "SELECT enum_range(NULL::mood)::text").await,
        single(&src, "SELECT enum_range(NULL::mood)::text").await
    );
    assert_eq!(p.status().await.unwrap()["dead_letters_total"], 0);
    stop(daemon).await;
}

/// Primary keys of less common types (text with escapes, bytea, timestamptz, numeric):
/// updates and deletes must find the target row by its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_composite_keys_update_and_delete() {
    let p = TestPipeline::new(
        "types_keys",
        r#"CREATE TABLE uk (k_text text, k_bytea bytea, k_ts timestamptz, k_num numeric, v text,
             PRIMARY KEY (k_text, k_bytea, k_ts, k_num));
           INSERT INTO uk VALUES
             (E'tab\there\\back', '\x00ff', '2024-01-01 00:00:00.000001+00', 1.50, 'snap 1'),
             ('Grüße 🌊', '\x', 'infinity', 'NaN', 'snap 2'),
             ('', '\x00', '-infinity', -0.0, 'snap 3');"#,
        &["public.uk"],
    )
    .await;
    let daemon = p.start();
    wait_streaming(&p).await;
    p.wait_converged("uk", "uk", CONVERGE).await;
    let src = p.source_client().await;
    src.batch_execute(
        r#"INSERT INTO uk VALUES (E'nl\nkey', '\x0a0d', '2000-01-01 12:00+05', 1e-20, 'stream 1'),
                                 ('"quoted",{x}', '\x5c', '1999-12-31 23:59:59.999999+00', 123.4560, 'stream 2');
           UPDATE uk SET v = 'updated 1' WHERE k_num = 1.5;
           UPDATE uk SET v = 'updated 2' WHERE k_text = 'Grüße 🌊';
           UPDATE uk SET k_bytea = '\x0000' WHERE k_text = '';
           DELETE FROM uk WHERE k_text = E'nl\nkey';
           UPDATE uk SET v = 'updated 4' WHERE k_num = 123.456;"#,
    )
    .await
    .unwrap();
    let rows = p.wait_converged("uk", "uk", CONVERGE).await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    let dst = exact(p.target_client().await).await;
    let got = grid(&dst, "SELECT k_text, k_bytea::text, k_num::text, v FROM uk ORDER BY v").await.unwrap();
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        got,
        vec![
            vec![s(""), s("\\x0000"), s("0.0"), s("snap 3")],
            vec![s("tab\there\\back"), s("\\x00ff"), s("1.50"), s("updated 1")],
            vec![s("Grüße 🌊"), s("\\x"), s("NaN"), s("updated 2")],
            vec![s("\"quoted\",{x}"), s("\\x5c"), s("123.4560"), s("updated 4")],
        ]
    );
    stop(daemon).await;
}

/// A string of `n_md5 * 32` random hex characters (does not compress enough to stay
/// inline: it is stored out of line in the TOAST table).
fn big_value_sql(n_md5: u32) -> String {
    format!("(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, {n_md5}))")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toasted_text_keeps_value_when_other_column_changes() {
    // Row 1 goes through the snapshot, the others through streaming.
    let p = TestPipeline::new(
        "types_toast",
        &format!(
            "CREATE TABLE big (id int PRIMARY KEY, big text, n int); \
             INSERT INTO big VALUES (1, {}, 0);",
            big_value_sql(32768)
        ),
        &["public.big"],
    )
    .await;
    let daemon = p.start();
    wait_streaming(&p).await;
    let src = p.source_client().await;
    // The value really is stored out of line.
    let toasted: bool = src
        .query_one("SELECT pg_relation_size(reltoastrelid) > 500000 FROM pg_class WHERE oid = 'big'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    assert!(toasted);
    src.batch_execute(&format!("INSERT INTO big VALUES (2, {}, 0)", big_value_sql(32768))).await.unwrap();
    let check = "SELECT id::text, md5(big), length(big)::text, n::text FROM big ORDER BY big.id";
    let names: Vec<String> = ["id", "md5(big)", "length(big)", "n"].iter().map(|s| s.to_string()).collect();
    wait_same(&p, check, &names, CONVERGE).await;

    // Only n changes: pgoutput sends the big column as "unchanged TOAST".
    src.batch_execute("UPDATE big SET n = 1 WHERE id = 1").await.unwrap();
    src.batch_execute("UPDATE big SET n = 1 WHERE id = 2").await.unwrap();
    let after = wait_same(&p, check, &names, CONVERGE).await;
    assert_eq!(after.len(), 2);
    for row in &after {
        assert_eq!(row[2].as_deref(), Some("1048576"), "{row:?}");
        assert_eq!(row[3].as_deref(), Some("1"), "{row:?}");
    }

    // In one transaction with an insert of another row (and two updates of one row).
    src.batch_execute(&format!(
        "BEGIN; \
         UPDATE big SET n = 2 WHERE id = 1; \
         INSERT INTO big VALUES (3, {}, 3); \
         UPDATE big SET n = 20 WHERE id = 2; \
         UPDATE big SET n = 21 WHERE id = 2; \
         COMMIT;",
        big_value_sql(32768)
    ))
    .await
    .unwrap();
    // Insert then update of n in one transaction: the update carries the value unchanged.
    src.batch_execute(&format!(
        "BEGIN; INSERT INTO big VALUES (4, {}, 0); UPDATE big SET n = 4 WHERE id = 4; COMMIT;",
        big_value_sql(32768)
    ))
    .await
    .unwrap();
    // Quick successive transactions, likely one target batch: update n, then n again.
    src.batch_execute("UPDATE big SET n = 30 WHERE id = 3").await.unwrap();
    src.batch_execute("UPDATE big SET n = 31 WHERE id = 3").await.unwrap();
    let last = wait_same(&p, check, &names, CONVERGE).await;
    let dst = p.target_client().await;
    let got = grid(&dst, "SELECT id::text, length(big)::text, n::text FROM big ORDER BY big.id").await.unwrap();
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        got,
        vec![
            vec![s("1"), s("1048576"), s("2")],
            vec![s("2"), s("1048576"), s("21")],
            vec![s("3"), s("1048576"), s("31")],
            vec![s("4"), s("1048576"), s("4")],
        ]
    );
    // The md5s are equal to the source's (checked by wait_same) and all distinct.
    let mut md5s: Vec<_> = last.iter().map(|r| r[1].clone()).collect();
    md5s.dedup();
    assert_eq!(md5s.len(), 4);
    let status = wait_for("status", CONVERGE, || p.status()).await;
    assert_eq!(status["dead_letters_total"], 0, "{status}");
    assert_eq!(status["state"], "streaming", "{status}");
    stop(daemon).await;
}

/// Creates `table` on the source from `(column, type, value)` triples, with a row of the
/// values (id 1) and a row of NULLs (id 2) before the daemon starts, the same two rows
/// (ids 11, 12) while streaming, and an update copying row 1's values into row 12; then
/// checks every column's text on source and target.
async fn round_trip_columns(prefix: &str, setup: &str, table: &str, cols: &[(&str, &str, &str)]) {
    let defs: Vec<String> = cols.iter().map(|(n, t, _)| format!("{n} {t}")).collect();
    let names: Vec<&str> = cols.iter().map(|(n, _, _)| *n).collect();
    let values: Vec<&str> = cols.iter().map(|(_, _, v)| *v).collect();
    let insert = |id: i32| {
        format!(
            "INSERT INTO {table} (id, {}) VALUES ({id}, {}); INSERT INTO {table} (id) VALUES ({});",
            names.join(", "),
            values.join(", "),
            id + 1
        )
    };
    let p = TestPipeline::new(
        prefix,
        &format!("{setup}\nCREATE TABLE {table} (id int PRIMARY KEY, {});\n{}", defs.join(", "), insert(1)),
        &[&format!("public.{table}")],
    )
    .await;
    let daemon = p.start();
    wait_streaming(&p).await;
    let exprs: Vec<String> = std::iter::once("id::text".to_string())
        .chain(names.iter().map(|n| format!("{n}::text")))
        .chain(std::iter::once("t::text".to_string()))
        .collect();
    let labels: Vec<String> = std::iter::once("id".to_string())
        .chain(names.iter().map(|n| n.to_string()))
        .chain(std::iter::once("whole row".to_string()))
        .collect();
    let sql = format!("SELECT {} FROM {table} t ORDER BY t.id", exprs.join(", "));
    wait_same(&p, &sql, &labels, CONVERGE).await;
    let src = p.source_client().await;
    src.batch_execute(&insert(11)).await.unwrap();
    src.batch_execute(&format!(
        "UPDATE {table} SET ({cols}) = (SELECT {cols} FROM {table} WHERE id = 1) WHERE id = 12",
        cols = names.join(", ")
    ))
    .await
    .unwrap();
    let rows = wait_same(&p, &sql, &labels, CONVERGE).await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    // Row 1 (snapshot) and rows 11, 12 (streamed) hold the same values.
    assert_eq!(rows[0][1..names.len() + 1], rows[2][1..names.len() + 1]);
    assert_eq!(rows[0][1..names.len() + 1], rows[3][1..names.len() + 1]);
    assert!(rows[0].iter().all(Option::is_some), "{:?}", rows[0]);
    let status = p.status().await.unwrap();
    assert_eq!(status["dead_letters_total"], 0, "{status}");
    assert_eq!(status["state"], "streaming", "{status}");
    stop(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn less_common_types_round_trip() {
    round_trip_columns(
        "types_more",
        "CREATE DOMAIN posnum AS numeric(5,2) CHECK (VALUE > 0); \
         CREATE TYPE mood AS ENUM ('sad', 'happy');",
        "more",
        &[
            ("c_varbit", "varbit", "'1011'"),
            ("c_numarr", "numeric(5,2)[]", "'{1.50,NULL,-999.99}'"),
            ("c_uuidarr", "uuid[]", "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}'"),
            ("c_tstzarr", "timestamptz[]", r#"'{"2024-01-01 00:00:00.5+05",infinity,NULL}'"#),
            ("c_jsonbarr", "jsonb[]", r#"ARRAY['{"a": [1, "x\"y"]}'::jsonb, '[]', NULL]"#),
            ("c_float8arr", "float8[]", "'{NaN,Infinity,-0,5e-324,1.1}'"),
            ("c_moodarr", "mood[]", "'{happy,NULL,sad}'"),
            ("c_mood", "mood", "'sad'"),
            ("c_money", "money", "'1234.56'"),
            ("c_xml", "xml", r#"'<a b="1">text &amp; more</a>'"#),
            ("c_tsvector", "tsvector", "'a fat cat sat:3'"),
            ("c_point", "point", "'(1.5,-2.25)'"),
            ("c_box", "box", "'((0,0),(1,1))'"),
            ("c_macaddr", "macaddr", "'08:00:2b:01:02:03'"),
            ("c_int4range", "int4range", "'[1,10)'"),
            ("c_tstzrange", "tstzrange", "'[2024-01-01 00:00+00,infinity)'"),
            ("c_domain", "posnum", "123.45"),
            ("c_name", "name", "'a name'"),
            ("c_qchar", "\"char\"", "'x'"),
            ("c_oid", "oid", "4294967295"),
            ("c_time3", "time(3)", "'12:34:56.789'"),
            ("c_ts0", "timestamp(0)", "'2024-01-01 12:00:00'"),
            ("c_ivl", "interval day to second(2)", "'1 day 02:03:04.56'"),
            ("\"Mixed Case\"", "text", "'mixed'"),
        ],
    )
    .await;
}

/// Fixed-length types: `char(n)` (also in arrays) and `bit(n)` keep their length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_length_char_and_bit_keep_their_length() {
    round_trip_columns(
        "types_fixed",
        "",
        "fixed",
        &[
            ("c_char", "char(5)", "'abc'"),
            ("c_char1", "char", "'z'"),
            ("c_chararr", "char(5)[]", "'{ab,abcde}'"),
            ("c_bit", "bit(8)", "'10101010'"),
        ],
    )
    .await;
}

/// An enum type used only as an array element type: the target must get the type too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enum_used_only_in_an_array_column() {
    round_trip_columns(
        "types_enumarr",
        "CREATE TYPE shade AS ENUM ('light', 'dark');",
        "shades",
        &[("c_shades", "shade[]", "'{dark,light,NULL}'")],
    )
    .await;
}

/// A key-changing update of a row whose TOASTed column is unchanged: pgoutput sends the
/// new row with that column as "unchanged", yet the row under its new key needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toasted_row_moved_to_a_new_key_keeps_its_value() {
    let p = TestPipeline::new(
        "types_toast_key",
        &format!(
            "CREATE TABLE big (id int PRIMARY KEY, big text, n int); INSERT INTO big VALUES (1, {}, 0);",
            big_value_sql(32768)
        ),
        &["public.big"],
    )
    .await;
    let daemon = p.start();
    wait_streaming(&p).await;
    let src = p.source_client().await;
    src.batch_execute(&format!("INSERT INTO big VALUES (2, {}, 0)", big_value_sql(32768))).await.unwrap();
    let check = "SELECT id::text, md5(big), length(big)::text, n::text FROM big ORDER BY big.id";
    let names: Vec<String> = ["id", "md5(big)", "length(big)", "n"].iter().map(|s| s.to_string()).collect();
    wait_same(&p, check, &names, CONVERGE).await;
    // Row 1 (from the snapshot) and row 2 (streamed) move to new keys.
    src.batch_execute("UPDATE big SET id = 1001 WHERE id = 1").await.unwrap();
    src.batch_execute("UPDATE big SET id = 1002, n = 2 WHERE id = 2").await.unwrap();
    let rows = wait_same(&p, check, &names, CONVERGE).await;
    let ids: Vec<_> = rows.iter().map(|r| r[0].clone().unwrap_or_default()).collect();
    assert_eq!(ids, ["1001", "1002"]);
    for row in &rows {
        assert_eq!(row[2].as_deref(), Some("1048576"), "{row:?}");
    }
    stop(daemon).await;
}
