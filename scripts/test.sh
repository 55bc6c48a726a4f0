#!/usr/bin/env bash
# Runs the whole test suite (unit + integration tests of every workspace crate).
# Integration tests start their own throwaway PostgreSQL servers (see
# tests/support); they need the PostgreSQL 15 server binaries in
# /usr/lib/postgresql/15/bin (or TIDEWATER_PG_BIN). Extra arguments are passed
# to `cargo test`, e.g. `scripts/test.sh --test harness_smoke`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
fi

exec cargo test --workspace "$@"
