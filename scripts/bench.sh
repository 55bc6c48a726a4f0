#!/usr/bin/env bash
# Tidewater throughput benchmark against native replication.
#
#   scripts/bench.sh pg      PostgreSQL -> PostgreSQL vs native logical replication
#   scripts/bench.sh mysql   MariaDB -> MariaDB vs native binlog replication, and
#                            MariaDB -> PostgreSQL (see the end of this text)
#
# On one pair of throwaway PostgreSQL 15 servers (source, target; free ports on 127.0.0.1)
# and in one run, the SAME backlog of source WAL is drained twice: once by a native
# subscription (pgoutput, apply worker on the target) and once by `tidewater run`
# (snapshot = "never"). Both start from replication slots created before the backlog.
#
#   1. source db `bench`: table public.bench(id bigint PK, a int, b text, c timestamptz);
#      target dbs `bench_native` (same table, created by hand) and `bench_tidewater`
#      (empty; tidewater creates the table).
#   2. slots: native slot `bench_native` + disabled subscription (copy_data = false); then
#      tidewater runs once until it is "streaming" (creating slot `tidewater_bench` and its
#      publication) and is stopped with SIGTERM.
#   3. backlog: one transaction inserting BENCH_BIG_ROWS rows, then BENCH_SMALL_TX small
#      transactions (update, update, insert, delete) committed one by one
#      (changes = BENCH_BIG_ROWS + 4 * BENCH_SMALL_TX; 280000 by default).
#      end LSN = pg_current_wal_insert_lsn() after the backlog.
#   4. drain native (ALTER SUBSCRIPTION ... ENABLE), then tidewater (start the daemon);
#      each timed from the start until the slot's confirmed_flush_lsn >= end LSN (checked
#      every 50 ms by a function on the source server). BENCH_ORDER=tidewater-first swaps.
#   5. verify: count and md5 over all rows, source vs both targets. Exit 1 on a mismatch.
#
# Environment:
#   BENCH_BIG_ROWS=200000   rows of the single big insert transaction
#   BENCH_SMALL_TX=20000    small transactions (4 changes each)
#   BENCH_TIMEOUT=1200      seconds each drain may take before the run is abandoned
#   BENCH_ORDER=native-first | tidewater-first
#   BENCH_KEEP_LOGS=DIR     copy the daemon and server logs to DIR at the end
#   TIDEWATER_BIN=path      use this binary instead of `cargo build --release`
#   PG_BIN=/usr/lib/postgresql/15/bin
#
# Quick run:  BENCH_BIG_ROWS=20000 BENCH_SMALL_TX=2000 scripts/bench.sh pg
#
# mysql mode: three throwaway MariaDB servers (my_source: row binlog, server-id 1;
# my_replica: server-id 2, native replica; my_target: tidewater's target) and a throwaway
# PostgreSQL target; table bench.bench(id BIGINT PK, a INT, b VARCHAR(64), c DATETIME(6)).
#   1. the table is created on the source and by hand on the replica; the source's
#      position (SHOW MASTER STATUS, @@gtid_binlog_pos) is recorded; the replica gets
#      gtid_slave_pos = that GTID and CHANGE MASTER TO ... MASTER_USE_GTID = slave_pos
#      (not started); tidewater runs each pipeline once (snapshot = "never": pipeline
#      bench_my MariaDB -> MariaDB, server_id 101; pipeline bench_pg MariaDB -> PostgreSQL
#      db bench_tidewater, server_id 102) until "streaming", then SIGTERM.
#   2. the same backlog (1 big insert transaction + small transactions by a procedure).
#      end = SHOW MASTER STATUS + @@gtid_binlog_pos.
#   3. native: START SLAVE, timed until MASTER_GTID_WAIT(end gtid) on the replica returns;
#      tidewater (each pipeline alone): daemon start, timed until a routine inside its
#      target (procedure / plpgsql function `tidewater_wait`, checking every 5 ms) sees the
#      pipeline's checkpoint row at or past the end file:pos. Both waits run inside the
#      server that is waited for: nothing is polled from outside, nothing loads the machine.
#      /status applied_position is checked against the end position afterwards.
#   4. verify: count, sum(id), sum(a) and md5 of the rows (id,a,b,c) dumped in id order,
#      source vs replica vs tidewater MariaDB target vs PostgreSQL target.
# Extra environment: MARIADBD, MY_OS_USER (mysql), MY_BUFFER_POOL (256M).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/pg.sh
source "$SCRIPT_DIR/lib/pg.sh"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

MODE="${1:-}"
case "$MODE" in
pg | mysql) ;;
-h | --help)
    usage
    exit 0
    ;;
*)
    usage >&2
    tw_die "usage: scripts/bench.sh pg|mysql"
    ;;
esac

BIG="${BENCH_BIG_ROWS:-200000}"
SMALL="${BENCH_SMALL_TX:-20000}"
TIMEOUT="${BENCH_TIMEOUT:-1200}"
ORDER="${BENCH_ORDER:-native-first}"
[[ "$BIG" =~ ^[0-9]+$ && "$BIG" -ge 2 ]] || tw_die "BENCH_BIG_ROWS must be a number >= 2"
[[ "$SMALL" =~ ^[0-9]+$ ]] || tw_die "BENCH_SMALL_TX must be a number"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || tw_die "BENCH_TIMEOUT must be a number of seconds"
case "$ORDER" in native-first | tidewater-first) ;; *) tw_die "BENCH_ORDER: native-first or tidewater-first" ;; esac
CHANGES=$((BIG + 4 * SMALL))

# ================================================================== mysql mode
# (called after tw_make_workdir; see the header for the procedure)
bench_mysql() {
    local SRC=my_source REP=my_replica TGT=my_target
    keep_my_logs() {
        [[ -n "${BENCH_KEEP_LOGS:-}" ]] || return 0
        mkdir -p "$BENCH_KEEP_LOGS"
        cp "$TW_WORK"/tidewater-*.log "$BENCH_KEEP_LOGS"/ 2>/dev/null || true
        local n
        for n in $SRC $REP $TGT; do cp "$TW_WORK/$n/error.log" "$BENCH_KEEP_LOGS/$n-error.log" 2>/dev/null || true; done
        cp "$TW_WORK/target/server.log" "$BENCH_KEEP_LOGS/pg-target-server.log" 2>/dev/null || true
    }

    # ------------------------------------------------------------------ servers
    tw_log "starting MariaDB source, native replica and tidewater target, and a PostgreSQL target"
    my_server_start $SRC 1 binlog
    my_server_start $REP 2
    my_server_start $TGT 3
    pg_server_start target
    local SRC_PORT REP_PORT TGT_PORT PG_PORT
    SRC_PORT="$(my_port $SRC)"
    REP_PORT="$(my_port $REP)"
    TGT_PORT="$(my_port $TGT)"
    PG_PORT="$(pg_port target)"
    tw_log "MariaDB source 127.0.0.1:$SRC_PORT  replica :$REP_PORT  target :$TGT_PORT;  PostgreSQL target :$PG_PORT"
    tw_log "MariaDB $(my_sql $SRC -e 'SELECT VERSION()')"

    local TABLE_DDL="CREATE TABLE bench.bench (id BIGINT PRIMARY KEY, a INT, b VARCHAR(64), c DATETIME(6))"
    my_sql $SRC -e "CREATE DATABASE bench CHARACTER SET utf8mb4; $TABLE_DDL"
    my_sql $REP -e "CREATE DATABASE bench CHARACTER SET utf8mb4; $TABLE_DDL"
    # tidewater's MariaDB target: the database of its URL must exist; tidewater creates the table.
    my_sql $TGT -e "CREATE DATABASE bench CHARACTER SET utf8mb4"
    # The small transactions: each updates two rows, inserts one and deletes one, and
    # commits. Every statement must hit exactly one row (so the change count is exact).
    # (CREATE PROCEDURE is binlogged too; it happens before the start position.)
    my_sql $SRC bench <<'SQL'
DELIMITER //
CREATE PROCEDURE bench_small(big BIGINT, n INT)
BEGIN
    DECLARE i INT DEFAULT 1;
    WHILE i <= n DO
        START TRANSACTION;
        UPDATE bench SET a = a + 1, c = NOW(6) WHERE id = i + 1;
        IF ROW_COUNT() <> 1 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'bench_small: update 1 missed'; END IF;
        UPDATE bench SET b = MD5(b), a = a - 7 WHERE id = big + i - 1;
        IF ROW_COUNT() <> 1 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'bench_small: update 2 missed'; END IF;
        INSERT INTO bench (id, a, b, c) VALUES (big + i, i, MD5(i), NOW(6));
        DELETE FROM bench WHERE id = i;
        IF ROW_COUNT() <> 1 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'bench_small: delete missed'; END IF;
        COMMIT;
        SET i = i + 1;
    END WHILE;
END//
DELIMITER ;
SQL
    pg_create_db target bench_tidewater

    # ------------------------------------------------------------------ start position
    local START_FILE START_POS START_GTID
    read -r START_FILE START_POS <<<"$(my_master_status $SRC)"
    START_GTID="$(my_sql $SRC -e 'SELECT @@gtid_binlog_pos')"
    tw_log "source position before the backlog: $START_FILE:$START_POS gtid=$START_GTID"

    tw_log "native: gtid_slave_pos = $START_GTID; CHANGE MASTER TO ... MASTER_USE_GTID = slave_pos (not started)"
    my_sql $REP -e "SET GLOBAL gtid_slave_pos = '$START_GTID';
        CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = $SRC_PORT,
            MASTER_USER = '$REPLICATOR_USER', MASTER_PASSWORD = '$REPLICATOR_PASSWORD',
            MASTER_USE_GTID = slave_pos"

    local STATUS_PORT PW_FILE
    STATUS_PORT="$(tw_free_port)"
    PW_FILE="$TW_WORK/replicator.pw"
    (umask 077 && printf '%s\n' "$REPLICATOR_PASSWORD" >"$PW_FILE")
    # write_config FILE PIPELINE SERVER_ID TARGET_SECTION...
    write_config() {
        local file="$1" pipeline="$2" server_id="$3" target="$4"
        cat >"$file" <<EOF
# Written by scripts/bench.sh mysql
[status]
listen = "127.0.0.1:$STATUS_PORT"

[log]
format = "text"
level = "info"

[sources.src]
type = "mysql"
url = "mysql://$REPLICATOR_USER@127.0.0.1:$SRC_PORT"
password_file = "$PW_FILE"
server_id = $server_id
tables = ["bench.*"]

$target

[[pipelines]]
name = "$pipeline"
source = "src"
target = "dst"
snapshot = "never"
on_error = "dead_letter"
EOF
    }
    local CONFIG_MY="$TW_WORK/tidewater-my.toml" CONFIG_PG="$TW_WORK/tidewater-pg.toml"
    write_config "$CONFIG_MY" bench_my 101 "[targets.dst]
type = \"mysql\"
url = \"mysql://$REPLICATOR_USER@127.0.0.1:$TGT_PORT/bench\"
password_file = \"$PW_FILE\""
    write_config "$CONFIG_PG" bench_pg 102 "[targets.dst]
type = \"postgres\"
url = \"postgres://$REPLICATOR_USER@127.0.0.1:$PG_PORT/bench_tidewater\"
password_file = \"$PW_FILE\""

    DAEMON_PID=""
    DAEMON_RUN=0
    local CONFIG=""
    start_daemon() {
        DAEMON_RUN=$((DAEMON_RUN + 1))
        DAEMON_LOG="$TW_WORK/tidewater-$DAEMON_RUN.log"
        "$TIDEWATER" run --config "$CONFIG" >"$DAEMON_LOG" 2>&1 </dev/null &
        DAEMON_PID=$!
        tw_track_pid "$DAEMON_PID"
    }
    stop_daemon() {
        tw_stop_pid "$DAEMON_PID" 60
        tw_untrack_pid "$DAEMON_PID"
        DAEMON_PID=""
    }
    daemon_failed() {
        echo "--- tidewater log ($DAEMON_LOG, tail) ---" >&2
        tail -n 40 "$DAEMON_LOG" >&2 || true
        keep_my_logs
        tw_die "$1"
    }

    for CONFIG in "$CONFIG_MY" "$CONFIG_PG"; do
        tw_log "tidewater: first run of $(basename "$CONFIG") until streaming, then SIGTERM"
        "$TIDEWATER" check --config "$CONFIG" >"$TW_WORK/check.log" 2>&1 || {
            cat "$TW_WORK/check.log" >&2
            keep_my_logs
            tw_die "tidewater check failed ($CONFIG)"
        }
        start_daemon
        tw_wait_state "$STATUS_PORT" streaming 120 "$DAEMON_PID" || daemon_failed "tidewater did not start streaming"
        tw_log "  applied_position: $(tw_status_field "$STATUS_PORT" '.pipelines[0].applied_position')"
        stop_daemon
    done

    # ------------------------------------------------------------------ backlog
    tw_log "backlog: 1 transaction inserting $BIG rows + $SMALL small transactions ($CHANGES changes)"
    local t0 t1
    t0=$EPOCHREALTIME
    my_sql $SRC bench -e "INSERT INTO bench (id, a, b, c)
        SELECT seq, seq % 100000, MD5(seq), TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq SECOND
        FROM seq_1_to_$BIG"
    if [[ "$SMALL" -gt 0 ]]; then
        my_sql $SRC bench -e "CALL bench_small($BIG, $SMALL)"
    fi
    t1=$EPOCHREALTIME
    local END_FILE END_POS END_GTID rows BINLOG_BYTES
    read -r END_FILE END_POS <<<"$(my_master_status $SRC)"
    END_GTID="$(my_sql $SRC -e 'SELECT @@gtid_binlog_pos')"
    rows="$(my_sql $SRC bench -e 'SELECT count(*) FROM bench')"
    [[ "$rows" == "$BIG" ]] || tw_die "source has $rows rows after the backlog, expected $BIG"
    if [[ "$END_FILE" == "$START_FILE" ]]; then
        BINLOG_BYTES=$((END_POS - START_POS))
    else
        BINLOG_BYTES="$(my_sql $SRC -e 'SHOW BINARY LOGS' | awk -F'\t' -v s="$START_FILE" -v sp="$START_POS" -v ep="$END_POS" -v e="$END_FILE" '
            $1 >= s && $1 <= e { t += $2 } END { print t - sp - ($2 - ep) }')"
    fi
    tw_log "backlog written in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')s; binlog $START_FILE:$START_POS .. $END_FILE:$END_POS gtid=$END_GTID ($((BINLOG_BYTES / 1024 / 1024)) MiB)"

    # ------------------------------------------------------------------ fingerprints
    # count, sum(id), sum(a) and md5 of "id,a,b,c" lines in id order (c with 6 decimals).
    fp_my() {
        local name="$1" sums md5
        sums="$(my_sql "$name" bench -e "SELECT CONCAT(count(*), ' ', coalesce(sum(id), 0), ' ', coalesce(sum(a), 0)) FROM bench" 2>&1)" || {
            echo "query-failed"
            return
        }
        md5="$(my_sql "$name" bench --quick -e "SELECT CONCAT_WS(',', id, a, b, DATE_FORMAT(c, '%Y-%m-%d %H:%i:%s.%f')) FROM bench ORDER BY id" | md5sum | cut -c1-32)"
        echo "$sums $md5"
    }
    fp_pg() {
        local db="$1" tbl="$2" sums md5
        sums="$(pg_psql target "$db" -c "SELECT count(*) || ' ' || coalesce(sum(id), 0) || ' ' || coalesce(sum(a), 0) FROM $tbl" 2>&1)" || {
            echo "query-failed"
            return
        }
        md5="$(pg_psql target "$db" -c "SET TimeZone = 'UTC'" -c "SELECT concat_ws(',', id, a, b, to_char(c, 'YYYY-MM-DD HH24:MI:SS.US')) FROM $tbl ORDER BY id" | md5sum | cut -c1-32)"
        echo "$sums $md5"
    }

    # ------------------------------------------------------------------ drains
    local NATIVE_S="" FP_NATIVE=""
    tw_log "native: START SLAVE; waiting for MASTER_GTID_WAIT('$END_GTID')"
    t0=$EPOCHREALTIME
    my_sql $REP -e "START SLAVE"
    local started=$SECONDS r
    while :; do
        r="$(my_sql $REP -e "SELECT MASTER_GTID_WAIT('$END_GTID', 1)")"
        [[ "$r" == 0 ]] && break
        local err
        err="$(my_sql $REP -e 'SHOW SLAVE STATUS\G' | awk -F': ' '/Last_(IO|SQL)_Error: ./ {print $2}')"
        if [[ -n "$err" ]] || ((SECONDS - started > TIMEOUT)); then
            my_sql $REP -e 'SHOW SLAVE STATUS\G' >&2 || true
            keep_my_logs
            tw_die "native replication did not reach $END_GTID: ${err:-timeout}"
        fi
    done
    t1=$EPOCHREALTIME
    NATIVE_S="$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')"
    FP_NATIVE="$(fp_my $REP)"
    my_sql $REP -e "STOP SLAVE"
    tw_log "native: ${NATIVE_S}s"

    # Waiting for tidewater the way the native side waits (MASTER_GTID_WAIT runs inside the
    # replica): a routine inside each tidewater target waits, checking every 5 ms, until the
    # pipeline's checkpoint row (committed in the same target transaction as the rows it
    # covers) is at or past END_FILE:END_POS, for at most 1 s per call. No process is started
    # per check and nothing polls the daemon, so the wait neither lags nor loads the machine.
    # The routines print 1 when the position is reached, 0 on timeout.
    my_sql $TGT bench <<'SQL'
DELIMITER //
CREATE PROCEDURE tidewater_wait(p VARCHAR(191), want_file VARCHAR(255), want_pos BIGINT UNSIGNED, secs DOUBLE)
BEGIN
    DECLARE deadline DOUBLE DEFAULT UNIX_TIMESTAMP(SYSDATE(6)) + secs;
    DECLARE done INT DEFAULT 0;
    WHILE done = 0 AND UNIX_TIMESTAMP(SYSDATE(6)) < deadline DO
        SELECT COUNT(*) INTO done FROM tidewater_checkpoints
        WHERE pipeline = p
          AND (SUBSTRING_INDEX(source_position, ':', 1) > want_file
               OR (SUBSTRING_INDEX(source_position, ':', 1) = want_file
                   AND CAST(SUBSTRING_INDEX(SUBSTRING_INDEX(source_position, ' ', 1), ':', -1) AS UNSIGNED) >= want_pos));
        IF done = 0 THEN DO SLEEP(0.005); END IF;
    END WHILE;
    SELECT done;
END//
DELIMITER ;
SQL
    pg_psql target bench_tidewater -c "CREATE FUNCTION tidewater_wait(p text, want_file text, want_pos bigint, secs float8)
        RETURNS int LANGUAGE plpgsql AS \$f\$
        DECLARE deadline timestamptz := clock_timestamp() + secs * interval '1 second';
        BEGIN
            LOOP
                -- (READ COMMITTED: each query sees what was committed before it started)
                IF EXISTS (SELECT 1 FROM public.tidewater_checkpoints
                           WHERE pipeline = p
                             AND (split_part(source_position, ':', 1) > want_file
                                  OR (split_part(source_position, ':', 1) = want_file
                                      AND split_part(split_part(source_position, ' ', 1), ':', 2)::bigint >= want_pos))) THEN
                    RETURN 1;
                END IF;
                IF clock_timestamp() >= deadline THEN RETURN 0; END IF;
                PERFORM pg_sleep(0.005);
            END LOOP;
        END \$f\$" >/dev/null
    wait_my() { my_sql $TGT bench -e "CALL tidewater_wait('bench_my', '$END_FILE', $END_POS, 1)"; }
    wait_pg() { pg_psql target bench_tidewater -c "SELECT tidewater_wait('bench_pg', '$END_FILE', $END_POS, 1)"; }
    # applied_position now, from /status (for the report; not used for timing).
    applied_position_now() {
        APPLIED="$(tw_status_field "$STATUS_PORT" '.pipelines[0].applied_position' 2>/dev/null || true)"
    }

    # reached POSITION: applied_position "FILE:POS gtid=..." is at or past END_FILE:END_POS
    reached() {
        local p="$1" file pos
        [[ -n "$p" ]] || return 1
        file="${p%%:*}"
        pos="${p#*:}"
        pos="${pos%% *}"
        [[ "$pos" =~ ^[0-9]+$ ]] || return 1
        [[ "$file" > "$END_FILE" ]] && return 0
        [[ "$file" == "$END_FILE" && "$pos" -ge "$END_POS" ]]
    }
    # drain_tw CONFIG LABEL FINGERPRINT WAIT: sets TW_S, TW_HWM_KIB, TW_CPU_S, TW_EVENTS, TW_STATE, TW_POS
    drain_tw() {
        CONFIG="$1"
        local label="$2" t0 started=$SECONDS fp_cmd="$3" wait_cmd="$4" r
        tw_log "tidewater $label: starting the daemon; waiting for its checkpoint to reach $END_FILE:$END_POS"
        t0=$EPOCHREALTIME
        start_daemon
        while :; do
            # (before the daemon's first commit the routine just waits: not an error)
            r="$($wait_cmd 2>/dev/null || true)"
            [[ "$r" == 1 ]] && break
            kill -0 "$DAEMON_PID" 2>/dev/null || daemon_failed "tidewater $label exited"
            if ((SECONDS - started > TIMEOUT)); then
                applied_position_now
                daemon_failed "tidewater $label did not reach $END_FILE:$END_POS within ${TIMEOUT}s (applied_position: ${APPLIED:-?})"
            fi
            applied_position_now
            tw_log "  $label: applied_position ${APPLIED:-?}, events $(tw_status_field "$STATUS_PORT" '.pipelines[0].events_applied_total' || true)"
        done
        t1=$EPOCHREALTIME
        TW_S="$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')"
        applied_position_now
        TW_POS="$APPLIED"
        reached "$TW_POS" || daemon_failed "tidewater $label: the checkpoint reached the end but /status says applied_position ${TW_POS:-?}"
        TW_FP="$($fp_cmd)"
        TW_HWM_KIB="$(tw_vm_hwm_kib "$DAEMON_PID")"
        TW_CPU_S="$(tw_cpu_seconds "$DAEMON_PID")"
        TW_EVENTS="$(tw_status_field "$STATUS_PORT" '.pipelines[0].events_applied_total')"
        TW_STATE="$(tw_status_field "$STATUS_PORT" '.pipelines[0].state')"
        curl -fsS --max-time 2 "http://127.0.0.1:$STATUS_PORT/status" >"$TW_WORK/status-$label.json" 2>/dev/null || true
        stop_daemon
        TW_FP_AFTER="$($fp_cmd)"
        tw_log "tidewater $label: ${TW_S}s (applied_position $TW_POS)"
    }
    fp_tw_my() { fp_my $TGT; }
    PG_TABLE=""
    fp_tw_pg() {
        if [[ -z "$PG_TABLE" ]]; then
            PG_TABLE="$(pg_psql target bench_tidewater -c "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)
                FROM information_schema.tables WHERE table_name = 'bench' ORDER BY table_schema = 'bench' DESC LIMIT 1")"
        fi
        if [[ -z "$PG_TABLE" ]]; then echo "no-table"; else fp_pg bench_tidewater "$PG_TABLE"; fi
    }

    local TW_S TW_POS TW_FP TW_FP_AFTER TW_HWM_KIB TW_CPU_S TW_EVENTS TW_STATE
    drain_tw "$CONFIG_MY" mariadb fp_tw_my wait_my
    local MY_S="$TW_S" MY_POS="$TW_POS" MY_FP="$TW_FP" MY_FP_AFTER="$TW_FP_AFTER" MY_HWM="$TW_HWM_KIB" MY_CPU="$TW_CPU_S" MY_EV="$TW_EVENTS" MY_STATE="$TW_STATE"
    drain_tw "$CONFIG_PG" postgres fp_tw_pg wait_pg
    local PGT_S="$TW_S" PGT_POS="$TW_POS" PGT_FP="$TW_FP" PGT_FP_AFTER="$TW_FP_AFTER" PGT_HWM="$TW_HWM_KIB" PGT_CPU="$TW_CPU_S" PGT_EV="$TW_EVENTS" PGT_STATE="$TW_STATE"

    # ------------------------------------------------------------------ verification
    local FP_SRC v_native=OK v_my=OK v_pg=OK
    FP_SRC="$(fp_my $SRC)"
    [[ "$FP_NATIVE" == "$FP_SRC" ]] || v_native=MISMATCH
    [[ "$MY_FP" == "$FP_SRC" ]] || v_my=MISMATCH
    [[ "$PGT_FP" == "$FP_SRC" ]] || v_pg=MISMATCH
    if [[ "$MY_FP_AFTER" != "$MY_FP" ]]; then
        tw_warn "the tidewater MariaDB target changed after applied_position reached the end: $MY_FP -> $MY_FP_AFTER"
        v_my=MISMATCH
    fi
    if [[ "$PGT_FP_AFTER" != "$PGT_FP" ]]; then
        tw_warn "the tidewater PostgreSQL target changed after applied_position reached the end: $PGT_FP -> $PGT_FP_AFTER"
        v_pg=MISMATCH
    fi
    local DL_PG
    DL_PG="$(pg_psql target bench_tidewater -c "SELECT CASE WHEN to_regclass('public.tidewater_dead_letters') IS NULL THEN 'n/a' END" 2>/dev/null || true)"
    if [[ -z "$DL_PG" ]]; then
        DL_PG="$(pg_psql target bench_tidewater -c "SELECT count(*) FROM public.tidewater_dead_letters" 2>/dev/null || echo '?')"
    fi

    # ------------------------------------------------------------------ report
    rate() { awk -v n="$CHANGES" -v s="$1" 'BEGIN{ if (s > 0) printf "%.0f", n/s; else print "?" }'; }
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "?" }'; }
    mib() { awk -v k="${1:-0}" 'BEGIN{ if (k > 0) printf "%.1f", k/1024; else print "?" }'; }
    local NATIVE_RATE MY_RATE PGT_RATE
    NATIVE_RATE="$(rate "$NATIVE_S")"
    MY_RATE="$(rate "$MY_S")"
    PGT_RATE="$(rate "$PGT_S")"

    echo
    echo "=== tidewater benchmark: scripts/bench.sh mysql ==="
    printf '%-30s %s\n' "backlog" "1 x $BIG-row insert + $SMALL x (2 updates, 1 insert, 1 delete)"
    printf '%-30s %s\n' "changes" "$CHANGES"
    printf '%-30s %s\n' "source binlog" "$((BINLOG_BYTES / 1024 / 1024)) MiB ($START_FILE:$START_POS .. $END_FILE:$END_POS, gtid $START_GTID .. $END_GTID)"
    printf '%-30s %10s s  %10s changes/s\n' "native replication (MariaDB)" "$NATIVE_S" "$NATIVE_RATE"
    printf '%-30s %10s s  %10s changes/s  ratio %s  RSS %s MiB  CPU %s s\n' "tidewater MariaDB->MariaDB" \
        "$MY_S" "$MY_RATE" "$(ratio "$MY_RATE" "$NATIVE_RATE")" "$(mib "$MY_HWM")" "${MY_CPU:-?}"
    printf '%-30s %10s s  %10s changes/s  ratio %s  RSS %s MiB  CPU %s s\n' "tidewater MariaDB->PostgreSQL" \
        "$PGT_S" "$PGT_RATE" "$(ratio "$PGT_RATE" "$NATIVE_RATE")" "$(mib "$PGT_HWM")" "${PGT_CPU:-?}"
    printf '%-30s %s\n' "" "(ratio = tidewater/native changes/s; >1 means tidewater is faster; RSS = VmHWM)"
    printf '%-30s %s\n' "events applied (status)" "MariaDB ${MY_EV:-?} (state ${MY_STATE:-?}), PostgreSQL ${PGT_EV:-?} (state ${PGT_STATE:-?})"
    printf '%-30s %s\n' "applied_position at the end" "MariaDB $MY_POS; PostgreSQL $PGT_POS"
    printf '%-30s %s\n' "dead letters (PG target)" "$DL_PG"
    printf '%-30s %s\n' "verify source" "$FP_SRC   (count sum(id) sum(a) md5)"
    printf '%-30s %s  %s\n' "verify native replica" "$FP_NATIVE" "$v_native"
    printf '%-30s %s  %s\n' "verify tidewater MariaDB" "$MY_FP" "$v_my"
    printf '%-30s %s  %s\n' "verify tidewater PostgreSQL" "$PGT_FP" "$v_pg"

    local problems
    problems="$(grep -hE '\b(ERROR|WARN)\b' "$TW_WORK"/tidewater-*.log 2>/dev/null | tail -n 20 || true)"
    if [[ -n "$problems" ]]; then
        echo
        echo "tidewater logged warnings/errors (last 20):"
        echo "$problems"
    fi
    keep_my_logs
    if [[ "$v_native" != OK || "$v_my" != OK || "$v_pg" != OK ]]; then
        echo
        echo "VERIFICATION FAILED" >&2
        return 1
    fi
    echo
    echo "verification: OK (source, native replica, tidewater MariaDB and PostgreSQL targets are identical)"
}

tw_require_tools
if [[ "$MODE" == mysql ]]; then
    # shellcheck source=lib/mysql.sh
    source "$SCRIPT_DIR/lib/mysql.sh"
    my_require_tools
fi
tw_build
tw_make_workdir bench
tw_log "work dir: $TW_WORK"

if [[ "$MODE" == mysql ]]; then
    bench_mysql
    exit $?
fi

PIPELINE=bench
TW_SLOT="tidewater_$PIPELINE"
NATIVE_SLOT=bench_native

keep_logs() {
    [[ -n "${BENCH_KEEP_LOGS:-}" ]] || return 0
    mkdir -p "$BENCH_KEEP_LOGS"
    cp "$TW_WORK"/tidewater-*.log "$BENCH_KEEP_LOGS"/ 2>/dev/null || true
    cp "$TW_WORK/source/server.log" "$BENCH_KEEP_LOGS/source-server.log" 2>/dev/null || true
    cp "$TW_WORK/target/server.log" "$BENCH_KEEP_LOGS/target-server.log" 2>/dev/null || true
}

# ------------------------------------------------------------------ servers
tw_log "starting the source and target PostgreSQL servers"
pg_server_start source
pg_server_start target
SRC_PORT="$(pg_port source)"
TGT_PORT="$(pg_port target)"
tw_log "source: 127.0.0.1:$SRC_PORT  target: 127.0.0.1:$TGT_PORT"

TABLE_DDL="CREATE TABLE public.bench (id bigint PRIMARY KEY, a int, b text, c timestamptz)"

pg_create_db source bench
pg_psql_as "$REPLICATOR_USER" source bench <<SQL
$TABLE_DDL;
CREATE PUBLICATION bench_native_pub FOR TABLE public.bench;

-- The small transactions: each updates two rows, inserts one and deletes one, and commits.
-- Every statement must hit exactly one row (so the change count is exact).
CREATE PROCEDURE public.bench_small(big bigint, n int) LANGUAGE plpgsql AS \$\$
BEGIN
    FOR i IN 1..n LOOP
        UPDATE public.bench SET a = a + 1, c = clock_timestamp() WHERE id = i + 1;
        IF NOT FOUND THEN RAISE EXCEPTION 'bench_small: row % missing', i + 1; END IF;
        UPDATE public.bench SET b = md5(b), a = a - 7 WHERE id = big + i - 1;
        IF NOT FOUND THEN RAISE EXCEPTION 'bench_small: row % missing', big + i - 1; END IF;
        INSERT INTO public.bench (id, a, b, c) VALUES (big + i, i, md5(i::text), clock_timestamp());
        DELETE FROM public.bench WHERE id = i;
        IF NOT FOUND THEN RAISE EXCEPTION 'bench_small: row % missing', i; END IF;
        COMMIT;
    END LOOP;
END
\$\$;
SQL

# Waits (inside the server, polling every 50 ms) until SLOT has confirmed TARGET_LSN, or
# max_s seconds have passed. Lives in the `postgres` db: pg_replication_slots is global.
pg_psql source postgres <<'SQL'
CREATE FUNCTION bench_wait_slot(slot text, target_lsn pg_lsn, max_s float8) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + make_interval(secs => max_s);
BEGIN
    LOOP
        IF EXISTS (SELECT 1 FROM pg_replication_slots
                   WHERE slot_name = slot AND confirmed_flush_lsn >= target_lsn) THEN
            RETURN true;
        END IF;
        IF clock_timestamp() >= deadline THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SQL

pg_create_db target bench_native
pg_create_db target bench_tidewater
pg_psql_as "$REPLICATOR_USER" target bench_native -c "$TABLE_DDL" >/dev/null

# ------------------------------------------------------------------ slots (before the backlog)
tw_log "native: slot $NATIVE_SLOT and a disabled subscription (copy_data = false)"
pg_psql source bench -c "SELECT pg_create_logical_replication_slot('$NATIVE_SLOT', 'pgoutput')" >/dev/null
pg_psql target bench_native -c "CREATE SUBSCRIPTION bench_native
    CONNECTION 'host=127.0.0.1 port=$SRC_PORT dbname=bench user=$REPLICATOR_USER password=$REPLICATOR_PASSWORD'
    PUBLICATION bench_native_pub
    WITH (copy_data = false, create_slot = false, slot_name = '$NATIVE_SLOT', enabled = false)" >/dev/null

STATUS_PORT="$(tw_free_port)"
PW_FILE="$TW_WORK/replicator.pw"
CONFIG="$TW_WORK/tidewater.toml"
(umask 077 && printf '%s\n' "$REPLICATOR_PASSWORD" >"$PW_FILE")
cat >"$CONFIG" <<EOF
# Written by scripts/bench.sh
[status]
listen = "127.0.0.1:$STATUS_PORT"

[log]
format = "text"
level = "info"

[sources.src]
type = "postgres"
url = "postgres://$REPLICATOR_USER@127.0.0.1:$SRC_PORT/bench"
password_file = "$PW_FILE"
tables = ["public.bench"]

[targets.dst]
type = "postgres"
url = "postgres://$REPLICATOR_USER@127.0.0.1:$TGT_PORT/bench_tidewater"
password_file = "$PW_FILE"

[[pipelines]]
name = "$PIPELINE"
source = "src"
target = "dst"
snapshot = "never"
on_error = "dead_letter"
EOF

DAEMON_PID=""
DAEMON_RUN=0
start_daemon() {
    DAEMON_RUN=$((DAEMON_RUN + 1))
    DAEMON_LOG="$TW_WORK/tidewater-$DAEMON_RUN.log"
    "$TIDEWATER" run --config "$CONFIG" >"$DAEMON_LOG" 2>&1 </dev/null &
    DAEMON_PID=$!
    tw_track_pid "$DAEMON_PID"
}
stop_daemon() {
    tw_stop_pid "$DAEMON_PID" 60
    tw_untrack_pid "$DAEMON_PID"
    DAEMON_PID=""
}
daemon_failed() {
    echo "--- tidewater log ($DAEMON_LOG, tail) ---" >&2
    tail -n 40 "$DAEMON_LOG" >&2 || true
    keep_logs
    tw_die "$1"
}

tw_log "tidewater: first run (creates slot $TW_SLOT, publication, target table), then SIGTERM"
"$TIDEWATER" check --config "$CONFIG" >"$TW_WORK/check.log" 2>&1 || {
    cat "$TW_WORK/check.log" >&2
    tw_die "tidewater check failed"
}
start_daemon
tw_wait_state "$STATUS_PORT" streaming 120 "$DAEMON_PID" || daemon_failed "tidewater did not start streaming"
stop_daemon

slots="$(pg_psql source postgres -c "SELECT string_agg(slot_name || ':' || coalesce(confirmed_flush_lsn::text, '?') || ':' || active, ' ' ORDER BY slot_name) FROM pg_replication_slots")"
tw_log "slots before the backlog: $slots"
[[ "$slots" == *"$NATIVE_SLOT:"* && "$slots" == *"$TW_SLOT:"* ]] || tw_die "expected slots $NATIVE_SLOT and $TW_SLOT"

# ------------------------------------------------------------------ backlog
START_LSN="$(pg_psql source bench -c "SELECT pg_current_wal_insert_lsn()")"
tw_log "backlog: 1 transaction inserting $BIG rows + $SMALL small transactions ($CHANGES changes)"
t0=$EPOCHREALTIME
pg_psql_as "$REPLICATOR_USER" source bench -c \
    "INSERT INTO public.bench (id, a, b, c)
     SELECT g, (g % 100000)::int, md5(g::text), timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'
     FROM generate_series(1, $BIG) g" >/dev/null
if [[ "$SMALL" -gt 0 ]]; then
    pg_psql_as "$REPLICATOR_USER" source bench -c "CALL public.bench_small($BIG, $SMALL)" >/dev/null
fi
t1=$EPOCHREALTIME
END_LSN="$(pg_psql source bench -c "SELECT pg_current_wal_insert_lsn()")"
WAL_BYTES="$(pg_psql source bench -c "SELECT pg_wal_lsn_diff('$END_LSN', '$START_LSN')::bigint")"
rows="$(pg_psql source bench -c "SELECT count(*) FROM public.bench")"
[[ "$rows" == "$BIG" ]] || tw_die "source has $rows rows after the backlog, expected $BIG"
tw_log "backlog written in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')s; WAL $START_LSN .. $END_LSN ($((WAL_BYTES / 1024 / 1024)) MiB)"

# ------------------------------------------------------------------ drains
# wait_slot SLOT LABEL CHECK_CMD: returns when SLOT confirmed END_LSN; runs CHECK_CMD
# (must succeed) about once a second; dies after TIMEOUT seconds.
wait_slot() {
    local slot="$1" label="$2" check="$3" started=$SECONDS done
    while :; do
        done="$(pg_psql source postgres -c "SELECT bench_wait_slot('$slot', '$END_LSN', 1.0)")"
        [[ "$done" == t ]] && return 0
        $check || return 1
        if ((SECONDS - started > TIMEOUT)); then
            tw_warn "$label: slot $slot did not reach $END_LSN within ${TIMEOUT}s"
            pg_psql source postgres -c "SELECT slot_name, active, confirmed_flush_lsn FROM pg_replication_slots" >&2 || true
            return 1
        fi
    done
}
native_alive() { return 0; }

# count and md5 over all rows (taken on each target as soon as its slot confirmed the end
# LSN, i.e. before the subscription is disabled / the daemon is stopped: an acknowledged
# position must already be applied).
fingerprint() {
    local server="$1" db="$2"
    pg_psql "$server" "$db" -c "SET TimeZone = 'UTC'" -c \
        "SELECT count(*) || ' ' || coalesce(md5(string_agg(ROW(id, a, b, c)::text, ',' ORDER BY id)), '-') FROM public.bench" 2>&1 ||
        echo "query-failed"
}
daemon_alive() { kill -0 "$DAEMON_PID" 2>/dev/null; }

NATIVE_S=""
TW_S=""
FP_NATIVE=""
FP_TW=""
TW_HWM_KIB=""
TW_CPU_S=""
TW_EVENTS=""
TW_STATE=""

drain_native() {
    tw_log "native: ALTER SUBSCRIPTION bench_native ENABLE; waiting for slot $NATIVE_SLOT"
    local t0 t1
    t0=$EPOCHREALTIME
    pg_psql target bench_native -c "ALTER SUBSCRIPTION bench_native ENABLE" >/dev/null
    wait_slot "$NATIVE_SLOT" native native_alive || {
        tail -n 30 "$TW_WORK/target/server.log" >&2 || true
        keep_logs
        tw_die "native replication did not drain the backlog"
    }
    t1=$EPOCHREALTIME
    NATIVE_S="$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')"
    FP_NATIVE="$(fingerprint target bench_native)"
    pg_psql target bench_native -c "ALTER SUBSCRIPTION bench_native DISABLE" >/dev/null
    tw_log "native: ${NATIVE_S}s"
}

drain_tidewater() {
    tw_log "tidewater: starting the daemon; waiting for slot $TW_SLOT"
    local t0 t1
    t0=$EPOCHREALTIME
    start_daemon
    wait_slot "$TW_SLOT" tidewater daemon_alive || daemon_failed "tidewater did not drain the backlog (exited or timed out)"
    t1=$EPOCHREALTIME
    TW_S="$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')"
    FP_TW="$(fingerprint target bench_tidewater)"
    TW_HWM_KIB="$(tw_vm_hwm_kib "$DAEMON_PID")"
    TW_CPU_S="$(tw_cpu_seconds "$DAEMON_PID")"
    TW_EVENTS="$(tw_status_field "$STATUS_PORT" '.pipelines[0].events_applied_total')"
    TW_STATE="$(tw_status_field "$STATUS_PORT" '.pipelines[0].state')"
    "$TIDEWATER" status --url "http://127.0.0.1:$STATUS_PORT" >"$TW_WORK/status.txt" 2>&1 || true
    stop_daemon
    tw_log "tidewater: ${TW_S}s"
}

if [[ "$ORDER" == native-first ]]; then
    drain_native
    drain_tidewater
else
    drain_tidewater
    drain_native
fi

# ------------------------------------------------------------------ verification
FP_SRC="$(fingerprint source bench)"
FP_TW_AFTER_STOP="$(fingerprint target bench_tidewater)"
DEAD_LETTERS="$(pg_psql target bench_tidewater -c \
    "SELECT CASE WHEN to_regclass('public.tidewater_dead_letters') IS NULL THEN 'n/a' END" 2>/dev/null || true)"
if [[ -z "$DEAD_LETTERS" ]]; then
    DEAD_LETTERS="$(pg_psql target bench_tidewater -c "SELECT count(*) FROM public.tidewater_dead_letters" 2>/dev/null || echo '?')"
fi

verify_native=OK
verify_tw=OK
[[ "$FP_NATIVE" == "$FP_SRC" ]] || verify_native=MISMATCH
[[ "$FP_TW" == "$FP_SRC" ]] || verify_tw=MISMATCH
if [[ "$FP_TW_AFTER_STOP" != "$FP_TW" ]]; then
    tw_warn "the tidewater target changed after the slot confirmed the end LSN: acknowledged before applied?"
    tw_warn "  at confirmation: $FP_TW   after SIGTERM: $FP_TW_AFTER_STOP"
    verify_tw=MISMATCH
fi

# ------------------------------------------------------------------ report
rate() { awk -v n="$CHANGES" -v s="$1" 'BEGIN{ if (s > 0) printf "%.0f", n/s; else print "?" }'; }
NATIVE_RATE="$(rate "$NATIVE_S")"
TW_RATE="$(rate "$TW_S")"
RATIO="$(awk -v a="$TW_RATE" -v b="$NATIVE_RATE" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "?" }')"
HWM_MIB="$(awk -v k="${TW_HWM_KIB:-0}" 'BEGIN{ if (k > 0) printf "%.1f", k/1024; else print "?" }')"

echo
echo "=== tidewater benchmark: scripts/bench.sh pg ($ORDER) ==="
printf '%-28s %s\n' "backlog" "1 x $BIG-row insert + $SMALL x (2 updates, 1 insert, 1 delete)"
printf '%-28s %s\n' "changes" "$CHANGES"
printf '%-28s %s\n' "source WAL" "$((WAL_BYTES / 1024 / 1024)) MiB ($START_LSN .. $END_LSN)"
printf '%-28s %10s s  %10s changes/s\n' "native logical replication" "$NATIVE_S" "$NATIVE_RATE"
printf '%-28s %10s s  %10s changes/s\n' "tidewater" "$TW_S" "$TW_RATE"
printf '%-28s %s\n' "ratio tidewater/native" "$RATIO  (changes/s; >1 means tidewater is faster)"
printf '%-28s %s\n' "tidewater peak RSS (VmHWM)" "$HWM_MIB MiB"
printf '%-28s %s\n' "tidewater CPU (user+sys)" "${TW_CPU_S:-?} s"
printf '%-28s %s\n' "tidewater events applied" "${TW_EVENTS:-?} (status endpoint, state ${TW_STATE:-?})"
printf '%-28s %s\n' "tidewater dead letters" "$DEAD_LETTERS"
printf '%-28s %s\n' "verify source" "$FP_SRC"
printf '%-28s %s  %s\n' "verify native target" "$FP_NATIVE" "$verify_native"
printf '%-28s %s  %s\n' "verify tidewater target" "$FP_TW" "$verify_tw"

problems="$(grep -hE '\b(ERROR|WARN)\b' "$TW_WORK"/tidewater-*.log 2>/dev/null | tail -n 20 || true)"
if [[ -n "$problems" ]]; then
    echo
    echo "tidewater logged warnings/errors (last 20):"
    echo "$problems"
fi
keep_logs

if [[ "$verify_native" != OK || "$verify_tw" != OK ]]; then
    echo
    echo "VERIFICATION FAILED" >&2
    exit 1
fi
echo
echo "verification: OK (source, native target and tidewater target are identical)"
