#!/usr/bin/env bash
# On a machine with a CUDA GPU: the tests marked `cuda`, then the GPU benchmarks, which
# rewrite their sections of benchmarks/RESULTS.md. CI has no GPU; see DEVELOPERS.md.
#   PYTHON=python3 bash scripts/gpu_check.sh [bench_gpu.py arguments, e.g. --repeats 5]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("gpu_check: this torch sees no CUDA GPU")
print(f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}, torch {torch.__version__}")
PY
"$PYTHON" -m pytest -m cuda -q -p no:cacheprovider
"$PYTHON" benchmarks/bench_augment.py --device cuda --write
"$PYTHON" benchmarks/bench_gpu.py "$@"
