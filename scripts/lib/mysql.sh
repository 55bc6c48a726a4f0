# shellcheck shell=bash
# Throwaway MariaDB servers for scripts/bench.sh (source after scripts/lib/pg.sh, which
# provides TW_WORK, tw_free_port, tw_track_pid and the EXIT trap).
#
#     my_server_start my_source 1 binlog     # install-db + mariadbd; dir $TW_WORK/my_source
#     my_sql my_source -e 'SELECT 1'         # mariadb client as root over the socket
#
# Like tests/support/mysql.rs: `mariadb-install-db --no-defaults` + `mariadbd
# --no-defaults` with their own datadir, socket and port on 127.0.0.1 (nothing of the
# machine's MariaDB is used), utf8mb4, and with `binlog` a row binlog
# (binlog_format=ROW, binlog_row_image=FULL, binlog_row_metadata=FULL; GTIDs are always on
# in MariaDB). As root, mariadbd runs as the OS user $MY_OS_USER. root connects over the
# socket with an empty password; the user $REPLICATOR_USER / $REPLICATOR_PASSWORD (from
# pg.sh) gets ALL PRIVILEGES (incl. REPLICATION SLAVE) from anywhere.
#
# A server NAME lives in $TW_WORK/NAME: data/, mysqld.sock, error.log, port. Its mariadbd
# process is registered with tw_track_pid, so the EXIT trap stops it (SIGTERM) before
# TW_WORK is removed.
#
# Environment: MY_OS_USER (default mysql), MARIADBD (default: mariadbd from PATH or
# /usr/sbin/mariadbd), MY_BUFFER_POOL (default 256M).

MY_OS_USER="${MY_OS_USER:-mysql}"
if [[ -z "${MARIADBD:-}" ]]; then
    MARIADBD="$(command -v mariadbd 2>/dev/null || echo /usr/sbin/mariadbd)"
fi
MY_BUFFER_POOL="${MY_BUFFER_POOL:-256M}"

my_require_tools() {
    [[ -x "$MARIADBD" ]] || tw_die "mariadbd not found (install mariadb-server or set MARIADBD)"
    command -v mariadb-install-db >/dev/null 2>&1 || tw_die "mariadb-install-db not found (install mariadb-server)"
    command -v mariadb >/dev/null 2>&1 || tw_die "the mariadb client is required (install mariadb-client)"
    if tw_is_root; then
        id "$MY_OS_USER" >/dev/null 2>&1 || tw_die "running as root needs an OS user '$MY_OS_USER' for mariadbd"
    fi
}

my_port() { cat "$TW_WORK/$1/port"; }
my_sock() { echo "$TW_WORK/$1/mysqld.sock"; }

# my_sql NAME [mariadb args...]: the mariadb client as root over NAME's socket; batch mode,
# no column names (tab-separated rows). SQL via -e '...' or stdin.
my_sql() {
    local name="$1"
    shift
    mariadb --no-defaults -uroot --batch --skip-column-names --socket="$(my_sock "$name")" "$@"
}

# my_server_start NAME SERVER_ID [binlog]: installs and starts a throwaway server on a free
# port; with `binlog`, a row binlog ($TW_WORK/NAME/data/binlog.NNNNNN).
my_server_start() {
    local name="$1" server_id="$2" binlog="${3:-}"
    local dir="$TW_WORK/$name"
    mkdir -p "$dir/data"
    local install_args=(--no-defaults "--datadir=$dir/data" --auth-root-authentication-method=normal --skip-test-db)
    local run_args=()
    if tw_is_root; then
        chown -R "$MY_OS_USER:" "$dir"
        install_args+=("--user=$MY_OS_USER")
        run_args+=("--user=$MY_OS_USER")
    fi
    if ! mariadb-install-db "${install_args[@]}" >"$dir/install.log" 2>&1 </dev/null; then
        tail -n 30 "$dir/install.log" >&2
        tw_die "mariadb-install-db for the $name server failed"
    fi
    if [[ "$binlog" == binlog ]]; then
        run_args+=(
            "--log-bin=$dir/data/binlog"
            --binlog-format=ROW
            --binlog-row-image=FULL
            --binlog-row-metadata=FULL
            --sync-binlog=0
            --max-binlog-size=1G
        )
    fi

    local attempt port pid i
    for attempt in 1 2 3 4 5; do
        port="$(tw_free_port)"
        : >"$dir/error.log"
        if tw_is_root; then chown "$MY_OS_USER:" "$dir/error.log"; fi
        "$MARIADBD" --no-defaults \
            "--datadir=$dir/data" \
            "--socket=$dir/mysqld.sock" \
            "--port=$port" \
            "--pid-file=$dir/mysqld.pid" \
            "--log-error=$dir/error.log" \
            "--server-id=$server_id" \
            --bind-address=127.0.0.1 \
            --character-set-server=utf8mb4 \
            --collation-server=utf8mb4_general_ci \
            --skip-name-resolve \
            "--innodb-buffer-pool-size=$MY_BUFFER_POOL" \
            --innodb-log-file-size=512M \
            --innodb-flush-log-at-trx-commit=2 \
            --max-allowed-packet=256M \
            --max-connections=300 \
            "${run_args[@]}" </dev/null >/dev/null 2>&1 &
        pid=$!
        tw_track_pid "$pid"
        for ((i = 0; i < 600; i++)); do
            if my_sql "$name" -e 'SELECT 1' >/dev/null 2>&1; then
                echo "$port" >"$dir/port"
                break 2
            fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        tw_stop_pid "$pid" 10
        tw_untrack_pid "$pid"
        if grep -qiE 'address already in use|do you already have another' "$dir/error.log" 2>/dev/null &&
            [[ "$attempt" -lt 5 ]]; then
            tw_warn "port $port was taken; retrying"
            continue
        fi
        tail -n 30 "$dir/error.log" >&2 || true
        tw_die "starting the MariaDB $name server failed"
    done
    [[ -f "$dir/port" ]] || tw_die "could not start the MariaDB $name server"
    echo "$pid" >"$dir/mariadbd.pid"

    my_sql "$name" -e "CREATE USER '$REPLICATOR_USER'@'%' IDENTIFIED BY '$REPLICATOR_PASSWORD';
        GRANT ALL PRIVILEGES ON *.* TO '$REPLICATOR_USER'@'%'; FLUSH PRIVILEGES;" ||
        tw_die "creating the $REPLICATOR_USER user on $name failed"
}

# my_master_status NAME: "FILE POS" of SHOW MASTER STATUS.
my_master_status() {
    my_sql "$1" -e 'SHOW MASTER STATUS' | awk -F'\t' 'NR == 1 {print $1, $2}'
}

# my_connect_hint NAME: the client command a user can type to connect as root.
my_connect_hint() {
    echo "mariadb --no-defaults -uroot --socket=$(my_sock "$1")"
}
