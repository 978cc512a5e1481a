"""Helpers shared by tests: small configs on bundled or generated data."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TESTS = Path(__file__).resolve().parent


def minimal_config(**sections: Any) -> dict[str, Any]:
    """A small, fast pipeline config as a dict; keyword arguments replace whole sections."""
    base: dict[str, Any] = {
        "name": "tiny",
        "data": {
            "source": {"builtin": "make_classification",
                       "params": {"n_samples": 400, "n_features": 8, "random_state": 0}},
            "split": {"val": 0.2, "test": 0.2},
        },
        "model": {"name": "mlp", "hidden": [16]},
        "train": {"epochs": 3, "batch_size": 32, "progress": "never"},
        # Plotting the report takes ~4 s a run; tests of the report turn it back on.
        "report": {"enabled": False},
    }
    for key, value in sections.items():
        base[key] = copy.deepcopy(value)
    return base


# -- tiny model inputs of every kind, for the tests that run over every registered model ------

N_NUMERIC = 4
IMAGE_SHAPE = (1, 12, 12)  # big enough for the tutorial CNN: 12 → 10 → 5 → 3 → 1
VOCAB, LENGTH = 20, 6


def input_kind(name: str) -> str:
    """What the registered model `name` reads: `tabular`, `image`, `text` or `layout`."""
    import inspect

    from dlpipe.models import MODELS

    first = next(iter(inspect.signature(MODELS.get(name)).parameters))
    return {"in_shape": "image", "vocab_size": "text", "layout": "layout"}.get(first, "tabular")


def tiny_layout(kind: str, cardinalities: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """A small input layout (features.json `layout`) for a model that reads `kind`."""
    tabular = {"name": "tabular", "kind": "tabular", "width": N_NUMERIC + len(cardinalities),
               "n_numeric": N_NUMERIC, "cardinalities": list(cardinalities)}
    text = {"name": "review", "kind": "text", "width": LENGTH, "vocab_size": VOCAB,
            "length": LENGTH}
    image = {"name": "image", "kind": "image", "width": 144, "shape": list(IMAGE_SHAPE)}
    blocks = {"tabular": [tabular], "image": [image], "text": [text],
              "layout": [tabular, text, image]}[kind]
    start, out = 0, []
    for block in blocks:
        out.append({**block, "start": start})
        start += block["width"]
    return out


def tiny_input(layout: list[dict[str, Any]], batch: int = 8, seed: int = 0) -> Any:
    """A float32 (batch, F) input laid out as `layout`: numbers, indices, token ids with
    trailing padding (at least one token per row), pixels."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    parts = []
    for block in layout:
        if block["kind"] == "tabular":
            parts.append(torch.randn(batch, block["n_numeric"], generator=gen))
            parts += [torch.randint(0, c, (batch, 1), generator=gen).float()
                      for c in block["cardinalities"]]
        elif block["kind"] == "text":
            ids = torch.randint(2, block["vocab_size"], (batch, block["length"]), generator=gen)
            lengths = torch.randint(1, block["length"] + 1, (batch, 1), generator=gen)
            ids[torch.arange(block["length"]).expand(batch, -1) >= lengths] = 0
            parts.append(ids.float())
        else:
            parts.append(torch.randn(batch, block["width"], generator=gen))
    return torch.cat(parts, dim=1)


# -- torchrun jobs of 2 CPU processes -------------------------------------------------------

# Installed into every process of a torchrun job (sitecustomize runs at interpreter start):
# logs each file that dlpipe.runs writes, with the writer's rank.
_SITECUSTOMIZE = """
import os
import dlpipe.runs as runs

_write = runs._write_synced

def _logged(path, data):
    with open(os.environ["DLPIPE_TEST_WRITES"], "a") as log:
        log.write(f"{os.environ.get('RANK', '-')}\\t{path}\\n")
    _write(path, data)

runs._write_synced = _logged
"""


@dataclass
class Job:
    """A finished torchrun job: its run directory, output and (rank, file) writes."""

    run_dir: Path
    stdout: str
    stderr: str
    writes: list[tuple[str, str]]


def torchrun(tmp: Path, config: dict, run_dir: Path, *extra: str,
             pythonpath: Sequence[Path] = ()) -> Callable[[], Job]:
    """Start `dlpipe run` on 2 CPU processes (gloo); return a function that waits for the job.

    Every process logs the files it writes through `dlpipe.runs` (see `Job.writes`);
    `pythonpath` adds folders the job imports from (a test module's loss, for example)."""
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    config_file = tmp / f"{run_dir.name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    writes, out, err = (tmp / f"{run_dir.name}.{kind}" for kind in ("writes", "out", "err"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DLPIPE_TEST_WRITES": str(writes),
           "PYTHONPATH": os.pathsep.join([str(site), *map(str, pythonpath), str(TESTS),
                                          os.environ.get("PYTHONPATH", "")])}
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
             "2", *extra, "-m", "dlpipe", "run", str(config_file), "--run-dir", str(run_dir)],
            env=env, stdout=stdout, stderr=stderr,
        )

    def wait() -> Job:
        try:
            code = proc.wait(timeout=300)
        finally:
            proc.kill()  # only if it is still running: a hung job
        job = Job(run_dir, out.read_text(), err.read_text(), [
            tuple(line.split("\t", 1))
            for line in (writes.read_text().splitlines() if writes.exists() else [])])
        assert code == 0, job.stdout[-3000:] + job.stderr[-5000:]
        return job

    return wait
