"""Helpers shared by tests: small configs on bundled or generated data."""

from __future__ import annotations

import copy
from typing import Any


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
