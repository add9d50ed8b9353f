#!/usr/bin/env bash
# ruff (pyflakes + pycodestyle errors) and mypy (rpc/, virt/, images/, cli/ and the
# service modules); configuration in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${VENV_BIN:-.venv/bin}
"$bin/ruff" check computeagent tests tools
"$bin/mypy"
