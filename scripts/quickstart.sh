#!/usr/bin/env bash
# Tidewater quickstart: a complete CDC pipeline on two throwaway PostgreSQL 15 servers.
#
#   scripts/quickstart.sh [--keep] [--duration SECONDS]
#
# What it does:
#   1. builds the release binary (cargo build --release; skipped with TIDEWATER_BIN=path),
#   2. starts a throwaway "source" and "target" PostgreSQL server on free ports of
#      127.0.0.1 (data in /tmp/tidewater-quickstart.XXXXXX),
#   3. creates database `app` on the source with public.customers and public.orders
#      (a few thousand rows) owned by the role `replicator`, and database `warehouse` on
#      the target,
#   4. writes a config (snapshot = "initial") and runs `tidewater check`, then starts
#      `tidewater run` in the background (log: <tmp>/tidewater.log),
#   5. runs a small writer on the source (inserts, updates, deletes every second) for
#      --duration seconds (default 20) or until Ctrl-C, printing `tidewater status`
#      every 5 seconds,
#   6. waits for the target to catch up, prints row counts source vs target, stops the
#      daemon with SIGTERM and removes everything.
#
# --keep leaves the servers and the daemon running, and prints how to connect and how to
# stop them. Needs: PostgreSQL 15 server binaries (/usr/lib/postgresql/15/bin or PG_BIN),
# psql, curl, jq or python3; as root also the `postgres` OS user.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/pg.sh
source "$SCRIPT_DIR/lib/pg.sh"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

KEEP=0
DURATION=20
while [[ $# -gt 0 ]]; do
    case "$1" in
    --keep) KEEP=1 ;;
    --duration)
        [[ $# -ge 2 ]] || tw_die "--duration needs a value"
        DURATION="$2"
        shift
        ;;
    --duration=*) DURATION="${1#--duration=}" ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        tw_die "unknown argument: $1"
        ;;
    esac
    shift
done
[[ "$DURATION" =~ ^[0-9]+$ ]] || tw_die "--duration must be a whole number of seconds"

tw_require_tools
tw_build
tw_make_workdir quickstart
tw_log "work dir: $TW_WORK"

# ------------------------------------------------------------------ servers and schema
tw_log "starting the source and target PostgreSQL servers"
pg_server_start source
pg_server_start target
SRC_PORT="$(pg_port source)"
TGT_PORT="$(pg_port target)"
tw_log "source: 127.0.0.1:$SRC_PORT  target: 127.0.0.1:$TGT_PORT"

pg_create_db source app
pg_create_db target warehouse

tw_log "creating public.customers and public.orders on the source"
pg_psql_as "$REPLICATOR_USER" source app <<'SQL'
CREATE TABLE public.customers (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL,
    country    text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.orders (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES public.customers (id),
    amount      numeric(12, 2) NOT NULL,
    status      text NOT NULL,
    note        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_id_idx ON public.orders (customer_id);

INSERT INTO public.customers (name, email, country, created_at)
SELECT 'Customer ' || g,
       'customer' || g || '@example.com',
       (ARRAY['NL', 'DE', 'FR', 'US', 'JP', NULL])[1 + g % 6],
       now() - (g || ' minutes')::interval
FROM generate_series(1, 2000) g;

INSERT INTO public.orders (customer_id, amount, status, note, created_at)
SELECT 1 + (g * 7919) % 2000,
       round((5 + (g * 37) % 500 + (g % 100) / 100.0)::numeric, 2),
       (ARRAY['new', 'paid', 'shipped', 'delivered'])[1 + g % 4],
       CASE WHEN g % 5 = 0 THEN 'gift wrap' END,
       now() - (g || ' seconds')::interval
FROM generate_series(1, 5000) g;
SQL

# ------------------------------------------------------------------ config
STATUS_PORT="$(tw_free_port)"
STATUS_URL="http://127.0.0.1:$STATUS_PORT"
PW_FILE="$TW_WORK/replicator.pw"
CONFIG="$TW_WORK/tidewater.toml"
DAEMON_LOG="$TW_WORK/tidewater.log"
(umask 077 && printf '%s\n' "$REPLICATOR_PASSWORD" >"$PW_FILE")

cat >"$CONFIG" <<EOF
# Written by scripts/quickstart.sh
[status]
listen = "127.0.0.1:$STATUS_PORT"

[log]
format = "text"
level = "info"

[sources.app]
type = "postgres"
url = "postgres://$REPLICATOR_USER@127.0.0.1:$SRC_PORT/app"
password_file = "$PW_FILE"
tables = ["public.customers", "public.orders"]

[targets.warehouse]
type = "postgres"
url = "postgres://$REPLICATOR_USER@127.0.0.1:$TGT_PORT/warehouse"
password_file = "$PW_FILE"

[[pipelines]]
name = "quickstart"
source = "app"
target = "warehouse"
snapshot = "initial"
on_error = "dead_letter"
EOF
tw_log "config: $CONFIG"
sed 's/^/    /' "$CONFIG"

tw_log "tidewater check --config $CONFIG"
if ! "$TIDEWATER" check --config "$CONFIG"; then
    tw_die "tidewater check failed (see above)"
fi

# ------------------------------------------------------------------ daemon
tw_log "starting tidewater run (log: $DAEMON_LOG)"
# setsid: its own session, so a Ctrl-C in this terminal reaches the script, not the daemon
# (the script then stops it with SIGTERM), and --keep can leave it running.
setsid "$TIDEWATER" run --config "$CONFIG" >"$DAEMON_LOG" 2>&1 </dev/null &
DAEMON_PID=$!
tw_track_pid "$DAEMON_PID"

if ! tw_wait_state "$STATUS_PORT" streaming 120 "$DAEMON_PID"; then
    echo "--- tidewater log (tail) ---" >&2
    tail -n 40 "$DAEMON_LOG" >&2 || true
    tw_die "the pipeline did not reach 'streaming'"
fi
tw_log "snapshot done, pipeline is streaming"
"$TIDEWATER" status --url "$STATUS_URL" || true

# ------------------------------------------------------------------ writer loop
STOP=0
on_int() {
    if [[ "$STOP" == 1 ]]; then exit 130; fi
    STOP=1
    echo >&2
    tw_log "Ctrl-C: stopping the writer (press Ctrl-C again to abort immediately)"
}
trap on_int INT

tw_log "writing to the source for ${DURATION}s (Ctrl-C to stop early)"
WRITER_SQL="
BEGIN;
INSERT INTO public.orders (customer_id, amount, status, note)
SELECT 1 + floor(random() * 2000)::int, round((random() * 300)::numeric, 2), 'new', 'quickstart writer'
FROM generate_series(1, 3);
UPDATE public.orders SET status = 'paid', amount = amount + 1
WHERE id = (SELECT id FROM public.orders WHERE status = 'new' ORDER BY random() LIMIT 1);
UPDATE public.customers SET email = 'changed' || (random() * 1000000)::int || '@example.com'
WHERE id = 1 + floor(random() * 2000)::int;
DELETE FROM public.orders WHERE id = (SELECT min(id) FROM public.orders);
COMMIT;
"
start_s=$SECONDS
last_status=$SECONDS
ticks=0
while [[ "$STOP" == 0 ]] && ((SECONDS - start_s < DURATION)); do
    if ! pg_psql_as "$REPLICATOR_USER" source app -c "$WRITER_SQL" >/dev/null 2>&1; then
        [[ "$STOP" == 1 ]] && break
        tw_die "the writer's transaction failed on the source"
    fi
    ticks=$((ticks + 1))
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
        echo "--- tidewater log (tail) ---" >&2
        tail -n 40 "$DAEMON_LOG" >&2 || true
        tw_die "tidewater exited unexpectedly"
    fi
    if ((SECONDS - last_status >= 5)); then
        last_status=$SECONDS
        echo "--- $(date +%T) after $ticks writer transactions ---"
        "$TIDEWATER" status --url "$STATUS_URL" || true
    fi
    sleep 1 || true
done
trap 'exit 130' INT
tw_log "writer done: $ticks transactions"

# ------------------------------------------------------------------ catch up and compare
# Each table: row count and a checksum over all rows (same query on both sides).
declare -A COLUMNS=(
    [public.customers]="id, name, email, country, created_at"
    [public.orders]="id, customer_id, amount, status, note, created_at"
)
table_summary() {
    local server="$1" db="$2" table="$3"
    pg_psql "$server" "$db" -c "SET TimeZone = 'UTC'" -c \
        "SELECT count(*) || ' ' || coalesce(md5(string_agg(ROW(${COLUMNS[$table]})::text, ',' ORDER BY id)), '-') FROM $table"
}

tw_log "waiting for the target to catch up"
END_LSN="$(pg_psql source app -c "SELECT pg_current_wal_insert_lsn()")"
caught_up=0
for ((i = 0; i < 150; i++)); do
    flushed="$(pg_psql source app -c \
        "SELECT coalesce(confirmed_flush_lsn >= '$END_LSN'::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = 'tidewater_quickstart'")"
    if [[ "$flushed" == t ]]; then
        caught_up=1
        break
    fi
    sleep 0.2
done
[[ "$caught_up" == 1 ]] || tw_warn "the slot did not confirm the source position $END_LSN within 30s"

echo
"$TIDEWATER" status --url "$STATUS_URL" || true
echo
printf '%-20s %12s %12s  %s\n' table "source rows" "target rows" "contents"
all_equal=1
for table in public.customers public.orders; do
    read -r src_n src_sum <<<"$(table_summary source app "$table")"
    if tgt="$(table_summary target warehouse "$table" 2>/dev/null)"; then
        read -r tgt_n tgt_sum <<<"$tgt"
    else
        tgt_n="?"
        tgt_sum="?"
    fi
    if [[ "$src_n" == "$tgt_n" && "$src_sum" == "$tgt_sum" ]]; then verdict="identical"; else
        verdict="DIFFERENT"
        all_equal=0
    fi
    printf '%-20s %12s %12s  %s\n' "$table" "$src_n" "$tgt_n" "$verdict"
done
echo
if grep -qE '\b(ERROR|WARN)\b' "$DAEMON_LOG"; then
    tw_warn "the daemon logged warnings or errors:"
    grep -E '\b(ERROR|WARN)\b' "$DAEMON_LOG" | tail -n 20 >&2
fi

# ------------------------------------------------------------------ stop or keep
if [[ "$KEEP" == 1 ]]; then
    TW_KEEP=1
    cat >"$TW_WORK/stop.sh" <<EOF
#!/usr/bin/env bash
# Stops what scripts/quickstart.sh --keep left running and removes $TW_WORK.
kill -TERM $DAEMON_PID 2>/dev/null && while kill -0 $DAEMON_PID 2>/dev/null; do sleep 0.2; done
for s in source target; do
    $(if tw_is_root; then echo "runuser -u $PG_OS_USER -- "; fi)$PG_BIN/pg_ctl -D "$TW_WORK/\$s/data" -m fast -w stop
done
rm -rf "$TW_WORK"
EOF
    chmod +x "$TW_WORK/stop.sh"
    cat <<EOF
Left running (--keep):
  tidewater daemon  pid $DAEMON_PID, log $DAEMON_LOG, config $CONFIG
                    $TIDEWATER status --url $STATUS_URL
  source server     $(pg_connect_hint source app)
                    (as replicator over TCP: PGPASSWORD=$REPLICATOR_PASSWORD $PSQL -h 127.0.0.1 -p $SRC_PORT -U $REPLICATOR_USER -d app)
  target server     $(pg_connect_hint target warehouse)
                    (as replicator over TCP: PGPASSWORD=$REPLICATOR_PASSWORD $PSQL -h 127.0.0.1 -p $TGT_PORT -U $REPLICATOR_USER -d warehouse)
To stop everything and delete $TW_WORK:
  $TW_WORK/stop.sh
EOF
    [[ "$all_equal" == 1 ]] || exit 1
    exit 0
fi

tw_log "stopping tidewater (SIGTERM)"
tw_stop_pid "$DAEMON_PID" 30
tw_untrack_pid "$DAEMON_PID"
tail -n 5 "$DAEMON_LOG" | sed 's/^/    /'
if [[ "$all_equal" == 1 ]]; then
    tw_log "done: source and target are identical"
else
    tw_warn "source and target differ (daemon log: see above)"
    exit 1
fi
