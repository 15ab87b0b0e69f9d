#!/usr/bin/env bash
# T-OPS-04 §2B: the Erlang console's router_circuit_breaker calls, against the simulated router.
#   circuit_breaker.sh force_recovery|force_recovery_to_half_open|status TENANT PROVIDER
# Prints the breaker's status JSON; exit 1 on any error (unknown breaker, bad token, router down).
set -euo pipefail
: "${BEAMLINE_ROUTER_HTTP_PORT:?not set: the router HTTP port to act on; no default}"
# shellcheck source=demo/scripts/_common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/_common.sh"

usage="usage: $(basename -- "$0") force_recovery|force_recovery_to_half_open|status TENANT PROVIDER"
(($# == 3)) || die "$usage"
action="$1" tenant="$2" provider="$3"
case "$action" in
    force_recovery | force_recovery_to_half_open) method=POST ;;
    status) method=GET ;;
    *) die "unknown action '$action'; $usage" ;;
esac
# Ids become URL path segments: allow only characters that cannot change the path.
for id in "$tenant" "$provider"; do
    [[ "$id" =~ ^[A-Za-z0-9_.:-]{1,128}$ && "$id" != . && "$id" != .. ]] \
        || die "invalid tenant/provider id '$id' (letters, digits, _ . : - only)"
done
[[ -r "$BEAMLINE_ROUTER_ADMIN_TOKEN_FILE" ]] \
    || die "admin token file $BEAMLINE_ROUTER_ADMIN_TOKEN_FILE not readable (set BEAMLINE_ROUTER_ADMIN_TOKEN_FILE)"
token="$(head -c 4096 -- "$BEAMLINE_ROUTER_ADMIN_TOKEN_FILE" | tr -d '\r\n')"

body_file="$(mktemp)"
trap 'rm -f -- "$body_file"' EXIT
# The header goes through a file descriptor so the token never appears in a process list.
code="$(http --request "$method" --output "$body_file" --write-out '%{http_code}' \
    --header @<(printf 'Authorization: Bearer %s\n' "$token") \
    "$ROUTER_URL/admin/circuit_breaker/$tenant/$provider/$action")" \
    || die "router admin interface at $ROUTER_URL unreachable"
cat -- "$body_file"
echo
[[ "$code" == 200 ]] || die "$action $tenant/$provider: HTTP $code"
