#!/usr/bin/env bash
# Tidewater quickstart: three CDC pipelines on throwaway servers, until Ctrl-C.
#
#   scripts/quickstart.sh [--duration SECONDS] [--keep]
#
# What it does:
#   1. installs what is missing (scripts/install-deps.sh: PostgreSQL 15, MariaDB, ...; as
#      root or with sudo, otherwise it prints the command to run) and builds the release
#      binary (cargo build --release; skipped with TIDEWATER_BIN=path),
#   2. starts throwaway servers on free ports of 127.0.0.1 (data in
#      /tmp/tidewater-quickstart.XXXXXX): a PostgreSQL "source" (database `app`:
#      public.customers, public.orders), a PostgreSQL "target" (database `warehouse`) and,
#      when mariadbd is installed, a MariaDB "shop" server with a row binlog (database
#      `shop`: shop.products, shop.stock; QUICKSTART_MARIADB=0 leaves it out),
#   3. writes a config (snapshot = "initial") with the pipelines
#        app_to_warehouse    PostgreSQL app   -> PostgreSQL warehouse
#        app_to_edge         PostgreSQL app   -> SQLite <tmp>/edge.db (embedded target)
#        shop_to_warehouse   MariaDB shop     -> PostgreSQL warehouse (schema shop)
#      runs `tidewater check`, then `tidewater run` in the background (log:
#      <tmp>/tidewater.log),
#   4. once every pipeline is streaming and its target equals its source, prints the rows
#      of each pipeline's target tables (`tidewater verify`: counts and checksums),
#   5. keeps a small writer changing the sources every second (inserts, updates, deletes)
#      and prints `tidewater status` every 10 seconds, until Ctrl-C,
#   6. on Ctrl-C: stops the writer, waits for the targets to catch up, prints the table
#      again, stops the daemon with SIGTERM and removes everything.
#
# Non-interactive (CI, tests): --duration SECONDS (or QUICKSTART_DURATION=SECONDS) stops the
# writer after that many seconds instead of waiting for Ctrl-C; without a terminal on
# stdin the default is 20 seconds. Exit code 0 when every target equals its source.
# --keep leaves the servers and the daemon running, and prints how to connect and how to
# stop them. PG_BIN: other PostgreSQL server binaries (default /usr/lib/postgresql/15/bin).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Installs only what is missing; quiet when everything is there.
bash "$SCRIPT_DIR/install-deps.sh"
# shellcheck source=lib/pg.sh
source "$SCRIPT_DIR/lib/pg.sh"
# shellcheck source=lib/mysql.sh
source "$SCRIPT_DIR/lib/mysql.sh"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

KEEP=0
DURATION="${QUICKSTART_DURATION:-}"
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
if [[ -z "$DURATION" && ! -t 0 ]]; then
    DURATION=20
fi
[[ -z "$DURATION" || "$DURATION" =~ ^[0-9]+$ ]] || tw_die "--duration must be a whole number of seconds"

WITH_MARIADB=0
if [[ "${QUICKSTART_MARIADB:-1}" != 0 ]] && [[ -x "$MARIADBD" ]]; then
    WITH_MARIADB=1
fi

tw_require_tools
if [[ "$WITH_MARIADB" == 1 ]]; then my_require_tools; fi
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

if [[ "$WITH_MARIADB" == 1 ]]; then
    tw_log "starting the MariaDB shop server (row binlog)"
    my_server_start shop 1 binlog
    SHOP_PORT="$(my_port shop)"
    tw_log "shop: 127.0.0.1:$SHOP_PORT; creating shop.products and shop.stock"
    my_sql shop <<'SQL'
CREATE DATABASE shop CHARACTER SET utf8mb4;
USE shop;
CREATE TABLE shop.products (
    id         INT AUTO_INCREMENT PRIMARY KEY,
    sku        VARCHAR(32) NOT NULL UNIQUE,
    name       VARCHAR(200) NOT NULL,
    price      DECIMAL(10, 2) NOT NULL,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
);
CREATE TABLE shop.stock (
    product_id INT PRIMARY KEY,
    warehouse  VARCHAR(16) NOT NULL,
    quantity   INT NOT NULL
);
INSERT INTO shop.products (sku, name, price)
SELECT CONCAT('SKU-', seq), CONCAT('Product ', seq), 1 + (seq * 37) % 300 + (seq % 100) / 100
FROM seq_1_to_1000;
INSERT INTO shop.stock (product_id, warehouse, quantity)
SELECT seq, ELT(1 + seq % 3, 'AMS', 'FRA', 'NYC'), (seq * 13) % 250
FROM seq_1_to_1000;
SQL
fi

# ------------------------------------------------------------------ config
STATUS_PORT="$(tw_free_port)"
STATUS_URL="http://127.0.0.1:$STATUS_PORT"
PW_FILE="$TW_WORK/replicator.pw"
CONFIG="$TW_WORK/tidewater.toml"
DAEMON_LOG="$TW_WORK/tidewater.log"
EDGE_DB="$TW_WORK/edge.db"
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

[targets.edge]
type = "sqlite"
path = "$EDGE_DB"

[[pipelines]]
name = "app_to_warehouse"
source = "app"
target = "warehouse"
snapshot = "initial"
on_error = "dead_letter"

[[pipelines]]
name = "app_to_edge"
source = "app"
target = "edge"
snapshot = "initial"
on_error = "dead_letter"
EOF
PIPELINES=(app_to_warehouse app_to_edge)
if [[ "$WITH_MARIADB" == 1 ]]; then
    # One [sources.*] section per MySQL pipeline (each binlog reader has its own server_id).
    cat >>"$CONFIG" <<EOF

[sources.shop]
type = "mysql"
url = "mysql://$REPLICATOR_USER@127.0.0.1:$SHOP_PORT"
password_file = "$PW_FILE"
server_id = 4201
tables = ["shop.products", "shop.stock"]

[[pipelines]]
name = "shop_to_warehouse"
source = "shop"
target = "warehouse"
snapshot = "initial"
on_error = "dead_letter"
EOF
    PIPELINES+=(shop_to_warehouse)
fi
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

daemon_died() {
    echo "--- tidewater log (tail) ---" >&2
    tail -n 40 "$DAEMON_LOG" >&2 || true
    tw_die "$1"
}

# Waits until every pipeline of the config is streaming.
wait_all_streaming() {
    local timeout_s="$1" i k n state
    for ((i = 0; i < timeout_s * 5; i++)); do
        kill -0 "$DAEMON_PID" 2>/dev/null || return 1
        n=0
        for ((k = 0; k < ${#PIPELINES[@]}; k++)); do
            state="$(tw_status_field "$STATUS_PORT" ".pipelines[$k].state")"
            [[ "$state" == streaming ]] && n=$((n + 1))
        done
        [[ "$n" == "${#PIPELINES[@]}" ]] && return 0
        sleep 0.2
    done
    return 1
}

# Runs `tidewater verify` until every target equals its source (or TIMEOUT_S pass), then
# prints one line per pipeline and table: rows and whether the contents are identical.
# Returns 0 when all match.
VERIFY_OUT="$TW_WORK/verify.out"
sync_table() {
    local timeout_s="$1" start=$SECONDS rc=1 line
    while :; do
        if "$TIDEWATER" verify --config "$CONFIG" >"$VERIFY_OUT" 2>&1; then
            rc=0
            break
        fi
        ((SECONDS - start < timeout_s)) || break
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        sleep 1
    done
    echo
    printf '%-19s %-21s %-30s %12s %12s  %s\n' pipeline "source table" "target" "source rows" "target rows" contents
    while IFS= read -r line; do
        local re_ok='^\[ok\] +([a-z0-9_]+): ([^ ]+) -> (.+): ([0-9]+) rows match'
        local re_diff='^\[DIFF\] +([a-z0-9_]+): ([^ ]+) -> (.+): source ([0-9]+) rows, target ([0-9]+) rows'
        local re_fail='^\[FAIL\] +([a-z0-9_]+): ([^ ]+) -> ([^:]+): (.*)$'
        if [[ "$line" =~ $re_ok ]]; then
            printf '%-19s %-21s %-30s %12s %12s  %s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" \
                "${BASH_REMATCH[3]}" "${BASH_REMATCH[4]}" "${BASH_REMATCH[4]}" identical
        elif [[ "$line" =~ $re_diff ]]; then
            printf '%-19s %-21s %-30s %12s %12s  %s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" \
                "${BASH_REMATCH[3]}" "${BASH_REMATCH[4]}" "${BASH_REMATCH[5]}" DIFFERENT
        elif [[ "$line" =~ $re_fail ]]; then
            printf '%-19s %-21s %-30s %12s %12s  %s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" \
                "${BASH_REMATCH[3]}" "?" "?" "FAILED: ${BASH_REMATCH[4]}"
        fi
    done <"$VERIFY_OUT"
    echo
    if [[ "$rc" != 0 ]]; then
        tw_warn "tidewater verify still finds differences after ${timeout_s}s:"
        sed 's/^/    /' "$VERIFY_OUT" >&2
    fi
    return "$rc"
}

if ! wait_all_streaming 180; then
    "$TIDEWATER" status --url "$STATUS_URL" >&2 || true
    daemon_died "not every pipeline reached 'streaming'"
fi
tw_log "snapshots done, ${#PIPELINES[@]} pipelines are streaming: ${PIPELINES[*]}"
"$TIDEWATER" status --url "$STATUS_URL" || true
tw_log "rows per pipeline target (tidewater verify: counts and checksums, source vs target)"
sync_table 60 || daemon_died "the targets did not reach their sources' contents"

# ------------------------------------------------------------------ writer loop
STOP=0
# The trap may run inside a command whose output goes to /dev/null: it writes to fd 9.
exec 9>&2
on_int() {
    if [[ "$STOP" == 1 ]]; then exit 130; fi
    STOP=1
    {
        echo
        tw_log "Ctrl-C: stopping the writer (press Ctrl-C again to abort immediately)"
    } >&9
}
trap on_int INT

if [[ -n "$DURATION" ]]; then
    tw_log "writing to the sources for ${DURATION}s (Ctrl-C to stop early)"
else
    tw_log "writing to the sources every second; press Ctrl-C to stop"
    echo "    status:  $TIDEWATER status --url $STATUS_URL"
    echo "    SQLite:  $EDGE_DB"
fi
PG_WRITER_SQL="
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
MY_WRITER_SQL="
START TRANSACTION;
INSERT INTO shop.products (sku, name, price) VALUES (CONCAT('SKU-', UUID_SHORT()), 'New product', 9.99);
INSERT INTO shop.stock (product_id, warehouse, quantity) VALUES (LAST_INSERT_ID(), 'AMS', 10);
UPDATE shop.stock SET quantity = quantity + 1 WHERE product_id = 1 + FLOOR(RAND() * 1000);
UPDATE shop.products SET price = price + 0.01 WHERE id = 1 + FLOOR(RAND() * 1000);
DELETE FROM shop.stock ORDER BY product_id LIMIT 1;
COMMIT;
"
start_s=$SECONDS
last_status=$SECONDS
ticks=0
while [[ "$STOP" == 0 ]] && { [[ -z "$DURATION" ]] || ((SECONDS - start_s < DURATION)); }; do
    if ! pg_psql_as "$REPLICATOR_USER" source app -c "$PG_WRITER_SQL" >/dev/null 2>&1; then
        [[ "$STOP" == 1 ]] && break
        tw_die "the writer's transaction failed on the PostgreSQL source"
    fi
    if [[ "$WITH_MARIADB" == 1 ]] && ! my_sql shop -e "$MY_WRITER_SQL" >/dev/null 2>&1; then
        [[ "$STOP" == 1 ]] && break
        tw_die "the writer's transaction failed on the MariaDB source"
    fi
    ticks=$((ticks + 1))
    kill -0 "$DAEMON_PID" 2>/dev/null || daemon_died "tidewater exited unexpectedly"
    if ((SECONDS - last_status >= 10)); then
        last_status=$SECONDS
        echo "--- $(date +%T) after $ticks writer rounds ---"
        "$TIDEWATER" status --url "$STATUS_URL" || true
    fi
    sleep 1 || true
done
trap 'exit 130' INT
tw_log "writer done: $ticks rounds of transactions"

# ------------------------------------------------------------------ catch up and compare
tw_log "waiting for the targets to catch up"
all_equal=1
sync_table 90 || all_equal=0
"$TIDEWATER" status --url "$STATUS_URL" || true
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
if [ -f "$TW_WORK/shop/mariadbd.pid" ]; then
    pid=\$(cat "$TW_WORK/shop/mariadbd.pid")
    kill -TERM "\$pid" 2>/dev/null && while kill -0 "\$pid" 2>/dev/null; do sleep 0.2; done
fi
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
  SQLite target     $EDGE_DB
EOF
    if [[ "$WITH_MARIADB" == 1 ]]; then
        echo "  MariaDB shop      $(my_connect_hint shop)"
    fi
    cat <<EOF
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
    tw_log "done: every target is identical to its source (${PIPELINES[*]})"
else
    tw_warn "some targets differ from their sources (see the table and the daemon log above)"
    exit 1
fi
