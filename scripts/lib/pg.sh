# shellcheck shell=bash
# Shared helpers for scripts/quickstart.sh and scripts/bench.sh: throwaway PostgreSQL
# servers, free ports, the tidewater binary, background processes and cleanup.
#
# Source it from a script running under `set -euo pipefail`:
#
#     source "$(dirname "${BASH_SOURCE[0]}")/lib/pg.sh"
#     tw_make_workdir quickstart           # sets TW_WORK (temp dir), installs the EXIT trap
#     pg_server_start source               # initdb + start; server dir: $TW_WORK/source
#     pg_psql source app -c 'SELECT 1'     # psql as the postgres superuser over the socket
#
# Everything started through these helpers (servers, background processes) is stopped by
# the EXIT trap (servers with `pg_ctl stop -m immediate`), and TW_WORK is removed, unless
# TW_KEEP=1.
#
# A server NAME lives in $TW_WORK/NAME: data/ (PGDATA), sock/ (unix socket dir),
# server.log, port (its TCP port on 127.0.0.1).
#
# Environment: PG_BIN (default /usr/lib/postgresql/15/bin), PSQL (default: /usr/bin/psql if
# present, else $PG_BIN/psql), TW_DURABLE=1 (fsync, synchronous_commit and full_page_writes
# on, as in production; default off for speed).

PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
if [[ -z "${PSQL:-}" ]]; then
    if [[ -x /usr/bin/psql ]]; then PSQL=/usr/bin/psql; else PSQL="$PG_BIN/psql"; fi
fi
PG_OS_USER="${PG_OS_USER:-postgres}"
REPLICATOR_USER="replicator"
REPLICATOR_PASSWORD="replicator-pw"

TW_WORK=""             # temp dir of this run
TW_KEEP=0              # 1: leave servers, processes and TW_WORK in place on exit
TW_SERVERS=()          # names of started servers (stopped by the EXIT trap)
TW_PIDS=()             # pids of background processes we started (SIGTERM'd by the trap)
TW_CLEANED=0

# ------------------------------------------------------------------ messages

tw_log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
tw_warn() { printf 'warning: %s\n' "$*" >&2; }
tw_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# ------------------------------------------------------------------ basics

# True when running as root (then PostgreSQL tools run as $PG_OS_USER).
tw_is_root() { [[ "$(id -u)" == 0 ]]; }

# Runs a PostgreSQL server tool (initdb, pg_ctl) as $PG_OS_USER when we are root.
# The working directory is TW_WORK so the postgres user can access it.
pg_tool() {
    local tool="$1"
    shift
    if tw_is_root; then
        (cd "$TW_WORK" && runuser -u "$PG_OS_USER" -- "$PG_BIN/$tool" "$@")
    else
        (cd "$TW_WORK" && "$PG_BIN/$tool" "$@")
    fi
}

# Prints a TCP port on 127.0.0.1 that was free a moment ago.
tw_free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'
    else
        # Fallback: random port in the ephemeral range that nothing listens on.
        local p
        while :; do
            p=$((20000 + RANDOM % 30000))
            if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
                echo "$p"
                return
            fi
        done
    fi
}

# Checks the tools the scripts need.
tw_require_tools() {
    [[ -x "$PG_BIN/initdb" ]] || tw_die "$PG_BIN/initdb not found (install postgresql-15 or set PG_BIN)"
    [[ -x "$PSQL" ]] || tw_die "psql not found ($PSQL)"
    command -v curl >/dev/null 2>&1 || tw_die "curl is required"
    if ! command -v jq >/dev/null 2>&1 && ! command -v python3 >/dev/null 2>&1; then
        tw_die "jq or python3 is required (to read the status JSON)"
    fi
    if tw_is_root; then
        id "$PG_OS_USER" >/dev/null 2>&1 || tw_die "running as root needs an OS user '$PG_OS_USER' for initdb/postgres"
        command -v runuser >/dev/null 2>&1 || tw_die "runuser is required when running as root"
    fi
}

# ------------------------------------------------------------------ work dir and cleanup

# tw_make_workdir PREFIX: creates TW_WORK (short path under /tmp: unix socket paths are
# limited to ~107 bytes) and installs the EXIT/INT/TERM traps.
tw_make_workdir() {
    local prefix="$1"
    TW_WORK="$(mktemp -d "/tmp/tidewater-${prefix}.XXXXXX")"
    chmod 755 "$TW_WORK"
    if tw_is_root; then chown "$PG_OS_USER:" "$TW_WORK"; fi
    trap tw_cleanup EXIT
    # Scripts may replace the INT trap (e.g. to stop a loop gracefully).
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# Stops a process we started: SIGTERM, wait up to $2 seconds (default 30), then SIGKILL.
# Returns 0 when it is gone.
tw_stop_pid() {
    local pid="$1" wait_s="${2:-30}" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait_s * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        tw_warn "process $pid did not stop within ${wait_s}s after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    return 0
}

# Remembers a background process for the EXIT trap.
tw_track_pid() { TW_PIDS+=("$1"); }

tw_untrack_pid() {
    local pid="$1" p kept=()
    for p in "${TW_PIDS[@]}"; do [[ "$p" == "$pid" ]] || kept+=("$p"); done
    TW_PIDS=("${kept[@]}")
}

tw_cleanup() {
    local rc=$?
    [[ "$TW_CLEANED" == 1 ]] && return 0
    TW_CLEANED=1
    trap - INT TERM
    if [[ "$TW_KEEP" == 1 ]]; then
        exit "$rc"
    fi
    local pid name
    for pid in "${TW_PIDS[@]}"; do
        tw_stop_pid "$pid" 15 || true
    done
    for name in "${TW_SERVERS[@]}"; do
        pg_server_stop "$name" immediate || true
    done
    if [[ -n "$TW_WORK" && -d "$TW_WORK" ]]; then
        rm -rf "$TW_WORK"
    fi
    exit "$rc"
}

# ------------------------------------------------------------------ servers

# pg_durable_setting FAST DURABLE: FAST, or DURABLE when TW_DURABLE=1 (servers that flush
# their WAL at every commit, as production servers do).
pg_durable_setting() { if [[ "${TW_DURABLE:-0}" == 1 ]]; then echo "$2"; else echo "$1"; fi; }

pg_dir() { echo "$TW_WORK/$1"; }
pg_port() { cat "$TW_WORK/$1/port"; }
pg_sock() { echo "$TW_WORK/$1/sock"; }

# pg_server_start NAME: initdb, configure and start a throwaway server on a free port;
# creates the role $REPLICATOR_USER (LOGIN REPLICATION, SCRAM password).
pg_server_start() {
    local name="$1"
    local dir="$TW_WORK/$name"
    mkdir -p "$dir/sock"
    if tw_is_root; then chown -R "$PG_OS_USER:" "$dir"; fi

    if ! pg_tool initdb -D "$dir/data" -U postgres -E UTF8 --locale=C -N --auth=trust \
        >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        tw_die "initdb for the $name server failed"
    fi

    cat >"$dir/data/pg_hba.conf" <<'EOF'
# Written by tidewater scripts/lib/pg.sh
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
local   replication  all                  trust
host    all          all   127.0.0.1/32   scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
EOF
    cat >>"$dir/data/postgresql.conf" <<EOF

# --- tidewater scripts/lib/pg.sh ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir/sock'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
max_connections = 100
fsync = $(pg_durable_setting off on)
synchronous_commit = $(pg_durable_setting off on)
full_page_writes = $(pg_durable_setting off on)
shared_buffers = 256MB
max_wal_size = 4GB
checkpoint_timeout = 30min
password_encryption = 'scram-sha-256'
log_min_messages = warning
EOF
    if tw_is_root; then chown -R "$PG_OS_USER:" "$dir"; fi
    TW_SERVERS+=("$name")

    # The port may be taken between probing and binding: retry a few times.
    local attempt port
    for attempt in 1 2 3 4 5; do
        port="$(tw_free_port)"
        echo "port = $port" >>"$dir/data/postgresql.conf"
        if pg_tool pg_ctl -D "$dir/data" -l "$dir/server.log" -w -t 120 start >"$dir/pg_ctl.log" 2>&1; then
            echo "$port" >"$dir/port"
            break
        fi
        if grep -qiE 'already in use|could not bind|could not create any TCP/IP sockets' "$dir/server.log" 2>/dev/null &&
            [[ "$attempt" -lt 5 ]]; then
            tw_warn "port $port was taken; retrying"
            continue
        fi
        cat "$dir/pg_ctl.log" >&2
        tail -n 30 "$dir/server.log" >&2 || true
        tw_die "starting the $name server failed"
    done
    [[ -f "$dir/port" ]] || tw_die "could not start the $name server"

    pg_psql "$name" postgres -c \
        "CREATE ROLE $REPLICATOR_USER LOGIN REPLICATION PASSWORD '$REPLICATOR_PASSWORD'" >/dev/null
}

# pg_server_stop NAME [MODE]: pg_ctl stop (default mode: immediate).
pg_server_stop() {
    local name="$1" mode="${2:-immediate}"
    local dir="$TW_WORK/$name"
    [[ -f "$dir/data/postmaster.pid" ]] || return 0
    pg_tool pg_ctl -D "$dir/data" -m "$mode" -w -t 60 stop >/dev/null 2>&1 || {
        local pm
        pm="$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null || true)"
        if [[ -n "$pm" ]]; then kill -KILL "$pm" 2>/dev/null || true; fi
    }
}

# pg_psql NAME DB [psql args...]: psql as the postgres superuser over the server's unix
# socket; unaligned, tuples only, stops on the first error.
pg_psql() {
    local name="$1" db="$2"
    shift 2
    PGUSER=postgres PGPASSWORD="" PGOPTIONS="" "$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 \
        -h "$TW_WORK/$name/sock" -p "$(pg_port "$name")" -d "$db" "$@"
}

# pg_psql_as USER NAME DB [psql args...]: like pg_psql, as another role (socket: trust).
pg_psql_as() {
    local user="$1" name="$2" db="$3"
    shift 3
    PGUSER="$user" PGPASSWORD="" PGOPTIONS="" "$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 \
        -h "$TW_WORK/$name/sock" -p "$(pg_port "$name")" -d "$db" "$@"
}

# pg_create_db NAME DB: a database owned by $REPLICATOR_USER, whose public schema it owns.
pg_create_db() {
    local name="$1" db="$2"
    pg_psql "$name" postgres -c "CREATE DATABASE \"$db\" OWNER $REPLICATOR_USER" >/dev/null
    pg_psql "$name" "$db" -c "ALTER SCHEMA public OWNER TO $REPLICATOR_USER; GRANT ALL ON SCHEMA public TO $REPLICATOR_USER" >/dev/null
}

# Prints the psql command a user can type to connect to NAME/DB as the superuser.
pg_connect_hint() {
    local name="$1" db="$2"
    echo "$PSQL -h $TW_WORK/$name/sock -p $(pg_port "$name") -U postgres -d $db"
}

# ------------------------------------------------------------------ tidewater

# tw_repo_root: the workspace root (parent of scripts/).
tw_repo_root() { (cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd); }

# tw_build: sets TIDEWATER to the release binary, building it with cargo unless
# TIDEWATER_BIN points at an existing binary.
tw_build() {
    if [[ -n "${TIDEWATER_BIN:-}" ]]; then
        [[ -x "$TIDEWATER_BIN" ]] || tw_die "TIDEWATER_BIN=$TIDEWATER_BIN is not an executable"
        TIDEWATER="$(cd "$(dirname "$TIDEWATER_BIN")" && pwd)/$(basename "$TIDEWATER_BIN")"
        return
    fi
    local root
    root="$(tw_repo_root)"
    if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
        # shellcheck disable=SC1091
        source "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null 2>&1 || tw_die "cargo not found (install Rust or set TIDEWATER_BIN)"
    tw_log "building the release binary (cargo build --release)"
    (cd "$root" && cargo build --release --quiet --bin tidewater) || tw_die "cargo build --release failed"
    local target_dir="${CARGO_TARGET_DIR:-$root/target}"
    TIDEWATER="$target_dir/release/tidewater"
    [[ -x "$TIDEWATER" ]] || tw_die "$TIDEWATER missing after the build"
}

# tw_json FIELD_PATH: reads JSON on stdin, prints the value at a jq-style path such as
# .pipelines[0].state (empty when missing or null).
tw_json() {
    local path="$1"
    if command -v jq >/dev/null 2>&1; then
        jq -r "$path // empty" 2>/dev/null || true
    else
        python3 -c '
import json, re, sys
try:
    v = json.load(sys.stdin)
    for key, idx in re.findall(r"\.(\w+)|\[(\d+)\]", sys.argv[1]):
        v = v[key] if key else v[int(idx)]
    print("" if v is None else v)
except Exception:
    pass
' "$path"
    fi
}

# tw_status_field PORT FIELD_PATH: a field of GET /status (empty when unreachable).
tw_status_field() {
    local port="$1" path="$2"
    curl -fsS --max-time 2 "http://127.0.0.1:$port/status" 2>/dev/null | tw_json "$path"
}

# tw_wait_state PORT STATE TIMEOUT_S PID: waits until pipelines[0].state == STATE;
# fails when the process PID exits or the timeout passes.
tw_wait_state() {
    local port="$1" want="$2" timeout_s="$3" pid="$4" state="" i
    for ((i = 0; i < timeout_s * 5; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tw_warn "tidewater (pid $pid) exited while waiting for state '$want'"
            return 1
        fi
        state="$(tw_status_field "$port" '.pipelines[0].state')"
        [[ "$state" == "$want" ]] && return 0
        sleep 0.2
    done
    tw_warn "tidewater did not reach state '$want' within ${timeout_s}s (last state: '${state:-unreachable}')"
    return 1
}

# tw_vm_hwm_kib PID: peak resident set size (VmHWM) in KiB, empty when unknown.
tw_vm_hwm_kib() {
    awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || true
}

# tw_cpu_seconds PID: user+system CPU seconds the process used so far, empty when unknown.
tw_cpu_seconds() {
    local stat tck
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    tck="$(getconf CLK_TCK 2>/dev/null || echo 100)"
    # Fields after the ")" that ends the command name: state is field 3, utime 14, stime 15.
    awk -v t="$tck" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t }' <<<"$stat"
}
