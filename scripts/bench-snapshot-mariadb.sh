#!/usr/bin/env bash
# Initial snapshot benchmark, MariaDB -> MariaDB: tidewater's copy of one table vs
# `mariadb-dump bench snap | mariadb`.
#
#   scripts/bench-snapshot-mariadb.sh
#
# On two throwaway MariaDB servers (source with a row binlog, target; free ports), in one
# run:
#   1. source db `bench`: snap(id BIGINT PRIMARY KEY, a INT, b VARCHAR(80), c VARCHAR(40),
#      d DATETIME(6), e DECIMAL(12,2), f JSON) with SNAP_ROWS rows (the same values as
#      scripts/bench-snapshot.sh).
#   2. native: `mariadb-dump bench snap | mariadb bench_native`, timed until the client exits.
#   3. tidewater: `tidewater run` (snapshot = "initial") into the empty db bench_tidewater,
#      timed from the daemon's start until a procedure inside the target (checking every
#      10 ms) sees the pipeline's checkpoint with snapshot_complete.
#   4. verify: count and a checksum of every row's (id, a, b, c, d, e, f->g), source vs both
#      targets; exit 1 on a mismatch.
#
# Environment: SNAP_ROWS=1000000, SNAP_ORDER=native-first | tidewater-first,
# TIDEWATER_BIN=path (instead of `cargo build --release`), MARIADBD, MY_OS_USER.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/pg.sh
source "$SCRIPT_DIR/lib/pg.sh"
# shellcheck source=lib/mysql.sh
source "$SCRIPT_DIR/lib/mysql.sh"
# shellcheck source=lib/snapshot.sh
source "$SCRIPT_DIR/lib/snapshot.sh"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
fi

ROWS="${SNAP_ROWS:-1000000}"
ORDER="${SNAP_ORDER:-native-first}"
[[ "$ROWS" =~ ^[0-9]+$ && "$ROWS" -ge 1 ]] || tw_die "SNAP_ROWS must be a number >= 1"
case "$ORDER" in native-first | tidewater-first) ;; *) tw_die "SNAP_ORDER: native-first or tidewater-first" ;; esac

my_require_tools
tw_build
tw_make_workdir bench-snapshot-mariadb

tw_log "starting the MariaDB source and target servers"
my_server_start my_source 1 binlog
my_server_start my_target 2

tw_log "filling bench.snap with $ROWS rows"
my_sql my_source <<SQL
CREATE DATABASE bench CHARACTER SET utf8mb4;
USE bench;
CREATE TABLE bench.snap (id BIGINT PRIMARY KEY, a INT, b VARCHAR(80), c VARCHAR(40), d DATETIME(6),
    e DECIMAL(12,2), f JSON);
INSERT INTO bench.snap
SELECT seq, seq % 1000, CONCAT(MD5(seq), MD5(seq + 1)), CONCAT('customer note ', seq),
       TIMESTAMP '2026-01-01 00:00:00' - INTERVAL seq SECOND, (seq % 100000) / 7,
       JSON_OBJECT('g', seq, 'kind', CONCAT('k', seq % 10), 'ok', seq % 2 = 0)
FROM seq_1_to_$ROWS;
SQL
my_sql my_target <<'SQL'
CREATE DATABASE bench_native CHARACTER SET utf8mb4;
CREATE DATABASE bench_tidewater CHARACTER SET utf8mb4;
DELIMITER //
CREATE PROCEDURE bench_tidewater.bench_wait_snapshot(p VARCHAR(64))
BEGIN
    DECLARE done INT DEFAULT 0;
    DECLARE CONTINUE HANDLER FOR SQLSTATE '42S02' SET done = 0;
    DECLARE CONTINUE HANDLER FOR NOT FOUND SET done = 0;
    WHILE NOT done DO
        SET done = 0;
        SELECT snapshot_complete INTO done FROM bench_tidewater.tidewater_checkpoints WHERE pipeline = p;
        IF NOT done THEN DO SLEEP(0.01); END IF;
    END WHILE;
END//
DELIMITER ;
SQL

PW_FILE="$TW_WORK/replicator.pw"
(umask 077 && printf '%s\n' "$REPLICATOR_PASSWORD" >"$PW_FILE")
CONFIG="$TW_WORK/tidewater.toml"
cat >"$CONFIG" <<EOF
[status]
listen = "127.0.0.1:$(tw_free_port)"

[log]
format = "text"
level = "info"

[sources.src]
type = "mysql"
url = "mysql://$REPLICATOR_USER@127.0.0.1:$(my_port my_source)"
password_file = "$PW_FILE"
server_id = 101
tables = ["bench.snap"]

[targets.dst]
type = "mysql"
url = "mysql://$REPLICATOR_USER@127.0.0.1:$(my_port my_target)/bench_tidewater"
password_file = "$PW_FILE"

[[pipelines]]
name = "snap"
source = "src"
target = "dst"
snapshot = "initial"

[pipelines.tables]
"bench.snap" = "public.snap"
EOF

NATIVE_S=""
run_native() {
    tw_log "native: mariadb-dump bench snap | mariadb bench_native"
    local t0 t1
    t0="$(snap_now)"
    mariadb-dump --no-defaults -uroot --socket="$(my_sock my_source)" bench snap |
        mariadb --no-defaults -uroot --socket="$(my_sock my_target)" bench_native
    t1="$(snap_now)"
    NATIVE_S="$(snap_elapsed "$t0" "$t1")"
}

snap_run_both "$CONFIG" my_sql my_target -e "CALL bench_tidewater.bench_wait_snapshot('snap')"

fingerprint() {
    my_sql "$1" -e "SELECT CONCAT(COUNT(*), ' ', SUM(CRC32(id) + CRC32(a) + CRC32(b) + CRC32(c) + CRC32(d)
        + CRC32(e) + CRC32(JSON_VALUE(f, '\$.g')))) FROM $2.snap"
}
tw_log "verifying"
snap_report "MariaDB snapshot of $ROWS rows, order $ORDER" "mariadb-dump | mariadb" \
    "$(fingerprint my_source bench)" "$(fingerprint my_target bench_native)" "$(fingerprint my_target bench_tidewater)"
