#!/usr/bin/env bash
# Initial snapshot benchmark: tidewater's copy of one table vs `pg_dump -t T | psql`.
#
#   scripts/bench-snapshot.sh
#
# On one pair of throwaway PostgreSQL 15 servers (source, target; free ports on
# 127.0.0.1), in one run:
#   1. source db `bench`: public.snap(id bigint PRIMARY KEY, a int, b text, c text,
#      d timestamptz, e numeric(12,2), f jsonb) with SNAP_ROWS rows (about 200 bytes a
#      row: a 64-byte text, a short text, a jsonb object), then VACUUM ANALYZE.
#   2. native: `pg_dump -t public.snap bench | psql bench_native` (pg_dump's own way:
#      COPY, then the primary key built after the load), timed until psql exits.
#   3. tidewater: `tidewater run` (snapshot = "initial") into the empty db
#      bench_tidewater, timed from the daemon's start until a function inside the target
#      (checking every 10 ms) sees the pipeline's checkpoint with snapshot_complete.
#      Peak RSS and CPU seconds of the daemon are read from /proc at that point.
#   4. verify: count and md5 of every row (in id order), source vs both targets; exit 1
#      on a mismatch.
#
# Environment:
#   SNAP_ROWS=1000000      rows of the table
#   SNAP_ORDER=native-first | tidewater-first
#   SNAP_PARALLELISM=N     the pipeline's snapshot_parallelism (default: tidewater's own)
#   TIDEWATER_BIN=path     use this binary instead of `cargo build --release`
#   PG_BIN=/usr/lib/postgresql/15/bin
#
# Quick run:  SNAP_ROWS=100000 scripts/bench-snapshot.sh
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/pg.sh
source "$SCRIPT_DIR/lib/pg.sh"
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

tw_require_tools
tw_build
tw_make_workdir bench-snapshot

tw_log "starting the source and target servers"
pg_server_start source
pg_server_start target
pg_create_db source bench
pg_create_db target bench_native
pg_create_db target bench_tidewater

tw_log "filling public.snap with $ROWS rows"
pg_psql_as "$REPLICATOR_USER" source bench <<SQL
CREATE TABLE public.snap (id bigint PRIMARY KEY, a int, b text, c text, d timestamptz, e numeric(12,2), f jsonb);
INSERT INTO public.snap
SELECT g, g % 1000, md5(g::text) || md5((g + 1)::text), 'customer note ' || g,
       timestamptz '2026-01-01 00:00:00+00' - g * interval '1 second', (g % 100000) / 7.0,
       jsonb_build_object('g', g, 'kind', 'k' || (g % 10), 'ok', g % 2 = 0)
FROM generate_series(1, $ROWS) g;
VACUUM ANALYZE public.snap;
SQL
SIZE="$(pg_psql source bench -c "SELECT pg_size_pretty(pg_table_size('public.snap'))")"
tw_log "table size $SIZE"

# The wait inside the target: returns once the pipeline's snapshot is complete.
pg_psql target bench_tidewater <<'SQL'
CREATE FUNCTION public.bench_wait_snapshot(p text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE done boolean;
BEGIN
    LOOP
        IF to_regclass('public.tidewater_checkpoints') IS NOT NULL THEN
            EXECUTE 'SELECT snapshot_complete FROM public.tidewater_checkpoints WHERE pipeline = $1' INTO done USING p;
            IF done THEN RETURN; END IF;
        END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
END $$;
SQL

PW_FILE="$TW_WORK/replicator.pw"
(umask 077 && printf '%s\n' "$REPLICATOR_PASSWORD" >"$PW_FILE")
STATUS_PORT="$(tw_free_port)"
CONFIG="$TW_WORK/tidewater.toml"
cat >"$CONFIG" <<EOF
[status]
listen = "127.0.0.1:$STATUS_PORT"

[log]
format = "text"
level = "info"

[sources.src]
type = "postgres"
url = "postgres://$REPLICATOR_USER@127.0.0.1:$(pg_port source)/bench"
password_file = "$PW_FILE"
tables = ["public.snap"]

[targets.dst]
type = "postgres"
url = "postgres://$REPLICATOR_USER@127.0.0.1:$(pg_port target)/bench_tidewater"
password_file = "$PW_FILE"

[[pipelines]]
name = "snap"
source = "src"
target = "dst"
snapshot = "initial"
EOF
if [[ -n "${SNAP_PARALLELISM:-}" ]]; then
    [[ "$SNAP_PARALLELISM" =~ ^[0-9]+$ ]] || tw_die "SNAP_PARALLELISM must be a number"
    echo "snapshot_parallelism = $SNAP_PARALLELISM" >>"$CONFIG"
fi

NATIVE_S=""
run_native() {
    tw_log "native: pg_dump -t public.snap | psql"
    local t0 t1
    t0="$(snap_now)"
    PGUSER=postgres "$PG_BIN/pg_dump" -h "$(pg_sock source)" -p "$(pg_port source)" -t public.snap --no-owner bench |
        PGUSER=postgres "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$(pg_sock target)" -p "$(pg_port target)" -d bench_native >/dev/null
    t1="$(snap_now)"
    NATIVE_S="$(snap_elapsed "$t0" "$t1")"
}

snap_run_both "$CONFIG" pg_psql target bench_tidewater -c "SELECT public.bench_wait_snapshot('snap')"

fingerprint() {
    pg_psql "$1" "$2" -c "SELECT count(*) || ' ' || md5(string_agg(s::text, ',' ORDER BY id)) FROM public.snap s"
}
tw_log "verifying"
snap_report "snapshot of $ROWS rows ($SIZE), order $ORDER${SNAP_PARALLELISM:+, snapshot_parallelism $SNAP_PARALLELISM}" \
    "pg_dump -t | psql" "$(fingerprint source bench)" "$(fingerprint target bench_native)" \
    "$(fingerprint target bench_tidewater)"
