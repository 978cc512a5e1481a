"""Split nested training state into JSON and tensors (safetensors), and join it back.

Optimizer and callback states mix tensors, numbers and int-keyed dicts. `pack` replaces
every tensor by a reference into a flat tensor dict and tags int keys, so the JSON part
stays JSON and `unpack` rebuilds an identical structure.
"""

from __future__ import annotations

from typing import Any

import torch

_TENSOR = "__tensor__"
_INT_KEYS = "__int_keys__"
_TUPLE = "__tuple__"


def pack(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Return (JSON-able structure, tensors by reference name)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().cpu().contiguous()
            return {_TENSOR: path}
        if isinstance(value, dict):
            if value and all(isinstance(k, int) for k in value):
                return {_INT_KEYS: {str(k): walk(v, f"{path}.{k}") for k, v in value.items()}}
            return {str(k): walk(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        return value

    return walk(obj, "s"), tensors


def unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `pack`."""
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        if set(obj) == {_INT_KEYS}:
            return {int(k): unpack(v, tensors) for k, v in obj[_INT_KEYS].items()}
        if set(obj) == {_TUPLE}:
            return tuple(unpack(v, tensors) for v in obj[_TUPLE])
        return {k: unpack(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    return obj
