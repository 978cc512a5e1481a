"""What a model's output means for each task: its width, and how it turns into scores.

Models end in raw outputs (logits, or values for regression); these two functions are the
single place that maps them to probabilities, so train, evaluate and predict agree.
"""

from __future__ import annotations

import torch


def output_size(task: str, n_classes: int) -> int:
    """Width of the model's last layer: one logit for binary, K for multiclass, 1 value."""
    return n_classes if task == "multiclass" else 1


def to_scores(task: str, outputs: torch.Tensor) -> torch.Tensor:
    """Map raw outputs to scores.

    Args:
        task: ``binary``, ``multiclass`` or ``regression``.
        outputs: (N, out) raw model outputs.

    Returns:
        binary: (N,) probability of the positive class; multiclass: (N, K) probabilities;
        regression: (N,) predicted values (still on the training scale of the target).
    """
    if task == "binary":
        return torch.sigmoid(outputs.float()).reshape(-1)
    if task == "multiclass":
        return torch.softmax(outputs.float(), dim=-1)
    return outputs.float().reshape(-1)
