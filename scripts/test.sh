#!/usr/bin/env bash
# The test command: install from nothing (idempotent), lint, then the whole suite,
# slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
