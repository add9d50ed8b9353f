#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/oslo-config-generator --config-file etc/computeagent/computeagent-config-generator.conf
