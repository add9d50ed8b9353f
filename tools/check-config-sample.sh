#!/usr/bin/env bash
# Fails when a config sample in etc/computeagent/ is not what oslo-config-generator
# makes from the code today (the production one and the test-only one).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for gen in etc/computeagent/computeagent-config-generator.conf \
           etc/computeagent/computeagent-tests-config-generator.conf; do
  sample=$(sed -n 's/^output_file = //p' "$gen")
  tools/oslo-config-generator --config-file "$gen" --output-file "$tmp" 2>/dev/null
  if ! diff -u "$sample" "$tmp"; then
    echo "$sample is stale: run 'tox -e genconfig' (or tools/genconfig.sh)" >&2
    exit 1
  fi
done
if grep -q '^\[debug\]' etc/computeagent/computeagent.conf.sample; then
  echo "test-only [debug] options are in the production sample" >&2
  exit 1
fi
echo "config samples: up to date"
