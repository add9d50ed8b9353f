#!/usr/bin/env bash
# Fails when etc/computeagent/computeagent.conf.sample is not what
# oslo-config-generator makes from the code today.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
.venv/bin/oslo-config-generator --config-file etc/computeagent/computeagent-config-generator.conf \
  --output-file "$tmp" 2>/dev/null
if ! diff -u etc/computeagent/computeagent.conf.sample "$tmp"; then
  echo "computeagent.conf.sample is stale: run 'tox -e genconfig' (or tools/genconfig.sh)" >&2
  exit 1
fi
echo "config sample: up to date"
