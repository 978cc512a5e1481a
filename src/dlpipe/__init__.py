"""dlpipe: the deep-learning workflow from one declarative YAML file."""

from dlpipe.errors import ConfigError, DataError, DlpipeError, RunDirError, TrainingError

__all__ = ["ConfigError", "DataError", "DlpipeError", "RunDirError", "TrainingError"]
__version__ = "0.1.0"
