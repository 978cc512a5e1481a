"""dlpipe: the deep-learning workflow from one declarative YAML file.

Example:
    >>> import dlpipe
    >>> result = dlpipe.run("examples/quickstart.yaml")
    >>> dlpipe.load(result.path).predict(rows).labels
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlpipe.config import PipelineConfig, load_config
from dlpipe.errors import ConfigError, DataError, DlpipeError, RunDirError, TrainingError
from dlpipe.runs import RunDir

if TYPE_CHECKING:
    from dlpipe.finetune import Finetuned
    from dlpipe.pipeline import Rerun, Result
    from dlpipe.predict import Predictor

__all__ = [
    "ConfigError", "DataError", "DlpipeError", "PipelineConfig", "RunDir", "RunDirError",
    "TrainingError", "finetune_from", "load", "load_config", "rerun", "run",
]
__version__ = "0.1.0"


def run(config: Any, **kwargs: Any) -> Result:
    """Run a pipeline; see `dlpipe.pipeline.run`."""
    from dlpipe.pipeline import run as run_pipeline

    return run_pipeline(config, **kwargs)


def load(run_dir: Any) -> Predictor:
    """Load a trained run for prediction; see `dlpipe.predict.load`."""
    from dlpipe.predict import load as load_predictor

    return load_predictor(run_dir)


def finetune_from(parent: Any, **kwargs: Any) -> Finetuned:
    """Fine-tune a trained run on new data, in a new run; see `dlpipe.pipeline.finetune`.

    (Not named `finetune`: that name is the stage's package, `dlpipe.finetune`.)
    """
    from dlpipe.pipeline import finetune

    return finetune(parent, **kwargs)


def rerun(stage: str, run_dir: Any, overrides: Any = (), **options: Any) -> Rerun:
    """Run one stage again on an existing run; see `dlpipe.pipeline.rerun`."""
    from dlpipe.pipeline import rerun as rerun_stage

    return rerun_stage(stage, run_dir, overrides, **options)
