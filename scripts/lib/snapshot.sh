# shellcheck shell=bash
# Shared parts of scripts/bench-snapshot.sh and scripts/bench-snapshot-mariadb.sh (source
# after scripts/lib/pg.sh): timing, the tidewater run, verification and the report.
#
# The caller sets ROWS, ORDER (native-first | tidewater-first), TIDEWATER and defines
# run_native (setting NATIVE_S).

snap_now() { date +%s.%N; }
snap_elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# snap_run_tidewater CONFIG WAIT_COMMAND...: starts `tidewater run --config CONFIG`, runs
# WAIT_COMMAND (returns once the snapshot is complete), stops the daemon; sets TW_S, TW_RSS
# (KiB) and TW_CPU (seconds) as of the end of the wait.
snap_run_tidewater() {
    local config="$1" t0 t1 pid
    shift
    tw_log "tidewater: snapshot"
    t0="$(snap_now)"
    "$TIDEWATER" run --config "$config" >"$TW_WORK/tidewater.log" 2>&1 &
    pid=$!
    tw_track_pid "$pid"
    "$@" >/dev/null
    t1="$(snap_now)"
    TW_S="$(snap_elapsed "$t0" "$t1")"
    TW_RSS="$(tw_vm_hwm_kib "$pid")"
    TW_CPU="$(tw_cpu_seconds "$pid")"
    tw_stop_pid "$pid"
    tw_untrack_pid "$pid"
}

# snap_run_both CONFIG WAIT_COMMAND...: run_native and snap_run_tidewater in ORDER.
snap_run_both() {
    if [[ "$ORDER" == native-first ]]; then
        run_native
        snap_run_tidewater "$@"
    else
        snap_run_tidewater "$@"
        run_native
    fi
}

# snap_report TITLE NATIVE_LABEL SOURCE_FP NATIVE_FP TIDEWATER_FP: prints both figures and
# the ratio; returns 1 when a copy's fingerprint differs from the source's.
snap_report() {
    local title="$1" label="$2" src="$3" native="$4" tw="$5" status=0
    [[ "$native" == "$src" ]] || { tw_warn "native copy differs: $native vs source $src"; status=1; }
    [[ "$tw" == "$src" ]] || { tw_warn "tidewater copy differs: $tw vs source $src"; status=1; }
    rate() { awk -v n="$ROWS" -v s="$1" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }'; }
    echo
    echo "$title"
    printf '  %-26s %8ss  %9s rows/s\n' "$label" "$NATIVE_S" "$(rate "$NATIVE_S")"
    printf '  %-26s %8ss  %9s rows/s  peak RSS %s MiB, CPU %ss\n' "tidewater" "$TW_S" "$(rate "$TW_S")" \
        "$(awk -v k="${TW_RSS:-0}" 'BEGIN { printf "%.0f", k / 1024 }')" "${TW_CPU:-?}"
    printf '  ratio (%s time / tidewater time): %s\n' "$label" \
        "$(awk -v a="$NATIVE_S" -v b="$TW_S" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
    [[ "$status" == 0 ]] && echo "  copies verified: equal to the source"
    return "$status"
}
