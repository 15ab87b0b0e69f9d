#!/usr/bin/env bash
# T-OPS-04 §1A/§3: stop the local nats-server started by nats_start.sh (TERM, then KILL).
set -euo pipefail
# shellcheck source=demo/scripts/_common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/_common.sh"

stop_by_pidfile "$NATS_PID_FILE" nats-server nats-server
