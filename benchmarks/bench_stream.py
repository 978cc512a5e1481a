"""Data larger than memory: `data.stream: true` against loading the whole table.

A generated Parquet file of N rows × 20 features (18 numeric, 2 categorical, a binary
target) goes through three phases, each in a fresh process so that its peak resident memory
(`ru_maxrss`) is its own:

- prepare: the data and features stages (split, clean, fit, and for streaming the prepared
  rows on disk);
- train: one epoch of an MLP (64-64), batch 1024, with validation;
- predict: every row of the source file, written to Parquet.

The baseline is the same run with `data.stream: false` (and `Predictor.predict` on the whole
table), measured in the same invocation. Rows/s count the source's rows (prepare, predict)
or the training rows (train).

Usage: python benchmarks/bench_stream.py [--rows 10000000] [--baseline-rows N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section

FEATURES = 20


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """N rows: 18 float32 features, 2 string categories, a binary target, 1M rows at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=FEATURES - 2)
    shift = {c: rng.normal(size=8) for c in ("region", "plan")}
    writer = None
    for start in range(0, rows, 1_000_000):
        n = min(1_000_000, rows - start)
        x = rng.normal(size=(n, FEATURES - 2)).astype(np.float32)
        codes = {c: rng.integers(0, 8, size=n) for c in shift}
        logit = x @ weights / 3 + np.sin(2 * x[:, 0]) + sum(shift[c][codes[c]] for c in shift)
        y = (logit + rng.logistic(size=n) * 0.5 > 0).astype(np.int64)
        columns = {f"x{i}": x[:, i] for i in range(FEATURES - 2)}
        columns.update({c: np.array([f"{c}_{k}" for k in range(8)])[codes[c]] for c in shift})
        columns["target"] = y
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=250_000)
    writer.close()


def config(source: Path, stream: bool) -> dict:
    return {
        "name": "stream-bench", "seed": 0,
        "data": {"source": {"path": str(source)}, "stream": stream, "chunk_rows": 262_144,
                 "clean": {"drop_duplicates": False}},
        "model": {"name": "mlp", "hidden": [64, 64]},
        "train": {"epochs": 1, "batch_size": 1024, "progress": "never",
                  "optimizer": {"name": "adamw", "lr": 2e-3}, "shuffle_buffer": 1_048_576},
        "report": {"enabled": False},
    }


def phase(name: str, source: Path, run: Path, stream: bool) -> dict:
    """One phase in this process; prints {seconds, rows, peak_mb}."""
    import dlpipe
    from dlpipe import runs, train
    from dlpipe.pipeline import load_run_config

    start = time.perf_counter()
    if name == "prepare":
        dlpipe.run(config(source, stream), run_dir=run, stages=("data", "features"))
        rows = sum(json.loads((run / "data_profile.json").read_text())["rows"].values())
    elif name == "train":
        rundir = runs.RunDir.open(run)
        train.run(load_run_config(rundir), rundir)
        rows = json.loads((run / "data_profile.json").read_text())["rows"]["train"]
    else:
        import pandas as pd

        from dlpipe.predict import write_predictions

        predictor = dlpipe.load(run)
        out = run / "predictions.parquet"
        if stream:
            rows = predictor.predict_file(source, out, chunk_rows=262_144)
        else:
            frame = pd.read_parquet(source)
            rows = len(frame)
            write_predictions(predictor.predict(frame), out)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"seconds": seconds, "rows": rows, "peak_mb": peak}


def measure(source: Path, workdir: Path, stream: bool) -> dict[str, dict]:
    run = workdir / ("streamed" if stream else "in-memory")
    shutil.rmtree(run, ignore_errors=True)  # a kept work folder keeps only the data
    results = {}
    for name in ("prepare", "train", "predict"):
        done = subprocess.run(
            [sys.executable, __file__, "--phase", name, "--source", str(source),
             "--run", str(run), "--stream", str(int(stream))],
            capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} ({'streamed' if stream else 'in memory'}) failed:\n"
                             f"{done.stderr[-3000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {'streamed' if stream else 'in memory'} {name}: {results[name]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--baseline-rows", type=int, default=None,
                        help="rows for the in-memory baseline (default --rows)")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.source, args.run, bool(args.stream))))
        return

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="dlpipe-stream-"))
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = {"streamed": args.rows, "in memory": args.baseline_rows or args.rows}
    results = {}
    try:
        for label, rows in sizes.items():
            source = workdir / f"table-{rows}.parquet"
            if not source.exists():
                started = time.perf_counter()
                generate(source, rows)
                print(f"generated {rows:,} rows ({source.stat().st_size / 2**20:.0f} MiB) in "
                      f"{time.perf_counter() - started:.0f} s", flush=True)
            results[label] = measure(source, workdir, label == "streamed")
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)

    lines = ["| phase | mode | rows | seconds | rows/s | peak RSS (MiB) | vs in memory |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name in ("prepare", "train", "predict"):
        base = results["in memory"][name]
        for label in ("in memory", "streamed"):
            r = results[label][name]
            speed = r["rows"] / r["seconds"]
            ratio = ("" if label == "in memory" else
                     f"{speed / (base['rows'] / base['seconds']):.2f}× rows/s, "
                     f"{r['peak_mb'] / base['peak_mb']:.2f}× memory")
            lines.append(f"| {name} | {label} | {r['rows']:,} | {r['seconds']:.1f} | "
                         f"{speed:,.0f} | {r['peak_mb']:,.0f} | {ratio} |")
    table = "\n".join(lines)
    print(table)
    body = (f"`python benchmarks/bench_stream.py --rows {args.rows}"
            + (f" --baseline-rows {args.baseline_rows}" if args.baseline_rows else "") + "`, "
            f"this machine (2 cores). {FEATURES} features (18 float32, 2 categorical), binary "
            f"target; each phase in a fresh process, peak RSS from `ru_maxrss`.\n\n"
            f"{table}\n\n")
    write_section("bench_stream", "Data larger than memory (bench_stream)", body)


if __name__ == "__main__":
    main()
