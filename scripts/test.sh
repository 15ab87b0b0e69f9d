#!/usr/bin/env bash
# Installs what the tests need (Debian packages, .venv with the dev extras) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

debian_packages=(nats-server prometheus prometheus-alertmanager chromium openssh-server)
missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)
command -v chromium >/dev/null || missing+=(chromium)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)  # tests/support/sshd.py: real SSH hosts
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "installing Debian packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${debian_packages[@]}"
fi

if [ ! -x .venv/bin/pytest ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
fi
.venv/bin/pip install --quiet -e '.[dev]'

# pytest exits 5 when it collected no test: that is a failure here, as is any other non-zero code.
exec .venv/bin/pytest -q "$@"
