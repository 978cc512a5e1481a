"""Augmentation overhead: time per training batch of each `train.augment` op, against a step.

For a batch of 128 MNIST-sized images (1 x 28 x 28, the flat float32 (128, 784) input the
loop hands over) and of 128 CIFAR-sized ones (3 x 32 x 32), time `BatchAugment` with each
registered op alone (default arguments; color_jitter with saturation on 3 channels only), a
typical pipeline (random_crop 2 · hflip · rotation 10 · cutout 8 · mixup 0.2), and, as the
yardstick, one training step (forward, cross-entropy, backward, AdamW step) of the default
`cnn` (the Keras MNIST tutorial network) on the same batch. Medians over `--runs` calls after
a warm-up; on CUDA each call is synchronised.

Also counted: the tensor operations one call dispatches (ATen ops, views excluded). On a GPU
each is a kernel launch, and for a small batch the launches, not the arithmetic, are most of
an op's time, so this column predicts GPU overhead from any machine.

Usage: python benchmarks/bench_augment.py [--device cpu|cuda] [--threads N] [--runs 50]
       [--write]  (rewrite this script's section of benchmarks/RESULTS.md)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from dlpipe.models.cnn import cnn
from dlpipe.train.augment import AUGMENTATIONS, build_augment

PIPELINE = [("random_crop", {"padding": 2}), ("hflip", {}), ("rotation", {"degrees": 10}),
            ("cutout", {"size": 8}), ("mixup", {"alpha": 0.2})]


def median_ms(fn, runs: int, device: torch.device) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


class _OpCount(TorchDispatchMode):
    """Counts the ATen operations dispatched inside the block, views excluded."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.n += 1
        return func(*args, **(kwargs or {}))


def ops_per_call(fn) -> int:
    with _OpCount() as count:
        fn()
    return count.n


def measure(shape: tuple[int, int, int], device: torch.device,
            runs: int) -> list[tuple[str, float, int]]:
    c, h, w = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, c * h * w, generator=gen).to(device)  # (B, C*H*W)
    y = torch.randint(0, 10, (128,), generator=gen).to(device)
    rows = []

    def augment(specs) -> tuple[float, int]:
        aug = build_augment(specs, start=0, shape=shape, task="multiclass", n_classes=10, seed=0,
                            device=device)
        return median_ms(lambda: aug(x, y), runs, device), ops_per_call(lambda: aug(x, y))

    for name in AUGMENTATIONS.names():
        kwargs = {"saturation": 0.2} if name == "color_jitter" and c == 3 else {}
        rows.append((name, *augment([(name, kwargs)])))
    rows.append(("pipeline: " + " · ".join(n for n, _ in PIPELINE), *augment(PIPELINE)))
    torch.manual_seed(0)
    model = cnn(shape, 10).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rows.append(("yardstick: one training step of the default cnn", median_ms(step, runs, device),
                 ops_per_call(step)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.processor() or platform.machine()}, "
                  f"{torch.get_num_threads()} threads")
    lines = [f"torch {torch.__version__} on {device.type} ({where}); batch of 128, median of "
             f"{args.runs} calls.\n\n"]
    for shape in ((1, 28, 28), (3, 32, 32)):
        rows = measure(shape, device, args.runs)
        step = rows[-1][1]
        lines.append(f"\n| {shape[0]}x{shape[1]}x{shape[2]} | ms / batch | x one step "
                     "| tensor ops / batch |\n|---|---:|---:|---:|\n")
        lines += [f"| {name} | {ms:.3f} | {ms / step:.2f} | {ops} |\n" for name, ms, ops in rows]
    text = "".join(lines)
    print(text)
    if args.write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _results import write_section

        write_section(f"bench_augment_{device.type}", f"Augmentation overhead ({device.type})",
                      text)


if __name__ == "__main__":
    main()
