"""The finetune stage: adapt a trained run to new data, in a new run linked to its parent.

    dlpipe finetune runs/bc --data new_rows.csv --set finetune.freeze=all_but_head
    result = dlpipe.finetune_from("runs/bc", data=frame, overrides=["finetune.epochs=3"])
    result.before["test"]["accuracy"], result.after["test"]["accuracy"], result.path

The new run's config is its parent's with the new data source and a `finetune` section that
names the parent with its hashes (`finetune_config`). `dlpipe run` on that config runs the
data stage on the new source (checked against the parent: `check_compatible`), then this
stage in place of features and train: the parent's preprocessing (copied, or refitted on
request) and weights, frozen by `finetune.freeze`, trained at a lower learning rate for few
epochs, with optional gradual unfreezing; then evaluate and any later stage the config has.
It writes what `train` writes, features.json, and finetune.json: the new data's val/test
metrics of the parent as it is (`before`) and fine-tuned (`after`), and what was frozen.

`dlpipe/__init__.py` imports this package so that `dlpipe.finetune_from(...)` is callable, so
nothing heavy is imported here at module level; the stage's body lives in `_stage.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlpipe.finetune._parent import (
    check_compatible,
    finetune_config,
    open_parent,
    parent_hashes,
    parent_lr,
)
from dlpipe.runs import RunDir

if TYPE_CHECKING:
    import pandas as pd

    from dlpipe.config import PipelineConfig
    from dlpipe.finetune._freeze import Block, FreezePlan, Freezing, blocks_of, freeze_plan
    from dlpipe.train import Callback, Trained

__all__ = [
    "Block", "FreezePlan", "Finetuned", "Freezing", "blocks_of", "check_compatible",
    "check_parent", "finetune_config", "freeze_plan", "open_parent", "parent_hashes",
    "parent_lr", "run",
]

_LAZY = {"Block", "FreezePlan", "Freezing", "blocks_of", "freeze_plan"}


@dataclass
class Finetuned:
    """What `dlpipe.finetune` returns: the new run and how the new data fared on it."""

    rundir: RunDir
    metrics: dict[str, Any]
    """metrics.json of the new run: the fine-tuned network on the new val/test splits."""

    history: list[dict[str, Any]]
    report: dict[str, Any]
    """finetune.json: the parent, `before`, `after`, the frozen names, unfreezing."""

    @property
    def path(self) -> Path:
        return self.rundir.path

    @property
    def before(self) -> dict[str, Any]:
        """The parent network, as it is, on the new data: ``{"val": {...}, "test": {...}}``."""
        return self.report["before"]

    @property
    def after(self) -> dict[str, Any]:
        """The fine-tuned network on the new data: ``{"val": {...}, "test": {...}}``."""
        return self.report["after"]


def run(cfg: PipelineConfig, rundir: RunDir, *, callbacks: Sequence[Callback] = ()) -> Trained:
    """Fine-tune the parent named by `cfg.finetune` on `rundir`'s splits and write the results.

    Args:
        callbacks: extra training callbacks, called after dlpipe's own.
    """
    from dlpipe.finetune._stage import run as run_stage

    return run_stage(cfg, rundir, callbacks=callbacks)


def check_parent(cfg: PipelineConfig, schema: dict[str, Any] | None = None,
                 train: pd.DataFrame | None = None) -> None:
    """Check, before any training, that `cfg` can fine-tune its parent on this data.

    The parent is a trained run that has not changed since, the model section is its
    parent's, the freeze patterns match, the new data (its `schema` and `train` split) fits
    the parent's network and preprocessing.

    Raises:
        ConfigError, DataError, RunDirError: naming the field, the column or the file.
    """
    from dlpipe.finetune._stage import check_parent as check

    check(cfg, schema, train)


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # torch-backed: imported on first use, see the module docstring
        from dlpipe.finetune import _freeze

        return getattr(_freeze, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
