"""Structured pruning of a `cnn`: remove whole output channels of its plain conv blocks.

A plain block is Conv2d → (BatchNorm2d) → activation → (pooling) → (dropout). Removing
output channel `c` removes row `c` of the conv's weight and bias, entry `c` of every batch
norm buffer and parameter, and the matching input of what reads the block: input channel `c`
of the next conv, or, after the last block, the `H' × W'` columns of channel `c` in the first
dense layer (flatten) or its column `c` (global average pooling). The pruned network is again
a `cnn` with fewer `channels` in its blocks, so model.json + weights rebuild it.

Residual blocks keep their widths (their skip ties input and output channels), and so does
a plain block whose output a residual block reads.

Example:
    >>> small, small_spec = shrink_cnn(model, spec, 0.5)
    >>> [b["channels"] for b in small_spec["kwargs"]["blocks"]]   # was [32, 64]
    [16, 32]
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from dlpipe.compress.prune import make_permanent
from dlpipe.models.cnn import TUTORIAL
from dlpipe.models.spec import build_from_spec

__all__ = ["cnn_support", "shrink_cnn"]


def cnn_support(spec: dict[str, Any]) -> str | None:
    """Why `shrink_cnn` cannot shrink this `cnn` spec, or None when it can."""
    kwargs = spec.get("kwargs", {})
    blocks = list(kwargs.get("blocks", TUTORIAL))
    if not any(_shrinkable(blocks, i, kwargs.get("residual", False))
               for i in range(len(blocks))):
        return ("every conv block of the cnn is residual or feeds a residual block, whose "
                "skip ties the channels; none can shrink")
    return None


def shrink_cnn(model: nn.Module, spec: dict[str, Any], amount: float
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Remove `amount` of each shrinkable block's output channels, those of smallest L1 norm.

    Args:
        model: a network built by the `cnn` builder (see `cnn_support`).
        spec: its model.json spec.
        amount: fraction of each plain block's channels to remove (at least one is kept).

    Returns:
        (a new, smaller `cnn` with the surviving weights; its spec with the new channels).
    """
    model = make_permanent(copy.deepcopy(model)).eval()
    kwargs = spec.get("kwargs", {})
    blocks = [dict(b) for b in kwargs.get("blocks", TUTORIAL)]
    residual = kwargs.get("residual", False)
    old_blocks = list(model.encoder.blocks)
    keep: list[torch.Tensor | None] = []
    for i, block in enumerate(old_blocks):
        if not _shrinkable(blocks, i, residual):
            keep.append(None)
            continue
        conv = block[0]
        k = max(1, round(conv.out_channels * (1 - amount)))
        score = conv.weight.detach().abs().sum(dim=(1, 2, 3))  # (out_channels,)
        keep.append(torch.sort(torch.topk(score, k).indices).values)
        blocks[i]["channels"] = k
    new_spec = copy.deepcopy(spec)
    new_spec["kwargs"] = {**kwargs, "blocks": blocks}
    new = build_from_spec(new_spec).eval()
    with torch.no_grad():
        columns: torch.Tensor | None = None  # input channels kept by the previous block
        for old, fresh, rows in zip(old_blocks, new.encoder.blocks, keep, strict=True):
            if rows is None:
                fresh.load_state_dict(old.state_dict())
            else:
                _copy_plain(old, fresh, rows, columns)
            columns = rows
        _copy_rest(model, new, columns)
    return new, new_spec


def _shrinkable(blocks: list[Any], i: int, residual: bool) -> bool:
    def is_residual(j: int) -> bool:
        flag = dict(blocks[j]).get("residual")
        return residual if flag is None else bool(flag)

    return not is_residual(i) and (i + 1 == len(blocks) or not is_residual(i + 1))


def _copy_plain(old: nn.Sequential, new: nn.Sequential, rows: torch.Tensor,
                columns: torch.Tensor | None) -> None:
    """Copy a plain block keeping output channels `rows` and input channels `columns`."""
    weight = old[0].weight.detach()[rows]  # (k, in, kh, kw)
    new[0].weight.copy_(weight if columns is None else weight[:, columns])
    if old[0].bias is not None:
        new[0].bias.copy_(old[0].bias.detach()[rows])
    if isinstance(old[1], nn.BatchNorm2d):
        for name, tensor in old[1].state_dict().items():
            new[1].state_dict()[name].copy_(tensor[rows] if tensor.ndim == 1 else tensor)


def _copy_rest(old: nn.Module, new: nn.Module, columns: torch.Tensor | None) -> None:
    """Copy the dense layers and head; the first reads only the last block's kept channels."""
    layers = [name for name, _ in old.named_children() if name != "encoder"]
    for position, name in enumerate(layers):
        old_part, new_part = getattr(old, name), getattr(new, name)
        if position or columns is None:
            new_part.load_state_dict(old_part.state_dict())
            continue
        linear_old = old_part[0] if isinstance(old_part, nn.Sequential) else old_part
        linear_new = new_part[0] if isinstance(new_part, nn.Sequential) else new_part
        if old.encoder.pool == "avg":
            index = columns
        else:  # flatten: channel c owns columns c*H*W ... (c+1)*H*W - 1
            area = old.encoder.out_shape[1] * old.encoder.out_shape[2]
            index = (columns.view(-1, 1) * area + torch.arange(area).view(1, -1)).reshape(-1)
        linear_new.weight.copy_(linear_old.weight.detach()[:, index])
        if linear_old.bias is not None:
            linear_new.bias.copy_(linear_old.bias.detach())
