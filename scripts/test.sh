#!/usr/bin/env bash
# Runs the whole test suite (unit + integration tests of every workspace crate).
#
# First installs what the tests need and is missing (scripts/install-deps.sh: PostgreSQL 15
# and MariaDB server binaries, Chromium, systemd-analyze, a C compiler, the Rust
# toolchain; as root or with sudo, otherwise it prints the command to run). Integration
# tests start their own throwaway PostgreSQL and MariaDB servers (see tests/support).
# Extra arguments are passed to `cargo test`, e.g. `scripts/test.sh --test harness_smoke`.
# TIDEWATER_PG_BIN: other PostgreSQL server binaries (default /usr/lib/postgresql/15/bin).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
fi

exec cargo test --workspace "$@"
