"""GPU training throughput: dlpipe against a hand-written loop over GPU-resident tensors.

Workloads, each trained both ways in fp32 and under bf16 autocast (`train.precision: bf16`;
`torch.autocast` around forward and loss in the hand-written loop):

  tabular     examples/tabular_binary.yaml: MLP 128-64, dropout 0.2, Adam 1e-3, batch 32,
              7,000 training rows
  digits      examples/digits_cnn.yaml: the tutorial CNN on 16x16 digits, AdamW 2e-3,
              batch 64, random crop + rotation; a fixed number of epochs (no early stopping)
  bars 28x28  synthetic 1x28x28 images (`bench_media.synthetic_images`), 20,000 training
              images, the tutorial CNN, Adam 1e-3, batch 128
  bars 32x32  synthetic 3x32x32 tinted images, 20,000 training images, a small ResNet-style
              `cnn`: residual blocks of 32, 64 (stride 2) and 128 (stride 2) channels with
              batch norm, global average pooling, a Linear head; Adam 1e-3, batch 128
  wide MLP    512-2048-2048-10 at batch 4096 on 262,144 rows of Gaussian class clusters
              (made as model inputs: the data and features stages run on a 2,000-row sample
              of the same width, then `fit_arrays` gets the full arrays)

Ways, in one process, interleaved repeat by repeat, with the same network, optimizer, batch
size and seed, each validating once per epoch:

  yardstick   the plain loop: tensors on the GPU, a randperm on the GPU each epoch, index
              slices, no channels_last, the optimizer's default (foreach) implementation
  dlpipe      `dlpipe.train.fit_arrays` with `train.device: cuda`

Timing is steady state: every run trains `epochs` epochs and the first one (CUDA context,
cuDNN autotuning, allocator growth) is excluded; the clock runs from the end of epoch 1 to
the end of the last, with `torch.cuda.synchronize()` at both (a callback at dlpipe's epoch
end). samples/s = training rows x timed epochs / that time (validation included); ratio =
dlpipe's time / the yardstick's (target <= 1.10x). `torch.backends.cudnn.benchmark` is set for
the whole process (both ways) unless --no-cudnn-benchmark.

The peak: a bf16 `torch.matmul` of two 8192 x 8192 matrices, timed with CUDA events, median
of 20 after a warm-up. The wide MLP's model TFLOP/s = 6 x parameters x samples/s (forward
and backward matmuls), and its fraction of that peak.

Usage: python benchmarks/bench_gpu.py [--device cuda] [--repeats 3] [--no-cudnn-benchmark]
       python benchmarks/bench_gpu.py --device cpu --quick     (small sizes; a smoke test)
Prints a table; on CUDA it also rewrites the "bench_gpu" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section
from bench_media import (
    ROOT,
    Timed,
    accuracy,
    arrays,
    as_tensors,
    check_same_size,
    dlpipe_fit,
    hand_crop,
    hand_fit,
    hand_rotate,
    image_augment,
    n_params,
    prepare,
    synthetic_images,
    tutorial_cnn,
)

TARGET = 1.10
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Sizes:
    """How big each workload is: the full run, or `--quick`."""

    images: int = 20000
    epochs: int = 6  # the first is excluded from the timing
    digits_epochs: int = 11
    wide_rows: int = 262144
    wide_batch: int = 4096
    wide_epochs: int = 11
    peak_n: int = 8192
    peak_runs: int = 20


QUICK = Sizes(images=800, epochs=2, digits_epochs=2, wide_rows=1024, wide_batch=256,
              wide_epochs=2, peak_n=512, peak_runs=3)


@dataclass
class Workload:
    """One training problem, prepared both ways."""

    name: str
    cfg: Any
    fitted: Any
    data: dict[str, tuple[np.ndarray, np.ndarray]]
    build: Callable[[], nn.Module]
    lr: float
    optimizer: str = "adam"
    augment: Sequence[Callable[..., torch.Tensor]] = ()


# -- hand-written networks ---------------------------------------------------------------------


def hand_mlp(in_features: int, hidden: Sequence[int], n_out: int, dropout: float) -> nn.Module:
    """Linear → ReLU → Dropout per hidden width, then a Linear head."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        layers += [nn.Dropout(dropout)] if dropout else []
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, n_out))


class BasicBlock(nn.Module):
    """ResNet's basic block: relu(bn(conv(relu(bn(conv(x))))) + skip(x)), skip a 1x1
    projection with batch norm where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


RESNET_BLOCKS = [{"channels": 32}, {"channels": 64, "stride": 2}, {"channels": 128, "stride": 2}]


def small_resnet(in_shape: Sequence[int], n_out: int) -> nn.Module:
    """The hand-written twin of `cnn(blocks=RESNET_BLOCKS, residual=True, pool=avg,
    hidden=[])`."""
    c = in_shape[0]
    blocks = []
    for spec in RESNET_BLOCKS:
        blocks.append(BasicBlock(c, spec["channels"], spec.get("stride", 1)))
        c = spec["channels"]
    return nn.Sequential(nn.Unflatten(1, tuple(in_shape)), *blocks,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_out))


# -- workloads ---------------------------------------------------------------------------------


def common(device: str, epochs: int) -> list[str]:
    return [f"train.device={device}", f"train.epochs={epochs}", "train.early_stopping=null",
            "train.progress=auto"]


def tabular(workdir: Path, device: str, sizes: Sizes) -> Workload:
    cfg, fitted, rundir = prepare(ROOT / "examples" / "tabular_binary.yaml", workdir,
                                  "tabular", common(device, sizes.epochs))
    width = fitted.inputs.n_numeric_
    build = lambda: hand_mlp(width, [128, 64], 1, 0.2)  # noqa: E731
    check_same_size(build(), cfg, fitted, "tabular")
    return Workload("tabular MLP, batch 32", cfg, fitted, arrays(fitted, rundir), build, 1e-3)


def digits(workdir: Path, device: str, sizes: Sizes) -> Workload:
    cfg, fitted, rundir = prepare(ROOT / "examples" / "digits_cnn.yaml", workdir, "digits",
                                  common(device, sizes.digits_epochs))
    shape, n_classes = tuple(fitted.layout[0]["shape"]), len(fitted.target.classes_)
    build = lambda: tutorial_cnn(shape, n_classes)  # noqa: E731
    check_same_size(build(), cfg, fitted, "digits")
    ops = [lambda im, g: hand_crop(im, g, 1), lambda im, g: hand_rotate(im, g, 10.0)]
    return Workload("digits CNN + crop/rotation, batch 64", cfg, fitted,
                    arrays(fitted, rundir), build, cfg.train.optimizer.kwargs["lr"], "adamw",
                    ops)


def bars(workdir: Path, device: str, sizes: Sizes, channels: int) -> Workload:
    size = 28 if channels == 1 else 32
    X, y = synthetic_images(sizes.images * 5 // 4, seed=0, size=size, channels=channels)
    model = ({"name": "cnn"} if channels == 1 else
             {"name": "cnn", "blocks": RESNET_BLOCKS, "residual": True, "pool": "avg",
              "hidden": []})
    config = {"data": {"split": {"val": 0.1, "test": 0.1}}, "model": model,
              "train": {"batch_size": 128, "optimizer": {"name": "adam", "lr": 1e-3}}}
    cfg, fitted, rundir = prepare(config, workdir, f"bars{size}", common(device, sizes.epochs),
                                  data=(X, y))
    shape = tuple(fitted.layout[0]["shape"])

    def build() -> nn.Module:
        return tutorial_cnn(shape, 10) if channels == 1 else small_resnet(shape, 10)

    check_same_size(build(), cfg, fitted, f"bars {size}x{size}")
    what = "tutorial CNN" if channels == 1 else "small ResNet"
    return Workload(f"bars {channels}x{size}x{size}, {what}, batch 128", cfg, fitted,
                    arrays(fitted, rundir), build, 1e-3)


def wide(workdir: Path, device: str, sizes: Sizes) -> Workload:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 0.3, (10, 512)).astype(np.float32)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, n)
        x = rng.standard_normal((n, 512), dtype=np.float32)
        x += centres[y]
        return x, y

    config = {"data": {"split": {"val": 0.1, "test": 0.1}},
              "features": {"numeric": "none"},
              "model": {"name": "mlp", "hidden": [2048, 2048]},
              "train": {"batch_size": sizes.wide_batch,
                        "optimizer": {"name": "adam", "lr": 1e-3}}}
    cfg, fitted, _ = prepare(config, workdir, "wide", common(device, sizes.wide_epochs),
                             data=sample(2000))
    build = lambda: hand_mlp(512, [2048, 2048], 10, 0.0)  # noqa: E731
    check_same_size(build(), cfg, fitted, "wide MLP")
    held_out = max(sizes.wide_batch, sizes.wide_rows // 32)
    data = {"train": sample(sizes.wide_rows), "val": sample(held_out), "test": sample(held_out)}
    return Workload(f"wide MLP 512-2048-2048-10, batch {sizes.wide_batch}", cfg, fitted, data,
                    build, 1e-3)


# -- measuring ---------------------------------------------------------------------------------


def steady(timed: Timed) -> float:
    """Seconds per epoch from the end of the first epoch to the end of the last."""
    if len(timed.marks) < 2:
        raise SystemExit("steady-state timing needs at least 2 epochs per run")
    return (timed.marks[-1] - timed.marks[0]) / (len(timed.marks) - 1)


def measure(work: Workload, device: torch.device, repeats: int) -> list[dict[str, Any]]:
    """Both ways in both precisions, interleaved; one result row per precision."""
    task = work.fitted.task
    train_xy, val, test = (as_tensors(work.data[s], task, device)
                           for s in ("train", "val", "test"))
    shape = next((tuple(b["shape"]) for b in work.fitted.layout if b["kind"] == "image"), None)
    cfgs = {p: with_precision(work.cfg, p) for p in PRECISIONS}
    rows = {p: {"yardstick": [], "dlpipe": []} for p in PRECISIONS}
    acc: dict[tuple[str, str], float] = {}
    for _ in range(repeats):
        for precision, dtype in PRECISIONS.items():
            augment = (image_augment(shape, work.augment, device, work.cfg.seed)
                       if work.augment else None)
            hand = hand_fit(work.build, train_xy, val, epochs=work.cfg.train.epochs,
                            batch_size=work.cfg.train.batch_size, lr=work.lr,
                            seed=work.cfg.seed, optimizer=work.optimizer, augment=augment,
                            autocast=dtype)
            ours = dlpipe_fit(cfgs[precision], work.fitted, work.data, device)
            for way, timed in (("yardstick", hand), ("dlpipe", ours)):
                rows[precision][way].append(steady(timed))
                acc[precision, way] = accuracy(timed.model, *test)
    n = len(train_xy[0])
    out = []
    for precision, times in rows.items():
        y_med, d_med = statistics.median(times["yardstick"]), statistics.median(times["dlpipe"])
        y_min, d_min = min(times["yardstick"]), min(times["dlpipe"])
        out.append({"workload": work.name, "precision": precision,
                    "yardstick": n / y_med, "dlpipe": n / d_med, "ratio": d_med / y_med,
                    "ratio_best": d_min / y_min, "acc_yardstick": acc[precision, "yardstick"],
                    "acc_dlpipe": acc[precision, "dlpipe"],
                    "params": n_params(work.build())})
    return out


def with_precision(cfg: Any, precision: str) -> Any:
    """`cfg` with `train.precision` set."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"precision": precision})})


def peak_bf16_tflops(device: torch.device, n: int, runs: int) -> float:
    """TFLOP/s of a bf16 (n x n) @ (n x n) matmul: median of `runs` timings after a warm-up
    (CUDA events on a GPU, the wall clock on a CPU)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(a, b)
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            began = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - began)
    return 2 * n ** 3 / statistics.median(times) / 1e12


# -- reporting ---------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]], repeats: int) -> str:
    lines = [f"| workload | precision | yardstick samples/s | dlpipe samples/s | ratio, median of "
             f"{repeats} | ratio, best | test acc yardstick | test acc dlpipe |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['workload']} | {r['precision']} | {r['yardstick']:,.0f} | "
              f"{r['dlpipe']:,.0f} | {r['ratio']:.2f}× | {r['ratio_best']:.2f}× | "
              f"{r['acc_yardstick']:.4f} | {r['acc_dlpipe']:.4f} |" for r in rows]
    return "\n".join(lines)


def wide_lines(rows: list[dict[str, Any]], peak: float, n: int) -> str:
    """The wide MLP's model TFLOP/s and fraction of the bf16 matmul peak, each way."""
    out = [f"Peak bf16 matmul ({n}x{n} @ {n}x{n}, median): {peak:.3g} TFLOP/s."]
    for r in rows:
        for way in ("yardstick", "dlpipe"):
            tflops = 6 * r["params"] * r[way] / 1e12
            out.append(f"- wide MLP ({r['params']:,} parameters), {r['precision']}, {way}: "
                       f"{tflops:.3g} model TFLOP/s = {tflops / peak:.1%} of the bf16 peak")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--no-cudnn-benchmark", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available; run with --device cpu --quick to test")
    sizes = QUICK if args.quick else Sizes()
    repeats = args.repeats or (1 if args.quick else 3)
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU {platform.processor() or platform.machine()}, "
                 f"{torch.get_num_threads()} threads")
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="dlpipe-bench-gpu-"))
    rows, wide_rows = [], []
    try:
        makers = [lambda: tabular(workdir, args.device, sizes),
                  lambda: digits(workdir, args.device, sizes),
                  lambda: bars(workdir, args.device, sizes, 1),
                  lambda: bars(workdir, args.device, sizes, 3),
                  lambda: wide(workdir, args.device, sizes)]
        for i, make in enumerate(makers):
            start = time.perf_counter()
            work = make()
            measured = measure(work, device, repeats)
            (wide_rows if i == len(makers) - 1 else rows).extend(measured)
            print(table(measured, repeats), f"\n({time.perf_counter() - start:.0f} s)\n",
                  flush=True)
            del work
        peak = peak_bf16_tflops(device, sizes.peak_n, sizes.peak_runs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows += wide_rows
    worst = max(r["ratio"] for r in rows)
    caveat = ("" if device.type == "cuda" else
              "\n(On a CPU a small bf16 matmul is no peak: the fractions mean nothing.)")
    text = (f"{table(rows, repeats)}\n\n{wide_lines(wide_rows, peak, sizes.peak_n)}{caveat}\n\n"
            f"Worst dlpipe / yardstick time (median): {worst:.2f}× (target ≤ {TARGET:.2f}× on "
            f"every row: {'met' if worst <= TARGET else 'NOT met'}).\n")
    env = (f"{name}, torch {torch.__version__}"
           + (f", CUDA {torch.version.cuda}" if device.type == "cuda" else "")
           + f", cudnn.benchmark {torch.backends.cudnn.benchmark}; {repeats} interleaved "
           f"repeats; steady state: epochs 2..{sizes.epochs} timed ({sizes.digits_epochs} for "
           f"digits, {sizes.wide_epochs} for the wide MLP), {sizes.images:,} training images; "
           f"whole run {time.perf_counter() - began:.0f} s")
    print(f"{env}.\n\n{text}")
    if device.type == "cuda":
        write_section("bench_gpu", "GPU training throughput (`python benchmarks/bench_gpu.py`)",
                      f"{env}.\n\n{text}")


if __name__ == "__main__":
    main()
