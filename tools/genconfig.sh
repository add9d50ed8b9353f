#!/usr/bin/env bash
# Regenerates the production config sample and the test-only one.
set -euo pipefail
cd "$(dirname "$0")/.."
for gen in etc/computeagent/computeagent-config-generator.conf \
           etc/computeagent/computeagent-tests-config-generator.conf; do
  tools/oslo-config-generator --config-file "$gen"
done
