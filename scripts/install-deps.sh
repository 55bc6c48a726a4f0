#!/usr/bin/env bash
# Installs what the quickstart, the test suite and CI need and are missing on this
# machine (Debian bookworm): the packages of the table below, and the Rust toolchain.
#
#   scripts/install-deps.sh                # everything marked `all`
#   scripts/install-deps.sh --fresh-check  # also what scripts/fresh-machine-check.sh needs
#   scripts/install-deps.sh --list         # print the table's packages and exit
#
# Only what is missing is installed: apt-get as root directly, else with `sudo -n`; when
# neither works it prints the one command to run and exits 1. Quiet (no output) when
# everything is present. The Rust toolchain: rustup-init from static.rust-lang.org (minimal profile
# + rustfmt and clippy) when cargo is missing, the rustfmt/clippy components when rustup
# is there but they are not.
#
# The table is also read by tests/it/deps.rs, which checks that every program the
# scripts (scripts/*.sh, scripts/lib/*.sh, .ci/run) and the test harness (tests/**/*.rs)
# run is listed here. Columns:
#   PROGRAM  the program (or file) that is needed
#   PACKAGE  the Debian package that provides it; @rustup: installed with rustup;
#            @optional: used when present, never installed (sudo when not root)
#   FOR      all: quickstart, scripts/test.sh, .ci/run, bench, soak;
#            fresh-check: only scripts/fresh-machine-check.sh (with --fresh-check)
#   CHECK    absolute path that must exist, or `-`: found on PATH (type -P)
set -euo pipefail

TW_DEPS='
# PROGRAM              PACKAGE               FOR          CHECK
# -- throwaway PostgreSQL servers (tests/support/pg.rs, scripts/lib/pg.sh)
initdb                 postgresql-15         all          /usr/lib/postgresql/15/bin/initdb
pg_ctl                 postgresql-15         all          /usr/lib/postgresql/15/bin/pg_ctl
postgres               postgresql-15         all          /usr/lib/postgresql/15/bin/postgres
psql                   postgresql-client-15  all          /usr/lib/postgresql/15/bin/psql
pg_dump                postgresql-client-15  all          /usr/lib/postgresql/15/bin/pg_dump
# -- throwaway MariaDB servers (tests/support/mysql.rs, scripts/lib/mysql.sh)
mariadbd               mariadb-server        all          /usr/sbin/mariadbd
mariadb-install-db     mariadb-server        all          -
mariadb                mariadb-client        all          -
mariadb-dump           mariadb-client        all          -
# -- dashboard test (tests/it/ops.rs), systemd unit rating (tests/it/ops.rs)
chromium               chromium              all          -
systemd-analyze        systemd               all          -
# -- scripts: status JSON, free ports
curl                   curl                  all          -
jq                     jq                    all          -
python3                python3               all          -
# -- process tools (tests call /usr/bin/kill; runuser/setsid: util-linux)
kill                   procps                all          -
runuser                util-linux            all          -
setsid                 util-linux            all          -
getconf                libc-bin              all          -
# -- basic tools (present on every Debian system; listed so the check covers them)
sh                     dash                  all          -
bash                   bash                  all          -
awk                    mawk                  all          -
sed                    sed                   all          -
grep                   grep                  all          -
id                     coreutils             all          -
chown                  coreutils             all          -
chmod                  coreutils             all          -
mktemp                 coreutils             all          -
cat                    coreutils             all          -
head                   coreutils             all          -
tail                   coreutils             all          -
rm                     coreutils             all          -
mkdir                  coreutils             all          -
sleep                  coreutils             all          -
date                   coreutils             all          -
dirname                coreutils             all          -
basename               coreutils             all          -
sort                   coreutils             all          -
cp                     coreutils             all          -
env                    coreutils             all          -
cut                    coreutils             all          -
uname                  coreutils             all          -
md5sum                 coreutils             all          -
# -- building: cargo links with cc; ring and the bundled SQLite compile C
cc                     gcc                   all          -
libc-dev               libc6-dev             all          /usr/include/stdio.h
ca-certificates        ca-certificates       all          /etc/ssl/certs/ca-certificates.crt
cargo                  @rustup               all          -
rustup                 @rustup               all          -
rustc                  @rustup               all          -
cargo-fmt              @rustup               all          -
cargo-clippy           @rustup               all          -
sudo                   @optional             all          -
apt-get                apt                   all          -
# -- build.rs stamps --version with the commit; a test checks it
git                    git                   all          -
# -- scripts/fresh-machine-check.sh only
debootstrap            debootstrap           fresh-check  -
chroot                 coreutils             fresh-check  -
mount                  mount                 fresh-check  -
umount                 mount                 fresh-check  -
ls                     coreutils             fresh-check  -
readlink               coreutils             fresh-check  -
mv                     coreutils             fresh-check  -
'

GROUPS_WANTED="all"
LIST=0
for arg in "$@"; do
    case "$arg" in
    --fresh-check) GROUPS_WANTED="all fresh-check" ;;
    --list) LIST=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "install-deps.sh: unknown argument: $arg" >&2
        exit 2
        ;;
    esac
done

# Rows of the wanted groups: "PROGRAM PACKAGE CHECK".
rows() {
    local prog pkg group check
    while read -r prog pkg group check; do
        [[ -z "$prog" || "$prog" == \#* ]] && continue
        [[ " $GROUPS_WANTED " == *" $group "* ]] || continue
        echo "$prog $pkg $check"
    done <<<"$TW_DEPS"
}

present() {
    local prog="$1" check="$2"
    if [[ "$check" == - ]]; then
        # sbin too: a user's PATH often lacks it (runuser, mariadbd live there)
        PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" type -P "$prog" >/dev/null 2>&1
    else
        [[ -e "$check" ]]
    fi
}

if [[ "$LIST" == 1 ]]; then
    rows | awk '$2 !~ /^@/ {print $2}' | sort -u
    exit 0
fi

# ------------------------------------------------------------------ Debian packages
missing=()
while read -r prog pkg check; do
    [[ "$pkg" == @* ]] && continue
    if ! present "$prog" "$check"; then
        [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
    fi
done < <(rows)

if [[ "${#missing[@]}" -gt 0 ]]; then
    apt_cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
    if [[ "$(id -u)" == 0 ]]; then
        as_root=()
    elif type -P sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        echo "install-deps.sh: missing Debian packages: ${missing[*]}" >&2
        echo "install them (as root) with:" >&2
        echo "    sudo sh -c '$apt_cmd'" >&2
        exit 1
    fi
    echo "==> installing ${missing[*]}" >&2
    "${as_root[@]}" apt-get update -qq </dev/null >&2
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" </dev/null >&2
    still=()
    while read -r prog pkg check; do
        [[ "$pkg" == @* ]] && continue
        present "$prog" "$check" || still+=("$prog ($pkg)")
    done < <(rows)
    if [[ "${#still[@]}" -gt 0 ]]; then
        echo "install-deps.sh: still missing after apt-get install: ${still[*]}" >&2
        exit 1
    fi
fi

# ------------------------------------------------------------------ Rust toolchain
if ! type -P cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
fi
if ! type -P cargo >/dev/null 2>&1; then
    echo "==> installing the Rust toolchain with rustup (stable, minimal + rustfmt, clippy) into $HOME/.cargo" >&2
    # rustup-init must keep its name: rustup picks its behaviour from argv[0].
    rustup_dir="$(mktemp -d)"
    rustup_init="$rustup_dir/rustup-init"
    rustup_url="https://static.rust-lang.org/rustup/dist/$(uname -m)-unknown-linux-gnu/rustup-init"
    if ! curl --proto '=https' --tlsv1.2 -fsSL "$rustup_url" -o "$rustup_init"; then
        rm -rf "$rustup_dir"
        echo "install-deps.sh: cannot download $rustup_url; install Rust (stable) by hand: https://rustup.rs" >&2
        exit 1
    fi
    chmod +x "$rustup_init"
    "$rustup_init" -y --no-modify-path --profile minimal -c rustfmt -c clippy </dev/null >&2
    rm -rf "$rustup_dir"
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
elif type -P rustup >/dev/null 2>&1; then
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        echo "==> adding the rustfmt and clippy components" >&2
        # Only .ci/run needs them: a failure here is reported there, not fatal here.
        rustup component add rustfmt clippy </dev/null >&2 ||
            echo "install-deps.sh: warning: rustup component add rustfmt clippy failed" >&2
    fi
fi
exit 0
