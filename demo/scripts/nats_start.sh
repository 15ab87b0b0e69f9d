#!/usr/bin/env bash
# T-OPS-04 §1A/§3: start a local nats-server with JetStream and wait until it is healthy.
set -euo pipefail
: "${BEAMLINE_NATS_PORT:?not set: the NATS client port to act on; no default}"
: "${BEAMLINE_NATS_MONITOR_PORT:?not set: the NATS monitoring port to act on; no default}"
# shellcheck source=demo/scripts/_common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/_common.sh"

nats_bin="$(command -v -- "$BEAMLINE_NATS_SERVER")" \
    || die "nats-server not found (BEAMLINE_NATS_SERVER=$BEAMLINE_NATS_SERVER; apt-get install nats-server)"

healthy() {
    [[ "$(http "$NATS_MONITOR_URL/healthz" 2>/dev/null)" == *'"ok"'* ]]
}

if pid="$(live_pid "$NATS_PID_FILE" nats-server)"; then
    if healthy; then
        echo "nats-server already running (pid $pid) at $NATS_URL"
        exit 0
    fi
    die "nats-server pid $pid is running but unhealthy at $NATS_MONITOR_URL; run nats_stop.sh first"
fi
if healthy; then
    die "something else already serves $NATS_MONITOR_URL (not started from $NATS_PID_FILE)"
fi

mkdir -p -- "$NATS_DATA_DIR"
# setsid: the server must outlive this script and not receive a Ctrl-C meant for the caller.
setsid "$nats_bin" \
    -a "$LOOPBACK" -p "$BEAMLINE_NATS_PORT" -m "$BEAMLINE_NATS_MONITOR_PORT" \
    -js -sd "$NATS_DATA_DIR" --server_name beamline-demo \
    </dev/null >>"$NATS_LOG" 2>&1 &
pid=$!
echo "$pid" >"$NATS_PID_FILE"

started() {
    kill -0 "$pid" 2>/dev/null || return 0  # died: stop waiting, reported below
    healthy
}
wait_until "$BEAMLINE_START_TIMEOUT" started || true
if ! kill -0 "$pid" 2>/dev/null; then
    remove_pidfile "$NATS_PID_FILE" "$pid"
    log_tail "$NATS_LOG"
    die "nats-server exited during start-up (log: $NATS_LOG)"
fi
if ! healthy; then
    log_tail "$NATS_LOG"
    die "nats-server (pid $pid) not healthy after ${BEAMLINE_START_TIMEOUT}s (log: $NATS_LOG)"
fi
echo "Started nats-server (pid $pid) at $NATS_URL, monitoring $NATS_MONITOR_URL, store $NATS_DATA_DIR"
