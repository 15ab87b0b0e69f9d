#!/usr/bin/env bash
# T-OPS-04 §3 step 6: start the simulated Beamline Router (demo/router.py) and wait for /healthz.
set -euo pipefail
: "${BEAMLINE_ROUTER_TCP_PORT:?not set: the router TCP port to act on; no default}"
: "${BEAMLINE_ROUTER_HTTP_PORT:?not set: the router HTTP port to act on; no default}"
: "${BEAMLINE_NATS_PORT:?not set: the NATS client port to act on; no default}"
: "${BEAMLINE_NATS_MONITOR_PORT:?not set: the NATS monitoring port to act on; no default}"
# shellcheck source=demo/scripts/_common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/_common.sh"

command -v -- "$BEAMLINE_PYTHON" >/dev/null || die "python not found (BEAMLINE_PYTHON=$BEAMLINE_PYTHON)"

healthy() {
    [[ "$(http "$ROUTER_URL/healthz" 2>/dev/null)" == *'"ok"'* ]]
}

if pid="$(live_pid "$ROUTER_PID_FILE" demo.router)"; then
    if healthy; then
        echo "router already running (pid $pid) on ports $BEAMLINE_ROUTER_TCP_PORT/$BEAMLINE_ROUTER_HTTP_PORT"
        exit 0
    fi
    die "router pid $pid is running but unhealthy at $ROUTER_URL; run router_stop.sh first"
fi

if [[ ! -s "$BEAMLINE_ROUTER_ADMIN_TOKEN_FILE" ]]; then
    # A fresh random token, readable only by us; circuit_breaker.sh reads the same file.
    (umask 077 && demo_python -c 'import secrets; print(secrets.token_urlsafe(32))' \
        >"$BEAMLINE_ROUTER_ADMIN_TOKEN_FILE")
fi

setsid env PYTHONPATH="$BEAMLINE_DEMO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$BEAMLINE_PYTHON" -m demo.router \
    --tcp-port "$BEAMLINE_ROUTER_TCP_PORT" --http-port "$BEAMLINE_ROUTER_HTTP_PORT" \
    --nats-url "$NATS_URL" --nats-monitor-url "$NATS_MONITOR_URL" \
    --admin-token-file "$BEAMLINE_ROUTER_ADMIN_TOKEN_FILE" \
    </dev/null >>"$ROUTER_LOG" 2>&1 &
pid=$!
echo "$pid" >"$ROUTER_PID_FILE"

started() {
    kill -0 "$pid" 2>/dev/null || return 0  # died: stop waiting, reported below
    healthy
}
wait_until "$BEAMLINE_START_TIMEOUT" started || true
if ! kill -0 "$pid" 2>/dev/null; then
    remove_pidfile "$ROUTER_PID_FILE" "$pid"
    log_tail "$ROUTER_LOG"
    die "router exited during start-up (log: $ROUTER_LOG)"
fi
if ! healthy; then
    log_tail "$ROUTER_LOG"
    die "router (pid $pid) not healthy after ${BEAMLINE_START_TIMEOUT}s (log: $ROUTER_LOG)"
fi
echo "Started router (pid $pid): TCP $LOOPBACK:$BEAMLINE_ROUTER_TCP_PORT, HTTP $ROUTER_URL, NATS $NATS_URL"
