#!/usr/bin/env bash
# T-OPS-04 §1C step 4 (Extreme): purge every message of STREAM. DANGER: data loss.
# The remediator runs this only after a human approved it.
set -euo pipefail
: "${BEAMLINE_NATS_PORT:?not set: the NATS client port to act on; no default}"
# shellcheck source=demo/scripts/_common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/_common.sh"

(($# == 1)) || die "usage: $(basename -- "$0") STREAM_NAME"
stream="$1"
[[ "$stream" =~ ^[A-Za-z0-9_-]{1,255}$ ]] || die "invalid stream name '$stream'"
echo "Purging stream $stream at $NATS_URL (DANGER: data loss)" >&2
demo_python -m demo.setup_streams --nats-url "$NATS_URL" --timeout "$BEAMLINE_HTTP_TIMEOUT" purge "$stream"
