"""Training overhead: dlpipe against a hand-written PyTorch loop and a DataLoader loop.

The `tabular_binary` workload (make_classification 10,000 × 20; MLP 128-64, dropout 0.2;
Adam 1e-3; batch 32) is trained for 20 epochs four ways, in one process, with the same
model, optimizer, batch size, threads and seed, each validating once per epoch:

  yardstick      shuffled index slices of pre-built tensors, plain loop
  dlpipe fit     `dlpipe.train.fit_arrays`: the loop with its default callbacks (history,
                 best weights) and the progress bar when stderr is a terminal
  dlpipe stage   `dlpipe.train.run`: the same plus a checkpoint and history.jsonl every epoch
  DataLoader     the idiomatic `DataLoader(TensorDataset(...), shuffle=True)` loop

Usage: python benchmarks/bench_train.py [--epochs 20] [--repeats 3] [--threads 2]
Prints a table and rewrites its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dlpipe
from dlpipe import train
from dlpipe.features import load as load_features
from dlpipe.pipeline import load_run_config
from dlpipe.runs import RunDir

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section

ROOT = Path(__file__).resolve().parents[1]


def prepared(workdir: Path, epochs: int) -> RunDir:
    overrides = [f"train.epochs={epochs}", "train.early_stopping=null", "train.progress=auto"]
    result = dlpipe.run(ROOT / "examples" / "tabular_binary.yaml", run_dir=workdir / "prep",
                        overrides=overrides, stages=("data", "features"))
    return result.rundir


def hand_model(in_features: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, 128), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 1))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        return float(((model(x).reshape(-1) > 0).float() == y).float().mean())


def yardstick(x, y, xv, yv, *, epochs: int, seed: int) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    model = hand_model(x.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 32):
            idx = order[i:i + 32]
            loss = loss_fn(model(x[idx]).reshape(-1), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            float(loss_fn(model(xv).reshape(-1), yv))
    return model, time.perf_counter() - start


def dataloader_loop(x, y, xv, yv, *, epochs: int, seed: int) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    model = hand_model(x.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            loss = loss_fn(model(xb).reshape(-1), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            float(loss_fn(model(xv).reshape(-1), yv))
    return model, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    workdir = Path(tempfile.mkdtemp(prefix="dlpipe-bench-"))
    try:
        rundir = prepared(workdir, args.epochs)
        cfg = load_run_config(rundir)
        fitted = load_features(rundir)
        train_xy = fitted.arrays(rundir.read_split("train"))
        val_xy = fitted.arrays(rundir.read_split("val"))
        test_x, test_y = fitted.arrays(rundir.read_split("test"))
        x, y = (torch.as_tensor(a, dtype=torch.float32) for a in train_xy)
        xv, yv = (torch.as_tensor(a, dtype=torch.float32) for a in val_xy)
        xt, yt = (torch.as_tensor(a, dtype=torch.float32) for a in (test_x, test_y))

        def dlpipe_fit():
            start = time.perf_counter()
            trained = train.fit_arrays(cfg, fitted, train_xy, val_xy)
            return trained.model, time.perf_counter() - start

        def dlpipe_stage():
            target = workdir / "stage"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(rundir.path, target)
            stage_dir = RunDir.open(target)
            start = time.perf_counter()
            trained = train.run(cfg, stage_dir)
            return trained.model, time.perf_counter() - start

        ways = {
            "yardstick (hand-written loop)": lambda: yardstick(x, y, xv, yv, epochs=args.epochs,
                                                               seed=cfg.seed),
            "dlpipe fit": dlpipe_fit,
            "dlpipe train stage (+checkpoints)": dlpipe_stage,
            "DataLoader(TensorDataset)": lambda: dataloader_loop(x, y, xv, yv,
                                                                 epochs=args.epochs, seed=cfg.seed),
        }
        times: dict[str, list[float]] = {name: [] for name in ways}
        accuracies: dict[str, float] = {}
        for _ in range(args.repeats):  # interleaved, so drift in the machine hits all alike
            for name, way in ways.items():
                model, seconds = way()
                times[name].append(seconds / args.epochs)
                accuracies[name] = accuracy(model, xt, yt)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    base_median = statistics.median(times["yardstick (hand-written loop)"])
    base_min = min(times["yardstick (hand-written loop)"])
    lines = [f"| way | s / epoch, median of {args.repeats} | ratio | s / epoch, best of "
             f"{args.repeats} | ratio | test accuracy |", "|---|---|---|---|---|---|"]
    for name, values in times.items():
        median, best = statistics.median(values), min(values)
        lines.append(f"| {name} | {median:.4f} | {median / base_median:.2f}× | {best:.4f} | "
                     f"{best / base_min:.2f}× | {accuracies[name]:.4f} |")
    table = "\n".join(lines)
    print(table)
    cpu = platform.processor() or platform.machine()
    env = (f"torch {torch.__version__}, {args.threads} threads, {cpu}, {args.epochs} epochs, "
           f"batch 32, 7,000 training rows")
    write_section("bench_train", "Training overhead (`python benchmarks/bench_train.py`)",
                  f"{env}.\n\n{table}\n")


if __name__ == "__main__":
    main()
