"""Hyperparameter search: TPE with pruning against random search without pruning.

Two workloads, each searched over the same space (learning rate, layer widths, dropout,
activation) for the same number of trials, scored by validation accuracy:

  tabular_binary   examples/tabular_binary.yaml (make_classification 10,000 × 20, MLP, Adam,
                   batch 32, up to 20 epochs with early stopping on val_loss)
  digits           scikit-learn's 8×8 digits (1,797 rows, 10 classes), MLP, Adam, batch 64,
                   up to 30 epochs with early stopping on val_loss

  tpe+median       TPE sampler (5 random start-up trials) and the median pruner (after 5
                   start-up trials and 2 warm-up epochs, stop a trial below the median)
  tpe+hyperband    TPE sampler and the Hyperband pruner (rungs at 1, 3, 9, 27 epochs)
  random           random sampler, every trial trained until early stopping or its epochs

Each strategy runs with `--seeds` sampler seeds (the data split and the training seed stay
fixed); the table gives the mean over seeds of the best validation accuracy after k trials
(completed trials only: a pruned trial has no final score) and of the epochs trained in all.
The issue's target: pruning trains ≥ 40% fewer epochs at an equal or better best score.

Usage: python benchmarks/bench_tune.py [--trials 25] [--seeds 1] [--threads 2]
                [--pruners median hyperband] [--workloads tabular_binary digits]
Prints a table and rewrites its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
import yaml

import dlpipe
from dlpipe import runs, tune
from dlpipe.config import load_config

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section

ROOT = Path(__file__).resolve().parents[1]

SPACE = {
    "train.optimizer.lr": {"float": [1e-4, 0.3], "log": True},
    "model.hidden": [[32], [64, 32], [128, 64], [256, 128]],
    "model.dropout": {"float": [0.0, 0.5]},
    "model.activation": ["relu", "gelu", "tanh"],
}


def workload(name: str, threads: int) -> dict[str, Any]:
    if name == "tabular_binary":
        cfg = yaml.safe_load((ROOT / "examples" / "tabular_binary.yaml").read_text())
    elif name == "digits":
        cfg = {
            "data": {"source": {"builtin": "digits"}, "target": "target",
                     "split": {"val": 0.15, "test": 0.15}},
            "model": {"name": "mlp", "hidden": [128, 64]},
            "train": {"epochs": 30, "batch_size": 64, "optimizer": {"name": "adam", "lr": 1e-3},
                      "early_stopping": {"monitor": "val_loss", "patience": 5}},
        }
    else:
        raise SystemExit(f"unknown workload {name!r}; known: tabular_binary, digits")
    cfg["name"] = name
    cfg["train"].update(threads=threads, progress="never")
    return cfg


def strategies(pruners: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {
        f"tpe+{pruner}": {"sampler": "tpe", "pruner": pruner, "startup_trials": 5,
                          "warmup_epochs": 2}
        for pruner in pruners
    }
    found["random, no pruning"] = {"sampler": "random", "pruner": "none"}
    return found


def search(rundir: dlpipe.RunDir, cfg: dict[str, Any], name: str, options: dict[str, Any],
           trials: int, seed: int) -> dict[str, Any]:
    """One study; its best-so-far curve, epochs trained and wall time."""
    section = {"space": SPACE, "metric": "val.accuracy", "n_trials": trials, "seed": seed,
               "study": f"{name}-{seed}", "plots": False, **options}
    study_cfg = load_config({**cfg, "tune": section})
    start = time.perf_counter()
    tune.run(study_cfg, rundir)
    seconds = time.perf_counter() - start
    frame = pd.read_csv(rundir.file(runs.TUNE_TRIALS))
    complete = frame["value"].where(frame["state"] == "COMPLETE")
    # Best so far among completed trials (a pruned trial has no final score): NaN until one.
    return {"curve": complete.cummax().ffill().tolist(), "epochs": int(frame["epochs"].sum()),
            "pruned": int((frame["state"] == "PRUNED").sum()), "seconds": seconds}


def best_after(curves: list[list[float]], k: int) -> float:
    return statistics.mean(c[min(k, len(c)) - 1] for c in curves)


def report(name: str, results: dict[str, list[dict[str, Any]]], trials: int,
           val_rows: int) -> list[str]:
    ks = sorted({5, 10, trials // 2, trials} & set(range(1, trials + 1)))
    lines = [f"| {name} ({val_rows} val rows): strategy | "
             + " | ".join(f"best val acc @{k}" for k in ks)
             + " | epochs trained | pruned trials | wall s |",
             "|---|" + "---|" * (len(ks) + 3)]
    for strategy, runs_ in results.items():
        curves = [r["curve"] for r in runs_]
        cells = [f"{best_after(curves, k):.4f}" for k in ks]
        lines.append(f"| {strategy} | " + " | ".join(cells)
                     + f" | {statistics.mean(r['epochs'] for r in runs_):.0f}"
                     + f" | {statistics.mean(r['pruned'] for r in runs_):.1f}"
                     + f" | {statistics.mean(r['seconds'] for r in runs_):.0f} |")
    return lines


def verdict(name: str, pruned_name: str, results: dict[str, list[dict[str, Any]]],
            trials: int) -> str:
    pruned, plain = results[pruned_name], results["random, no pruning"]
    epochs_p = statistics.mean(r["epochs"] for r in pruned)
    epochs_r = statistics.mean(r["epochs"] for r in plain)
    best_p = best_after([r["curve"] for r in pruned], trials)
    best_r = best_after([r["curve"] for r in plain], trials)
    saved = 1 - epochs_p / epochs_r
    met = saved >= 0.40 and best_p >= best_r
    return (f"{name}: {pruned_name} trained {saved:.0%} fewer epochs than random search "
            f"({epochs_p:.0f} vs {epochs_r:.0f}) with best val accuracy {best_p:.4f} vs "
            f"{best_r:.4f} after {trials} trials; target (≥ 40% fewer at an equal or better "
            f"score) {'met' if met else 'NOT met'}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=25)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pruners", nargs="+", default=["median", "hyperband"],
                        choices=["median", "hyperband", "successive_halving"])
    parser.add_argument("--workloads", nargs="+", default=["tabular_binary", "digits"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("dlpipe.tune").setLevel(logging.ERROR)  # failed trials: counted, not shown

    tables, verdicts = [], []
    load_start = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="dlpipe-bench-tune-"))
    try:
        for name in args.workloads:
            cfg = workload(name, args.threads)
            rundir = dlpipe.run(cfg, run_dir=workdir / name, stages=("data", "features")).rundir
            results: dict[str, list[dict[str, Any]]] = {}
            for strategy, options in strategies(args.pruners).items():
                results[strategy] = []
                for seed in range(args.seeds):  # interleaving is not needed: nothing is timed
                    key = strategy.split(",")[0].replace("+", "-")
                    results[strategy].append(search(rundir, cfg, key, options, args.trials, seed))
            val_rows = len(rundir.read_split("val"))
            tables.append("\n".join(report(name, results, args.trials, val_rows)))
            verdicts += [verdict(name, s, results, args.trials) for s in results
                         if s.startswith("tpe")]
            print(tables[-1], *verdicts[-len(args.pruners):], sep="\n\n", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    cpu = platform.processor() or platform.machine()
    # Other work on the machine slows the wall times, not the epochs or the scores.
    load = f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    env = (f"torch {torch.__version__}, optuna {optuna.__version__}, {args.threads} threads, "
           f"{cpu}, {load}; {args.trials} trials per study, mean over {args.seeds} sampler "
           f"seeds; "
           f"command: `python benchmarks/bench_tune.py --trials {args.trials} --seeds "
           f"{args.seeds} --threads {args.threads} --pruners {' '.join(args.pruners)}`")
    body = f"{env}.\n\n" + "\n\n".join(tables) + "\n\n" + "\n\n".join(verdicts) + "\n"
    write_section("bench_tune", "Search: TPE with pruning vs random search "
                                "(`python benchmarks/bench_tune.py`)", body)


if __name__ == "__main__":
    main()
