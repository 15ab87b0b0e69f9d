#!/usr/bin/env bash
# T-OPS-04 §3 step 5: create the DECIDE stream and the router_decide_consumer (idempotent).
# There may be no `nats` CLI here, so this uses demo/setup_streams.py (nats-py).
set -euo pipefail
: "${BEAMLINE_NATS_PORT:?not set: the NATS client port to act on; no default}"
# shellcheck source=demo/scripts/_common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/_common.sh"

demo_python -m demo.setup_streams --nats-url "$NATS_URL" --timeout "$BEAMLINE_HTTP_TIMEOUT" setup
