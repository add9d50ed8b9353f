#!/usr/bin/env bash
# Install what computeagent needs on a Debian 12 machine (run as root), idempotently:
# Debian packages (only when one is missing) and a virtualenv at .venv with the project.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

PKGS=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-daemon-config-nwfilter
      ebtables iptables qemu-system-x86 qemu-utils rabbitmq-server libvirt-dev pkg-config
      iproute2 busybox-static python3-venv python3-dev gcc libc6-dev curl ca-certificates util-linux
      systemd)
# systemd: only for `systemd-analyze verify` of the unit in .ci/run; with
# --no-install-recommends it does not bring systemd-sysv, so PID 1 stays as it is.

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: missing Debian packages (${missing[*]}); run as root" >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # policy-rc.d keeps the package scripts from starting services we start ourselves.
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
stamp=.venv/.computeagent-installed
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || \
   [ packaging/computeagent-lab/pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing computeagent into .venv (log: .venv/pip.log)"
  .venv/bin/pip install -q --upgrade pip >.venv/pip.log 2>&1 || true
  if ! .venv/bin/pip install -e ".[test]" -e packaging/computeagent-lab >>.venv/pip.log 2>&1; then
    tail -30 .venv/pip.log >&2
    exit 1
  fi
  touch "$stamp"
fi
