"""Rebuild a trained network from its model.json spec (written by the train stage)."""

from __future__ import annotations

from typing import Any

from torch import nn

from dlpipe import runs
from dlpipe.models import tabular_layout
from dlpipe.runs import RunDir


def spec_of(name: str, kwargs: dict[str, Any], *, init: str | None, in_features: int,
            out_features: int, cardinalities: list[int], task: str,
            layout: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON document that, with the weights, is enough to rebuild the network."""
    return {"name": name, "kwargs": kwargs, "init": init, "in_features": in_features,
            "out_features": out_features, "cardinalities": list(cardinalities), "task": task,
            "layout": layout if layout is not None else tabular_layout(in_features,
                                                                       cardinalities)}


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """A fresh network with the architecture of `spec` (weights still to be loaded)."""
    from dlpipe.models import build

    return build(spec["name"], spec["in_features"], spec["out_features"],
                 cardinalities=spec["cardinalities"], layout=spec.get("layout"), init=None,
                 kwargs=spec["kwargs"])


def load_network(rundir: RunDir) -> nn.Module:
    """The trained network of a run directory (model.json + weights.safetensors), in eval mode."""
    model = build_from_spec(rundir.read_json(runs.MODEL))
    model.load_state_dict(rundir.read_tensors(runs.WEIGHTS))
    return model.eval()
