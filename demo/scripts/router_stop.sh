#!/usr/bin/env bash
# T-OPS-04 §3 step 1: stop the simulated router started by router_start.sh (TERM, then KILL).
set -euo pipefail
# shellcheck source=demo/scripts/_common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/_common.sh"

stop_by_pidfile "$ROUTER_PID_FILE" demo.router router
