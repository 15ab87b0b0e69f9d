#!/usr/bin/env bash
# T-OPS-04 §1: prints `Running`, `Not Running` or `Health check failed` (details on stderr).
# Exit status: 0 Running, 1 Not Running, 2 Health check failed.
set -euo pipefail
: "${BEAMLINE_NATS_PORT:?not set: the NATS client port to act on; no default}"
: "${BEAMLINE_NATS_MONITOR_PORT:?not set: the NATS monitoring port to act on; no default}"
# shellcheck source=demo/scripts/_common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/_common.sh"

healthz="$(http --write-out '\n%{http_code}' "$NATS_MONITOR_URL/healthz" 2>/dev/null)" && rc=0 || rc=$?
if ((rc == 7)) && ! live_pid "$NATS_PID_FILE" nats-server >/dev/null; then
    echo "Not Running"
    echo "nothing listens on $NATS_MONITOR_URL and no nats-server from $NATS_PID_FILE is alive" >&2
    exit 1
fi
code="${healthz##*$'\n'}"
if ((rc != 0)) || [[ "$code" != 200 ]]; then
    echo "Health check failed"
    echo "GET $NATS_MONITOR_URL/healthz: curl exit $rc, HTTP ${code:-none}: ${healthz%$'\n'*}" >&2
    exit 2
fi
# /healthz is ok; JetStream must also answer on /jsz (the Router needs its streams).
disabled_re='"disabled":[[:space:]]*true'
if ! jsz="$(http --fail "$NATS_MONITOR_URL/jsz" 2>&1)" || [[ "$jsz" =~ $disabled_re ]]; then
    echo "Health check failed"
    echo "GET $NATS_MONITOR_URL/jsz: JetStream unavailable: ${jsz:0:300}" >&2
    exit 2
fi
echo "Running"
echo "nats-server at $NATS_URL healthy, JetStream enabled (monitoring $NATS_MONITOR_URL)" >&2
