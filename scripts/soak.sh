#!/usr/bin/env bash
# Long soak of the crash test: kill -9 of the daemon N times (default 100) at random
# moments under a write load, then checks that the target holds every sequence number
# exactly once and that the slot never acknowledged more than the target holds.
#
#   scripts/soak.sh            # 100 kills (about 2 minutes)
#   scripts/soak.sh 500        # 500 kills
#
# Same throwaway servers as the test suite (tests/support); nothing else is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-100}"
[[ "$kills" =~ ^[0-9]+$ ]] || { echo "usage: scripts/soak.sh [KILLS]" >&2; exit 2; }
echo "soak: kill -9 of the daemon $kills times under load"
TIDEWATER_SOAK_KILLS="$kills" exec cargo test --test main -- --exact \
    it::pg_faults::kill_9_under_load_resumes_without_loss_or_duplicates --nocapture
