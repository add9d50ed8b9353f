#!/usr/bin/env bash
# `systemd-analyze verify` of etc/systemd/computeagent.service.  The unit's paths are
# those of the documented install (/opt/computeagent, docs/install.md); here they are
# pointed at this checkout's .venv so that verify can check the executables too.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
if ! command -v systemd-analyze >/dev/null; then
  echo "systemd-analyze missing (Debian package systemd; tools/bootstrap.sh installs it)" >&2
  exit 1
fi
grep -q '^ExecStart=/opt/computeagent/bin/computeagent ' etc/systemd/computeagent.service
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|/opt/computeagent/bin/|$top/.venv/bin/|g" etc/systemd/computeagent.service \
  > "$tmp/computeagent.service"
# units of other packages the agent orders itself after may be absent here
rc=0
raw=$(systemd-analyze verify --man=no "$tmp/computeagent.service" 2>&1) || rc=$?
out=$(printf '%s\n' "$raw" | grep -v -e 'libvirtd.service' -e 'rabbitmq-server.service' \
  -e '^$' || true)
if [ "$rc" != 0 ] || [ -n "$out" ]; then
  echo "$out" >&2
  echo "systemd unit: systemd-analyze verify failed" >&2
  exit 1
fi
echo "systemd unit: verified"
