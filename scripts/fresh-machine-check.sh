#!/usr/bin/env bash
# Runs the README's two commands on a fresh machine: a new Debian bookworm tree made with
# debootstrap (--variant=minbase: no PostgreSQL, MariaDB, Chromium, compiler or services),
# entered with chroot. Not part of the test suite (it takes about half an hour).
#
#   scripts/fresh-machine-check.sh [DIR]     # as root; DIR default /var/tmp/tidewater-fresh.XXXXXX
#
#   1. installs debootstrap and git when missing (scripts/install-deps.sh --fresh-check),
#   2. debootstrap bookworm into DIR from the host's Debian mirror (FRESH_MIRROR, default:
#      the first deb.debian.org-style URI in /etc/apt/sources.list*), with the bookworm,
#      bookworm-updates and bookworm-security suites, /proc, /sys, /dev mounted and a
#      policy-rc.d that keeps package scripts from starting services (like a container),
#      the host's resolv.conf and local CA certificates (/usr/local/share/ca-certificates),
#   3. clones this repository's committed HEAD into DIR/root/tidewater (uncommitted changes
#      are not part of the check),
#   4. the Rust toolchain: FRESH_RUST=install (default when https://static.rust-lang.org is
#      reachable) leaves it to install-deps.sh, which installs rustup inside the tree;
#      FRESH_RUST=copy bind-mounts the host's ~/.rustup read-only and copies ~/.cargo/bin,
#   5. inside the tree, as root with a clean environment and no terminal:
#        scripts/quickstart.sh --duration 20      (its non-interactive mode)
#        scripts/test.sh
#      and prints the time and exit code of each.
#
# Exit code 0 when both commands succeeded. Logs: DIR/quickstart.log, DIR/test.log. The
# tree is removed afterwards unless FRESH_KEEP=1.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

[[ "$(id -u)" == 0 ]] || die "run as root (debootstrap and chroot need it)"
bash "$REPO/scripts/install-deps.sh" --fresh-check

if [[ -z "${FRESH_MIRROR:-}" ]]; then
    FRESH_MIRROR="$(grep -rhoE '(URIs:|deb) +https?://[^ ]*debian[^ ]*' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
        awk '{print $2}' | grep -v -- '-security' | head -n 1 || true)"
fi
FRESH_MIRROR="${FRESH_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${FRESH_SECURITY_MIRROR:-${FRESH_MIRROR%/debian}/debian-security}"
if [[ -z "${FRESH_RUST:-}" ]]; then
    if curl -fsS -m 10 -o /dev/null https://static.rust-lang.org/rustup/release-stable.toml; then
        FRESH_RUST=install
    else
        FRESH_RUST=copy
    fi
fi
QUICKSTART_ARGS="${FRESH_QUICKSTART_ARGS:---duration 20}"

ROOT="${1:-}"
if [[ -z "$ROOT" ]]; then
    ROOT="$(mktemp -d /var/tmp/tidewater-fresh.XXXXXX)"
else
    mkdir -p "$ROOT"
fi
ROOT="$(cd "$ROOT" && pwd)"
# mktemp -d makes it 0700: the tree's / must be traversable by its postgres and mysql users.
chmod 755 "$ROOT"
MOUNTS=()

cleanup() {
    local rc=$? pid m i
    # Processes still running inside the tree (servers the commands left behind).
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        if [[ "$(readlink "/proc/$pid/root" 2>/dev/null)" == "$ROOT" ]]; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    sleep 1
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        m="${MOUNTS[$i]}"
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    if [[ "${FRESH_KEEP:-0}" == 1 ]]; then
        log "kept the tree: $ROOT"
    else
        # Only remove it when nothing is mounted below it any more.
        if ! grep -q " $ROOT/" /proc/mounts; then rm -rf "$ROOT"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT

bind() {
    local src="$1" dst="$ROOT$2"
    shift 2
    mkdir -p "$dst"
    mount --bind "$src" "$dst"
    MOUNTS+=("$dst")
    if [[ "${1:-}" == ro ]]; then mount -o remount,bind,ro "$dst"; fi
}

log "fresh tree: $ROOT (mirror $FRESH_MIRROR, rust: $FRESH_RUST)"
if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]]; then
    log "note: uncommitted changes in $REPO are not part of the check (it clones HEAD)"
fi

t0=$SECONDS
log "debootstrap --variant=minbase bookworm"
debootstrap --variant=minbase bookworm "$ROOT" "$FRESH_MIRROR" >"$ROOT.debootstrap.log" 2>&1 ||
    {
        tail -n 30 "$ROOT.debootstrap.log" >&2
        die "debootstrap failed"
    }
mv "$ROOT.debootstrap.log" "$ROOT/debootstrap.log"
T_DEBOOTSTRAP=$((SECONDS - t0))

cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $FRESH_MIRROR bookworm main
deb $FRESH_MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
EOF
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod +x "$ROOT/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# This machine's network: local CAs (e.g. of a TLS-inspecting egress proxy) go in as a
# site's base image would have them; the ca-certificates package that install-deps.sh
# installs picks them up.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
fi
echo "tidewater-fresh" >"$ROOT/etc/hostname"

mount -t proc proc "$ROOT/proc"
MOUNTS+=("$ROOT/proc")
bind /sys /sys ro
bind /dev /dev
bind /dev/pts /dev/pts
mount -t tmpfs -o mode=1777 shm "$ROOT/dev/shm"
MOUNTS+=("$ROOT/dev/shm")

log "cloning $REPO (HEAD $(git -C "$REPO" rev-parse --short HEAD)) into the tree"
git clone --quiet --no-hardlinks "$REPO" "$ROOT/root/tidewater"

if [[ "$FRESH_RUST" == copy ]]; then
    [[ -d "$HOME/.rustup" && -d "$HOME/.cargo/bin" ]] || die "FRESH_RUST=copy needs ~/.rustup and ~/.cargo/bin"
    bind "$HOME/.rustup" /root/.rustup ro
    mkdir -p "$ROOT/root/.cargo"
    cp -a "$HOME/.cargo/bin" "$ROOT/root/.cargo/bin"
    printf 'export PATH="$HOME/.cargo/bin:$PATH"\n' >"$ROOT/root/.cargo/env"
fi

# run_inside NAME COMMAND: runs COMMAND in the tree; prints and records time and exit code.
declare -A TIME RC
run_inside() {
    local name="$1" cmd="$2" start=$SECONDS rc=0
    log "inside the tree: $cmd (log: $ROOT/$name.log)"
    chroot "$ROOT" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 USER=root \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /bin/bash -c "cd /root/tidewater && $cmd" </dev/null >"$ROOT/$name.log" 2>&1 || rc=$?
    TIME[$name]=$((SECONDS - start))
    RC[$name]=$rc
    tail -n 25 "$ROOT/$name.log" | sed 's/^/    /' >&2
    log "$name: exit $rc after ${TIME[$name]}s"
}

run_inside quickstart "scripts/quickstart.sh $QUICKSTART_ARGS"
run_inside test "scripts/test.sh"

if [[ "${FRESH_KEEP:-0}" != 1 ]]; then
    mkdir -p /var/tmp/tidewater-fresh-logs
    cp "$ROOT/quickstart.log" "$ROOT/test.log" /var/tmp/tidewater-fresh-logs/
    log "logs copied to /var/tmp/tidewater-fresh-logs/"
fi

echo
printf '%-34s %8s %6s\n' step seconds exit
printf '%-34s %8s %6s\n' "debootstrap --variant=minbase" "$T_DEBOOTSTRAP" 0
printf '%-34s %8s %6s\n' "scripts/quickstart.sh $QUICKSTART_ARGS" "${TIME[quickstart]}" "${RC[quickstart]}"
printf '%-34s %8s %6s\n' "scripts/test.sh" "${TIME[test]}" "${RC[test]}"
printf '%-34s %8s\n' total "$((SECONDS - t0))"
grep -E '^test result:' "$ROOT/test.log" | sed 's/^/    /' || true
[[ "${RC[quickstart]}" == 0 && "${RC[test]}" == 0 ]]
