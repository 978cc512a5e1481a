"""Imports follow the pipeline's direction (STYLE.md §5.3): a stage imports only stages before it.

The table below is the dependency rule, written once. `ast` reads every import, including the
ones inside functions, so a lazy import cannot hide an edge.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dlpipe"

# Stage → the stages it may import. `predict` is a module, not a package, but a stage all the same.
ALLOWED: dict[str, set[str]] = {
    "data": set(),
    "features": {"data"},
    "models": set(),
    "train": {"data", "features", "models"},
    "evaluate": {"data", "features", "models", "train"},
    "predict": {"data", "features", "models"},
    # tune validates every sampled config with pipeline.check and prepares a run directory
    # with pipeline.run(stages=("data", "features")) for `dlpipe tune` (lazy imports).
    "tune": {"data", "features", "models", "train", "evaluate", "pipeline"},
    # report reads the run directory only; it uses data's image decoder (a pure function of a
    # cell's bytes or path) to draw thumbnails of the worst-predicted images.
    "report": {"data"},
    "finetune": {"data", "features", "models", "train", "evaluate"},
    # export holds the ONNX helpers (export_onnx, the parity gate, ONNX Runtime sessions),
    # which compress needs to quantize and measure; the export *stage* ships compress's kept
    # variant by reading compress/ in the run directory, never by importing compress.
    "compress": {"data", "features", "models", "train", "evaluate", "export"},
    "export": {"features", "models"},
    # The server reads bundles (export's loader and predictor) and never imports training.
    "serve": {"features", "export"},
}
# Importable from anywhere; they import no stage. `metrics` is here because train logs
# validation metrics every epoch and must not import evaluate.
SHARED = {"config", "runs", "errors", "registry", "metrics", "_signature", "_prediction",
          "_running", "_csv"}
# The orchestration layer, which may import everything.
TOP = {"pipeline", "cli", "__init__", "__main__"}
# `from dlpipe import X` where X is not a module: the root re-exports the public API
# (run, load), which imports the pipeline, so a stage importing it closes a cycle.
ROOT = "dlpipe"


def module_of(path: Path) -> str:
    """`src/dlpipe/train/loop.py` → `train`; `src/dlpipe/config.py` → `config`."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def modules_in(stage: str) -> list[Path]:
    folder, file = PACKAGE / stage, PACKAGE / f"{stage}.py"
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [file] if file.is_file() else []


def dlpipe_modules_imported_by(path: Path) -> set[str]:
    """The top-level dlpipe modules the file imports (`dlpipe.train.loop` counts as `train`)."""
    package = ["dlpipe", *path.relative_to(PACKAGE).parent.parts]
    return imported_modules(path.read_text(), package)


def imported_modules(source: str, package: list[str]) -> set[str]:
    """The top-level dlpipe modules `source` imports; `package` anchors relative imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            dotted = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = [*base, *(node.module.split(".") if node.module else [])]
            # `from dlpipe import x` imports the module dlpipe.x, or a name from the root.
            at_root = module == ["dlpipe"]
            dotted = [[*module, alias.name] for alias in node.names] if at_root else [module]
        else:
            continue
        for parts in dotted:
            if parts[0] != "dlpipe" or len(parts) == 1:
                continue
            top = parts[1]
            is_module = (PACKAGE / top).is_dir() or (PACKAGE / f"{top}.py").is_file()
            found.add(top if is_module else ROOT)
    return found


def top_level_modules() -> list[str]:
    names = {p.stem for p in PACKAGE.glob("*.py")}
    names |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    return sorted(names)


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_stage_imports_only_the_stages_before_it(stage):
    paths = modules_in(stage)
    if not paths:
        pytest.skip(f"dlpipe.{stage} is not written yet")
    allowed = ALLOWED[stage] | SHARED | {stage}
    wrong = [
        f"{path.relative_to(PACKAGE)} imports dlpipe.{imported}"
        for path in paths
        for imported in sorted(dlpipe_modules_imported_by(path) - allowed)
    ]
    assert not wrong, f"{stage} may import only {sorted(allowed)}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("shared", sorted(SHARED))
def test_shared_modules_import_no_stage(shared):
    paths = modules_in(shared)
    if not paths:
        pytest.skip(f"dlpipe.{shared} is not written yet")
    wrong = [
        f"{path.relative_to(PACKAGE)} imports dlpipe.{imported}"
        for path in paths
        for imported in sorted(dlpipe_modules_imported_by(path) - SHARED)
    ]
    assert not wrong, f"shared modules may import only {sorted(SHARED)}:\n" + "\n".join(wrong)


def test_every_module_of_the_package_has_a_place_in_the_table():
    unplaced = set(top_level_modules()) - set(ALLOWED) - SHARED - TOP
    assert not unplaced, (
        f"add {sorted(unplaced)} to ALLOWED, SHARED or TOP in tests/test_architecture.py"
    )


def test_the_import_reader_sees_absolute_relative_and_lazy_imports():
    # The reader is the oracle of the tests above, so it gets a check of its own.
    source = """
import dlpipe.features.base
from dlpipe.models import build
from dlpipe import runs, ConfigError
from .. import evaluate
from .callbacks import Callback
import torch

def f():
    from dlpipe.predict import load
"""
    assert imported_modules(source, ["dlpipe", "train"]) == {
        "features", "models", "runs", ROOT, "evaluate", "train", "predict"
    }


def test_import_dlpipe_loads_no_optional_or_export_modules():
    heavy = ["onnxruntime", "onnx", "onnxscript", "torch.onnx", "optuna", "fastapi", "matplotlib"]
    code = f"import sys, dlpipe; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]", f"`import dlpipe` imported {result.stdout.strip()}"
