"""Start-up and end-to-end wall time: `import dlpipe`, and `dlpipe run examples/quickstart.yaml`.

Baselines measured in the same run: a bare interpreter, and `import torch` (what any
PyTorch tool pays). Each command runs N times in a fresh process; the table gives the median.

Usage: python benchmarks/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section

ROOT = Path(__file__).resolve().parents[1]


def wall(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    py = sys.executable
    bare = wall([py, "-c", "pass"], args.repeats)
    torch_import = wall([py, "-c", "import torch"], args.repeats)
    dlpipe_import = wall([py, "-c", "import dlpipe"], args.repeats)
    heavy = subprocess.run(
        [py, "-c", "import dlpipe, sys; print([m for m in ('torch', 'onnxruntime', 'optuna', "
                   "'fastapi', 'matplotlib', 'sklearn') if m in sys.modules])"],
        check=True, capture_output=True, text=True).stdout.strip()

    workdir = Path(tempfile.mkdtemp(prefix="dlpipe-bench-"))
    runs, stages = [], {}
    try:
        for i in range(args.repeats):
            run_dir = workdir / f"run{i}"
            start = time.perf_counter()
            subprocess.run([py, "-m", "dlpipe", "run", "examples/quickstart.yaml", "--run-dir",
                            str(run_dir)], check=True, capture_output=True, cwd=ROOT)
            runs.append(time.perf_counter() - start)
            for stage, info in json.loads((run_dir / "run.json").read_text())["stages"].items():
                stages.setdefault(stage, []).append(info["seconds"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    quick = statistics.median(runs)

    rows = [
        ("python -c pass", bare, "—"),
        ("python -c 'import torch'", torch_import, f"{torch_import / bare:.1f}× bare"),
        ("python -c 'import dlpipe'", dlpipe_import,
         f"{dlpipe_import / torch_import:.2f}× import torch"),
        ("dlpipe run examples/quickstart.yaml", quick, f"{quick / torch_import:.1f}× import torch"),
    ]
    lines = ["| command | median wall s | ratio |", "|---|---|---|"]
    lines += [f"| `{c}` | {s:.3f} | {r} |" for c, s, r in rows]
    per_stage = ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in stages.items())
    table = "\n".join(lines)
    print(table)
    print(f"quickstart stages (median): {per_stage}; heavy modules after import dlpipe: {heavy}")
    write_section("bench_startup", "Start-up and quickstart (`python benchmarks/bench_startup.py`)",
                  f"{args.repeats} runs each.\n\n{table}\n\nQuickstart stage times (median, from "
                  f"run.json): {per_stage}. Heavy modules loaded by `import dlpipe`: {heavy}.\n")


if __name__ == "__main__":
    main()
