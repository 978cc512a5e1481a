"""Images and text on CPU: dlpipe against hand-written PyTorch loops over the same tensors.

Three parts in one process. Within a part the ways are interleaved repeat by repeat, each
with the same network, optimizer, batch size, threads and seed, validating once per epoch:

  images   synthetic 28x28 grayscale images (`synthetic_images`: 1-5 horizontal or vertical
           bars give 10 classes; shift, length, width, brightness and noise vary), 20,000
           training images, batch 128, the tutorial CNN (Conv(32,3)-MaxPool-Conv(64,3)-
           MaxPool-Flatten-Dense(64)-Dropout(0.5)-Dense(10)), Adam 1e-3, `--epochs` (1)
           epoch a repeat: images/s of
             yardstick            the hand-written loop: shuffled index slices of pre-built
                                  tensors
             dlpipe fit           `dlpipe.train.fit_arrays`
             yardstick + aug      the same loop with random crop (padding 2) then horizontal
                                  flip written by hand (vectorised torch)
             dlpipe fit + aug     `train.augment: [random_crop {padding: 2}, hflip]`
  digits   examples/digits_cnn.yaml as it is (scikit-learn's digits at 16x16, the tutorial
           CNN, AdamW 2e-3, batch 64, random crop + rotation, early stopping on val
           accuracy, patience 10, best weights kept) against the same recipe by hand: test
           accuracy and s / epoch.
  text     the tutorial BiLSTM (Embedding(V,64)-Bidirectional(LSTM(64))-Dense(64)-
           Dropout(0.2)-Dense(1)), `model: {name: rnn, bidirectional: true}`, on the builtin
           `reviews` (4,000 reviews, 70/15/15 split), Adam 1e-3, batch 32, `--text-epochs`:
           dlpipe against the same network in a hand-written loop over the same token
           tensors (packed sequences, as dlpipe trains) and a bag-of-words baseline
           (CountVectorizer unigrams + LogisticRegression on the same train/test rows, read
           from the run's data/*.parquet): test accuracy and training samples/s.

A way's time is its whole call (dlpipe's includes building the model and copying the arrays
to tensors, as a user waits for them) divided by the epochs it ran; images/s and samples/s
are training rows per second of that time, validation included. Ratios are dlpipe's time
over its yardstick's, medians against medians and bests against bests of the same run.

One thread by default: on a shared 2-core machine, two threads per op wait for a core the
other processes hold, and the same step then takes 1x to 5x as long from one call to the next
(measured); one thread gives stable ratios. Use --threads 2 on an idle machine.

Usage: python benchmarks/bench_media.py [--parts images digits text] [--images 20000]
       [--epochs 1] [--repeats 3] [--text-epochs 8] [--threads 1] [--no-write]
Prints the tables and rewrites its section of benchmarks/RESULTS.md (with --no-write, or
when not every part ran, it only prints).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import dlpipe
from dlpipe import train
from dlpipe.features import load as load_features
from dlpipe.models import build as build_model
from dlpipe.models.heads import output_size
from dlpipe.pipeline import load_run_config
from dlpipe.train.callbacks import Callback

sys.path.insert(0, str(Path(__file__).parent))
from _results import write_section

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("images", "digits", "text")
AUGMENT = "train.augment=[{name: random_crop, padding: 2}, {name: hflip}]"
TARGET = 1.10  # dlpipe's time over the yardstick's


# -- data --------------------------------------------------------------------------------------


def synthetic_images(n: int, *, seed: int = 0, size: int = 28,
                     channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Images a CNN can learn: class k shows k // 2 + 1 bars, vertical when k is odd.

    Each image gets its own shift (±2 px at 28), bar width, bar length and start, brightness
    (60 to 200) and heavy Gaussian noise (sd 80 of 255), so one epoch over 5,000 images
    reaches about 0.7 test accuracy, not 1. Both directions are mirror-symmetric in class, so a
    horizontal flip keeps the label. With ``channels=3`` every image gets a random tint.

    Returns:
        uint8 images (N, size, size) or (N, size, size, 3), and int64 labels (N,) in 0..9.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    count = y // 2 + 1  # (N,) bars
    px = size / 28
    axis = np.arange(size, dtype=np.float32)
    centres = ((np.arange(5) + 1) * (size / (count[:, None] + 1))
               + rng.uniform(-2, 2, (n, 1)) * px)  # (N, 5); bars past `count` are masked
    width = rng.uniform(0.6, 1.2, (n, 1, 1)) * px
    bars = np.exp(-(axis - centres[:, :, None]) ** 2 / (2 * width ** 2))  # (N, 5, S)
    profile = np.where(np.arange(5)[None, :, None] < count[:, None, None], bars, 0).max(1)
    start = rng.uniform(2, 8, (n, 1)) * px
    extent = (axis >= start) & (axis <= start + rng.uniform(12, 20, (n, 1)) * px)  # (N, S)
    images = profile[:, :, None] * extent[:, None, :]  # (N, S, S): horizontal bars
    images = np.where((y % 2 == 1)[:, None, None], images.transpose(0, 2, 1), images)
    if channels == 3:
        images = images[..., None] * rng.uniform(0.3, 1.0, (n, 1, 1, 3))  # (N, S, S, 3)
    brightness = rng.uniform(60, 200, (n,) + (1,) * (images.ndim - 1))
    images = images * brightness + rng.normal(0, 80, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8), y


def prepare(config: Any, workdir: Path, name: str, overrides: Sequence[str] = (),
            data: Any = None) -> tuple[Any, Any, Any]:
    """Run the data and features stages; return (config, fitted features, run directory)."""
    result = dlpipe.run(config, run_dir=workdir / name, overrides=list(overrides), data=data,
                        stages=("data", "features"))
    return load_run_config(result.rundir), load_features(result.rundir), result.rundir


def arrays(fitted: Any, rundir: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The model inputs and targets of each split, as dlpipe's train stage builds them."""
    return {split: fitted.arrays(rundir.read_split(split)) for split in ("train", "val", "test")}


def as_tensors(xy: tuple[np.ndarray, np.ndarray], task: str,
               device: str | torch.device = "cpu",
               ids: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) tensors as dlpipe's loop has them: float32 x (int64 token ids with `ids`);
    int64 y for multiclass, float32 otherwise (binary: one logit, BCE)."""
    x, y = xy
    y_dtype = torch.long if task == "multiclass" else torch.float32
    return (torch.as_tensor(x, dtype=torch.long if ids else torch.float32, device=device),
            torch.as_tensor(y, dtype=y_dtype, device=device))


# -- hand-written networks ---------------------------------------------------------------------


def tutorial_cnn(in_shape: Sequence[int], n_out: int, *, hidden: int = 64,
                 dropout: float = 0.5) -> nn.Module:
    """Conv(32,3)-MaxPool-Conv(64,3)-MaxPool-Flatten-Dense(hidden)-Dropout-Dense(n_out)."""
    c, h, w = in_shape
    side_h, side_w = ((h - 2) // 2 - 2) // 2, ((w - 2) // 2 - 2) // 2
    return nn.Sequential(
        nn.Unflatten(1, (c, h, w)),
        nn.Conv2d(c, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * side_h * side_w, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, n_out),
    )


class BiLSTM(nn.Module):
    """Embedding(V,64)-Bidirectional(LSTM(64))-Dense(64)-Dropout(0.2)-Dense(1) over int64
    right-padded ids (0 = padding); each text runs packed, over its own tokens only."""

    def __init__(self, vocab_size: int, n_out: int = 1, dim: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Linear(2 * dim, 64), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Linear(64, n_out))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = ids.ne(0).sum(1).clamp(min=1)  # (B,): ids are right-padded, 0 only there
        packed = pack_padded_sequence(self.embedding(ids), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)  # (2, B, 64): forward, backward final states
        return self.head(torch.cat([h_n[0], h_n[1]], dim=1))  # (B, n_out)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_same_size(hand: nn.Module, cfg: Any, fitted: Any, what: str) -> None:
    """Fail loudly when the yardstick's network is not the one dlpipe builds for `cfg`.

    Raises:
        SystemExit: the parameter counts differ (e.g. the `cnn` default changed).
    """
    n_out = output_size(fitted.task, len(fitted.target.classes_))
    ours = build_model(cfg.model.name, 0, n_out, layout=fitted.layout, kwargs=cfg.model.kwargs)
    if n_params(hand) != n_params(ours):
        raise SystemExit(f"{what}: the hand-written network has {n_params(hand):,} parameters, "
                         f"dlpipe's {n_params(ours):,}; the comparison would be unfair")


# -- hand-written augmentation (vectorised, whole batches) -------------------------------------


def hand_crop(images: torch.Tensor, g: torch.Generator, padding: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) by `padding`, cut an H x W window at a random offset per image."""
    b, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)  # (B, C, H+2p, W+2p)
    top, left = torch.randint(0, 2 * padding + 1, (2, b, 1), generator=g, device=g.device)
    rows = top + torch.arange(h, device=g.device)  # (B, H)
    cols = left + torch.arange(w, device=g.device)  # (B, W)
    flat = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).view(b, 1, h * w)
    return padded.flatten(2).gather(2, flat.expand(b, c, h * w)).view(b, c, h, w)


def hand_hflip(images: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = torch.rand(len(images), generator=g, device=g.device) < p  # (B,)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def hand_rotate(images: torch.Tensor, g: torch.Generator, degrees: float) -> torch.Tensor:
    """Rotate square (B, C, H, H) images by U(-degrees, degrees) each, bilinear, zeros out."""
    angle = torch.deg2rad((2 * torch.rand(len(images), generator=g, device=g.device) - 1)
                          * degrees)
    cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1),
                         torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def image_augment(shape: Sequence[int], ops: Sequence[Callable[..., torch.Tensor]],
                  device: str | torch.device, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A flat (B, C*H*W) batch -> an augmented new one, the `ops` applied in order."""
    g = torch.Generator(device=device).manual_seed(seed)

    def augment(x: torch.Tensor) -> torch.Tensor:
        images = x.view(-1, *shape)  # (B, C, H, W)
        for op in ops:
            images = op(images, g)
        return images.reshape(len(x), -1)

    return augment


# -- the hand-written loop (the yardstick) -----------------------------------------------------


@dataclass
class Timed:
    """One training run: the network, the seconds of the call, the epochs run, the clock
    (synchronised on CUDA) at the end of each epoch, for steady-state timing, and the test
    accuracy once measured."""

    model: nn.Module | None
    seconds: float
    epochs: int
    marks: list[float] = field(default_factory=list)
    score: float | None = None


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def loss_of(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if y.is_floating_point():  # binary: one logit per row
        return F.binary_cross_entropy_with_logits(outputs.reshape(-1), y)
    return F.cross_entropy(outputs, y)


def correct(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if y.is_floating_point():
        return (outputs.reshape(-1) > 0).float() == y
    return outputs.argmax(1) == y


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    outputs = torch.cat([model(x[i:i + 1024]) for i in range(0, len(x), 1024)])
    return float(correct(outputs, y).float().mean())


def hand_fit(build: Callable[[], nn.Module], train_xy: tuple[torch.Tensor, torch.Tensor],
             val_xy: tuple[torch.Tensor, torch.Tensor], *, epochs: int, batch_size: int,
             lr: float, seed: int, optimizer: str = "adam",
             augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
             monitor: str | None = None, patience: int | None = None,
             autocast: torch.dtype | None = None) -> Timed:
    """The plain loop: shuffled index slices of pre-built tensors, validated every epoch.

    Args:
        build: makes the network (called after seeding, so both ways start alike).
        monitor: ``val_loss`` or ``val_accuracy``: keep the best epoch's weights, and stop
            after `patience` epochs without improvement when `patience` is set.
        autocast: a dtype to run forward passes under `torch.autocast` (bf16).
    """
    x, y = train_xy
    xv, yv = val_xy
    device = x.device
    torch.manual_seed(seed)
    model = build().to(device)
    opt_class = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = opt_class(model.parameters(), lr=lr)
    g = torch.Generator(device=device).manual_seed(seed)
    best, best_state, waited, epoch = None, None, 0, 0
    marks: list[float] = []
    start = now(device)
    for epoch in range(1, epochs + 1):  # noqa: B007 (epochs run, after the loop)
        model.train()
        order = torch.randperm(len(x), generator=g, device=device)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb)
            if autocast is not None:
                with torch.autocast(device.type, dtype=autocast):
                    loss = loss_of(model(xb), yb)
            else:
                loss = loss_of(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            out = torch.cat([model(xv[i:i + 1024]) for i in range(0, len(xv), 1024)])
            metrics = {"val_loss": float(loss_of(out, yv)),
                       "val_accuracy": float(correct(out, yv).float().mean())}
        marks.append(now(device))
        if monitor is not None:
            value = metrics[monitor] * (-1 if monitor == "val_accuracy" else 1)
            if best is None or value < best:
                best, waited = value, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                waited += 1
                if patience is not None and waited >= patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    return Timed(model.eval(), marks[-1] - start, epoch, marks)


class EpochClock(Callback):
    """Records the clock (synchronised on CUDA) at the end of each of dlpipe's epochs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: list[float] = []

    def on_epoch_end(self, state: Any, metrics: dict[str, float]) -> None:
        self.marks.append(now(self.device))


def dlpipe_fit(cfg: Any, fitted: Any, data: dict[str, tuple[np.ndarray, np.ndarray]],
               device: torch.device = torch.device("cpu")) -> Timed:
    """`dlpipe.train.fit_arrays` on the prepared arrays, timed as a whole and per epoch."""
    clock = EpochClock(device)
    start = now(device)
    trained = train.fit_arrays(cfg, fitted, data["train"], data["val"], callbacks=[clock])
    seconds = now(device) - start
    return Timed(trained.model, seconds, trained.summary["epochs_run"], clock.marks)


# -- running and reporting ---------------------------------------------------------------------

Way = tuple[Callable[[], Timed], str | None]
"""How to run a way (returning a scored `Timed`), and the name of its yardstick (or None)."""


def scored(timed: Timed, test: tuple[torch.Tensor, torch.Tensor]) -> Timed:
    """`timed` with its network's accuracy on `test`."""
    assert timed.model is not None
    timed.score = accuracy(timed.model, *test)
    return timed


def run_ways(ways: dict[str, Way], repeats: int) -> dict[str, dict[str, Any]]:
    """Run every way `repeats` times, interleaved so drift in the machine hits all alike.

    Returns:
        Per way: ``times`` (s / epoch of each repeat), ``base`` (its yardstick's name),
        ``epochs`` and ``accuracy`` (of the last repeat).
    """
    rows: dict[str, dict[str, Any]] = {name: {"times": [], "base": base}
                                       for name, (_, base) in ways.items()}
    for _ in range(repeats):
        for name, (way, _) in ways.items():
            timed = way()
            rows[name]["times"].append(timed.seconds / timed.epochs)
            rows[name].update(epochs=timed.epochs, accuracy=timed.score)
    for name, row in rows.items():  # every repeat, to judge the noise of a shared machine
        print(f"  {name}: s / epoch " + ", ".join(f"{t:.3f}" for t in row["times"]), flush=True)
    return rows


def ratio_of(rows: dict[str, dict[str, Any]], name: str, pick: Callable = statistics.median
             ) -> float:
    """`name`'s time over its yardstick's (both medians, or both bests with ``pick=min``)."""
    return pick(rows[name]["times"]) / pick(rows[rows[name]["base"]]["times"])


def verdict(ratio: float) -> str:
    return "met" if ratio <= TARGET else "NOT met"


def speed_table(title: str, unit: str, rows: dict[str, dict[str, Any]], repeats: int,
                per_epoch: int) -> str:
    """A markdown table: rows/s and s / epoch (median and best), ratios, epochs, accuracy."""
    lines = [f"| {title} | {unit}/s, median of {repeats} | s / epoch | ratio | {unit}/s, "
             f"best of {repeats} | s / epoch | ratio | epochs | test accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        median, best = statistics.median(row["times"]), min(row["times"])
        ratio_m = f"{ratio_of(rows, name):.2f}×" if row["base"] else "—"
        ratio_b = f"{ratio_of(rows, name, min):.2f}×" if row["base"] else "—"
        lines.append(f"| {name} | {per_epoch / median:,.0f} | {median:.3f} | {ratio_m} | "
                     f"{per_epoch / best:,.0f} | {best:.3f} | {ratio_b} | {row['epochs']} | "
                     f"{row['accuracy']:.4f} |")
    return "\n".join(lines)


# -- the three parts ---------------------------------------------------------------------------


def bench_images(args: argparse.Namespace, workdir: Path) -> str:
    """Part a: images/s of the tutorial CNN, augmentation off and on."""
    X, y = synthetic_images(args.images * 5 // 4, seed=0)  # 80% train, 10% val, 10% test
    config = {"data": {"split": {"val": 0.1, "test": 0.1}}, "model": {"name": "cnn"},
              "train": {"epochs": args.epochs, "batch_size": 128,
                        "optimizer": {"name": "adam", "lr": 1e-3}, "threads": args.threads,
                        "progress": "auto"}}
    cfg, fitted, rundir = prepare(config, workdir, "images", data=(X, y))
    cfg_aug = load_run_config(rundir, [AUGMENT])
    data = arrays(fitted, rundir)
    train_xy, val, test = (as_tensors(data[s], fitted.task) for s in ("train", "val", "test"))
    shape = tuple(fitted.layout[0]["shape"])
    check_same_size(tutorial_cnn(shape, 10), cfg, fitted, "images")
    ops = [lambda im, g: hand_crop(im, g, 2), hand_hflip]

    def hand(aug: bool) -> Timed:
        augment = image_augment(shape, ops, "cpu", cfg.seed) if aug else None
        return scored(hand_fit(lambda: tutorial_cnn(shape, 10), train_xy, val,
                               epochs=args.epochs, batch_size=128, lr=1e-3, seed=cfg.seed,
                               augment=augment), test)

    plain, with_aug = "yardstick (hand-written loop)", "yardstick + hand-written crop/flip"
    ways: dict[str, Way] = {
        plain: (lambda: hand(False), None),
        "dlpipe fit": (lambda: scored(dlpipe_fit(cfg, fitted, data), test), plain),
        with_aug: (lambda: hand(True), None),
        "dlpipe fit + train.augment": (lambda: scored(dlpipe_fit(cfg_aug, fitted, data), test),
                                       with_aug),
    }
    rows = run_ways(ways, args.repeats)
    table = speed_table("images: way", "images", rows, args.repeats, len(train_xy[0]))
    off, on = ratio_of(rows, "dlpipe fit"), ratio_of(rows, "dlpipe fit + train.augment")
    cost = statistics.median(rows[with_aug]["times"]) / statistics.median(rows[plain]["times"])
    summary = (f"dlpipe / yardstick time, medians: augmentation off {off:.2f}×, on {on:.2f}× "
               f"(target ≤ {TARGET:.2f}×: {verdict(off)} / {verdict(on)}). The hand-written "
               f"crop + flip adds {cost - 1:+.1%} to a plain epoch.")
    env = (f"{len(train_xy[0]):,} training images 1x28x28 (synthetic bars, 10 classes), "
           f"{len(val[0]):,} validated and {len(test[0]):,} tested, batch 128, Adam 1e-3, "
           f"{args.epochs} epoch(s) a repeat, the tutorial CNN "
           f"({n_params(tutorial_cnn(shape, 10)):,} parameters)")
    return f"### Images: throughput\n\n{env}.\n\n{table}\n\n{summary}\n"


def bench_digits(args: argparse.Namespace, workdir: Path) -> str:
    """Part b: examples/digits_cnn.yaml against the same recipe by hand."""
    cfg, fitted, rundir = prepare(ROOT / "examples" / "digits_cnn.yaml", workdir, "digits",
                                  [f"train.threads={args.threads}", "train.progress=auto"])
    data = arrays(fitted, rundir)
    train_xy, val, test = (as_tensors(data[s], fitted.task) for s in ("train", "val", "test"))
    shape = tuple(fitted.layout[0]["shape"])
    n_classes = len(fitted.target.classes_)
    check_same_size(tutorial_cnn(shape, n_classes), cfg, fitted, "digits")
    tc, es = cfg.train, cfg.train.early_stopping
    ops = [lambda im, g: hand_crop(im, g, 1), lambda im, g: hand_rotate(im, g, 10.0)]

    def hand() -> Timed:
        return scored(hand_fit(
            lambda: tutorial_cnn(shape, n_classes), train_xy, val, epochs=tc.epochs,
            batch_size=tc.batch_size, lr=tc.optimizer.kwargs["lr"], seed=cfg.seed,
            optimizer="adamw", augment=image_augment(shape, ops, "cpu", cfg.seed),
            monitor=es.monitor, patience=es.patience), test)

    base = "hand-written loop (same recipe)"
    ways: dict[str, Way] = {
        base: (hand, None),
        "dlpipe fit (digits_cnn.yaml)": (lambda: scored(dlpipe_fit(cfg, fitted, data), test),
                                         base),
    }
    rows = run_ways(ways, args.repeats)
    table = speed_table("digits: way", "images", rows, args.repeats, len(train_xy[0]))
    env = (f"examples/digits_cnn.yaml: {len(train_xy[0]):,} training images 1x16x16, "
           f"{len(test[0]):,} test images, AdamW 2e-3 (the hand loop decays every parameter, "
           f"dlpipe weights only), batch {tc.batch_size}, random crop (padding 1) + rotation "
           f"(10°), up to {tc.epochs} epochs with early stopping on val accuracy (patience "
           f"{es.patience}), best weights kept; epochs: run in the last repeat")
    return f"### Digits: the digits_cnn example\n\n{env}.\n\n{table}\n"


def bench_text(args: argparse.Namespace, workdir: Path) -> str:
    """Part c: the tutorial BiLSTM on `reviews` against a bag of words and a hand loop."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    config = {"data": {"source": {"builtin": "reviews"}},
              "model": {"name": "rnn", "bidirectional": True},
              "train": {"epochs": args.text_epochs, "batch_size": 32,
                        "optimizer": {"name": "adam", "lr": 1e-3}, "threads": args.threads,
                        "progress": "auto"}}
    cfg, fitted, rundir = prepare(config, workdir, "text")
    data = arrays(fitted, rundir)
    train_ids, val_ids, test_ids = (as_tensors(data[s], fitted.task, ids=True)
                                    for s in ("train", "val", "test"))
    test = as_tensors(data["test"], fitted.task)  # float ids: dlpipe's model input
    block = next(b for b in fitted.layout if b["kind"] == "text")
    check_same_size(BiLSTM(block["vocab_size"]), cfg, fitted, "text")
    target = cfg.data.target
    frames = {s: rundir.read_split(s) for s in ("train", "test")}  # the same rows, raw text

    def bag_of_words() -> Timed:
        start = time.perf_counter()
        vectorizer = CountVectorizer(ngram_range=(1, 1))
        counts = vectorizer.fit_transform(frames["train"][block["name"]])
        model = LogisticRegression(max_iter=1000).fit(counts, frames["train"][target])
        seconds = time.perf_counter() - start
        score = model.score(vectorizer.transform(frames["test"][block["name"]]),
                            frames["test"][target])
        return Timed(None, seconds, 1, score=float(score))

    def hand() -> Timed:
        return scored(hand_fit(lambda: BiLSTM(block["vocab_size"]), train_ids, val_ids,
                               epochs=cfg.train.epochs, batch_size=32, lr=1e-3, seed=cfg.seed,
                               monitor="val_loss"), test_ids)

    base, bow = "hand-written BiLSTM loop", "bag of words (CountVectorizer + LogisticRegression)"
    ways: dict[str, Way] = {
        bow: (bag_of_words, None),
        base: (hand, None),
        "dlpipe fit (rnn, bidirectional)": (lambda: scored(dlpipe_fit(cfg, fitted, data), test),
                                            base),
    }
    rows = run_ways(ways, args.repeats)
    rows[bow]["epochs"] = "one fit"
    table = speed_table("text: way", "samples", rows, args.repeats, len(train_ids[0]))
    env = (f"builtin reviews: {len(train_ids[0]):,} training, {len(val_ids[0]):,} validation "
           f"and {len(test_ids[0]):,} test reviews, {block['vocab_size']:,} token ids, "
           f"{block['length']} tokens a review; BiLSTM "
           f"({n_params(BiLSTM(block['vocab_size'])):,} parameters): Adam 1e-3, batch 32, "
           f"{cfg.train.epochs} epochs, the weights of the best val loss kept (dlpipe's "
           f"default; by hand in the loop); the bag of words' s / epoch is its whole fit")
    return f"### Text: BiLSTM on reviews\n\n{env}.\n\n{table}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--images", type=int, default=20000, help="training images (part a)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs a repeat (part a)")
    parser.add_argument("--text-epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    benches = {"images": bench_images, "digits": bench_digits, "text": bench_text}
    workdir = Path(tempfile.mkdtemp(prefix="dlpipe-bench-media-"))
    load_start = os.getloadavg()[0]
    sections = []
    try:
        for part in args.parts:
            start = time.perf_counter()
            sections.append(benches[part](args, workdir))
            print(sections[-1], f"({part}: {time.perf_counter() - start:.0f} s)\n", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    cpu = platform.processor() or platform.machine()
    env = (f"torch {torch.__version__}, {args.threads} thread(s), {cpu}, load average "
           f"{load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (a shared "
           f"machine), {args.repeats} interleaved repeats; ratio: dlpipe's s / epoch over its "
           f"yardstick's (median over median, best over best); rows/s: training rows over "
           f"the whole epoch, validation included")
    print(env)
    if args.no_write or set(args.parts) != set(PARTS):
        return
    write_section("bench_media", "Images and text on CPU (`python benchmarks/bench_media.py`)",
                  f"{env}.\n\n" + "\n".join(sections))


if __name__ == "__main__":
    main()
