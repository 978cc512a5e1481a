#!/usr/bin/env bash
# Create .venv with everything dlpipe needs, from nothing but Python 3.11.
# torch is installed first and pinned, so no other requirement can pull a newer
# (CUDA-sized) build; the project's own range is satisfied by it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==${DLPIPE_TORCH:-2.13.0}"
.venv/bin/python -m pip install --quiet -e '.[dev]'
