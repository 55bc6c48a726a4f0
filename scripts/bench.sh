#!/usr/bin/env bash
# Tidewater throughput benchmark against PostgreSQL's native logical replication.
#
#   scripts/bench.sh pg
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
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/pg.sh
source "$SCRIPT_DIR/lib/pg.sh"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

case "${1:-}" in
pg) ;;
-h | --help)
    usage
    exit 0
    ;;
*)
    usage >&2
    tw_die "usage: scripts/bench.sh pg   (the only benchmark so far)"
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

tw_require_tools
tw_build
tw_make_workdir bench
tw_log "work dir: $TW_WORK"

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
