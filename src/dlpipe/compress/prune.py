"""Pruning: unstructured magnitude pruning, and structured pruning of MLP neurons and CNN
channels.

Unstructured (`magnitude_prune`) zeroes the smallest weights of every Linear, Conv1d/2d/3d
and recurrent (LSTM/GRU/RNN: every `weight_ih_l*` and `weight_hh_l*`) layer with
`torch.nn.utils.prune`, whose masks stay attached while the model is fine-tuned (so pruned
weights stay zero) until `make_permanent` folds them in. The exported file keeps its size
(dense storage); only the count of non-zero weights drops.

Structured (`shrink`) removes whole hidden neurons of an `mlp` (`shrink_mlp`: the rows of
its Linear, the entries of its norm layer, and the matching input columns of the next
layer) or whole output channels of a `cnn`'s plain conv blocks (`prune_conv.shrink_cnn`),
so the layers are physically smaller and so are the ONNX file and its latency. The pruned
network is again an `mlp` / `cnn` with narrower `hidden` / `channels`, so model.json +
weights rebuild it. Other models (rnn, textcnn, multi) are refused with the reason.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from dlpipe.models.spec import build_from_spec

__all__ = ["count_parameters", "magnitude_prune", "make_permanent", "prunable_layers",
           "shrink", "shrink_mlp", "structured_support"]

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_layers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every Linear and Conv layer's `weight` and every recurrent layer's input and hidden
    weights (`weight_ih_l0`, `weight_hh_l0_reverse`, ...); biases, norms and embeddings are
    left alone.

    Example:
        >>> [name for _, name in prunable_layers(nn.LSTM(4, 8, bidirectional=True))]
        ['weight_ih_l0', 'weight_hh_l0', 'weight_ih_l0_reverse', 'weight_hh_l0_reverse']
    """
    layers: list[tuple[nn.Module, str]] = []
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            layers.append((module, "weight"))
        elif isinstance(module, nn.RNNBase):
            # Under pruning the parameter is `<name>_orig`, but the name stays in the list.
            layers += [(module, n) for n in module._flat_weights_names if n.startswith("weight_")]
    return layers


def magnitude_prune(model: nn.Module, sparsity: float, *, scope: str = "global") -> nn.Module:
    """Mask the smallest-magnitude weights so that `sparsity` of them are zero, in place.

    Weights that are already zero have the smallest magnitude, so pruning a pruned model
    further keeps its zeros (the iterative schedule relies on this).

    Args:
        sparsity: fraction of the prunable weights to zero, in [0, 1).
        scope: ``global``: one threshold over all layers (layers that matter less lose more);
            ``layer``: every layer pruned to `sparsity`.
    """
    make_permanent(model)  # earlier masks become zeros, which this mask then includes
    layers = prunable_layers(model)
    if not layers or sparsity <= 0:
        return model
    if scope == "global":
        total = sum(getattr(m, n).numel() for m, n in layers)
        prune.global_unstructured(layers, pruning_method=prune.L1Unstructured,
                                  amount=round(sparsity * total))
    else:
        for module, name in layers:
            prune.l1_unstructured(module, name, amount=round(sparsity * getattr(module, name)
                                                             .numel()))
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into its weight and drop the masks, in place."""
    for module in model.modules():
        for name in [n.removesuffix("_orig") for n, _ in module.named_parameters(recurse=False)
                     if n.endswith("_orig")]:
            prune.remove(module, name)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters) of `model`, pruning masks applied."""
    total = nonzero = 0
    for name, param in model.named_parameters():
        tensor = param
        if name.endswith("_orig"):  # under pruning: the masked weight is the real one
            path, _, attr = name.removesuffix("_orig").rpartition(".")
            tensor = getattr(model.get_submodule(path) if path else model, attr)
        total += tensor.numel()
        nonzero += int(torch.count_nonzero(tensor))
    return total, nonzero


def structured_support(spec: dict[str, Any]) -> str | None:
    """Why structured pruning cannot shrink this model, or None when it can.

    Supported: `mlp` (hidden neurons, `shrink_mlp`) and `cnn` (conv channels of its plain
    blocks, `dlpipe.compress.prune_conv.shrink_cnn`).
    """
    if spec.get("name") == "cnn":
        from dlpipe.compress.prune_conv import cnn_support

        return cnn_support(spec)
    if spec.get("name") != "mlp":
        return (f"structured pruning supports mlp (hidden neurons) and cnn (conv channels); "
                f"model {spec.get('name')!r} is neither: its recurrent units and other layers "
                f"are not shrunk; use `prune` (unstructured) or `int8` for it")
    if not spec.get("kwargs", {}).get("hidden", [1]):
        return "the mlp has no hidden layers (`hidden: []`)"
    return None


def shrink(model: nn.Module, spec: dict[str, Any], amount: float
           ) -> tuple[nn.Module, dict[str, Any]]:
    """Structured pruning of any supported model: `shrink_mlp` or `shrink_cnn` by its name.

    Raises:
        ValueError: the model is not supported (check `structured_support` first).
    """
    if why := structured_support(spec):
        raise ValueError(why)
    if spec.get("name") == "cnn":
        from dlpipe.compress.prune_conv import shrink_cnn

        return shrink_cnn(model, spec, amount)
    return shrink_mlp(model, spec, amount)


def shrink_mlp(model: nn.Module, spec: dict[str, Any], amount: float
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Remove `amount` of every hidden layer's neurons, those of smallest L1 norm.

    A neuron's score is the L1 norm of its incoming weights (plus its residual projection's).
    In a residual mlp a block whose skip is the identity ties its width to its input's, so
    it and the block before it keep their widths.

    Args:
        model: a network built by the `mlp` builder (see `structured_support`).
        spec: its model.json spec.
        amount: fraction of each hidden layer's neurons to remove (at least one is kept).

    Returns:
        (a new, smaller `mlp` with the surviving weights; its spec with the new `hidden`).
    """
    model = make_permanent(copy.deepcopy(model)).eval()
    blocks = [getattr(model, f"block{i}") for i in range(_n_blocks(model))]
    widths = [_parts(b)[0].out_features for b in blocks]
    identity = [hasattr(b, "skip") and isinstance(b.skip, nn.Identity) for b in blocks]
    keep: list[torch.Tensor] = []
    in_width = model.input.out_features
    for i, block in enumerate(blocks):
        tied = identity[i] or (i + 1 < len(blocks) and identity[i + 1])
        k = widths[i] if tied else max(1, round(widths[i] * (1 - amount)))
        if hasattr(block, "skip") and not identity[i] and k == in_width:
            k = k + 1 if k < widths[i] else k - 1  # equal widths would make the skip Identity
        keep.append(_strongest(block, k))
        in_width = k
    new_spec = copy.deepcopy(spec)
    new_spec["kwargs"] = {**spec.get("kwargs", {}), "hidden": [len(k) for k in keep]}
    new = build_from_spec(new_spec).eval()
    with torch.no_grad():
        new.input.load_state_dict(model.input.state_dict())
        previous: torch.Tensor | None = None
        for old_block, new_block, rows in zip(blocks, [getattr(new, f"block{i}") for i in
                                                       range(len(blocks))], keep, strict=True):
            _copy_block(old_block, new_block, rows, previous)
            previous = rows
        _copy_linear(model.head, new.head, None, previous)
    return new, new_spec


def _n_blocks(model: nn.Module) -> int:
    return sum(1 for name, _ in model.named_children() if name.startswith("block"))


def _parts(block: nn.Module) -> tuple[nn.Linear, nn.Module, nn.Module | None]:
    """(the block's Linear, its norm layer, its residual projection or None)."""
    body = block.block if hasattr(block, "skip") else block
    skip = block.skip if hasattr(block, "skip") and isinstance(block.skip, nn.Linear) else None
    return body[0], body[1], skip


def _strongest(block: nn.Module, k: int) -> torch.Tensor:
    linear, _, skip = _parts(block)
    score = linear.weight.detach().abs().sum(dim=1)  # (width,)
    if skip is not None:
        score = score + skip.weight.detach().abs().sum(dim=1)
    return torch.sort(torch.topk(score, k).indices).values  # keep the original order


def _copy_block(old: nn.Module, new: nn.Module, rows: torch.Tensor,
                columns: torch.Tensor | None) -> None:
    old_linear, old_norm, old_skip = _parts(old)
    new_linear, new_norm, new_skip = _parts(new)
    _copy_linear(old_linear, new_linear, rows, columns)
    if old_skip is not None and new_skip is not None:
        _copy_linear(old_skip, new_skip, rows, columns)
    for name, tensor in old_norm.state_dict().items():
        # BatchNorm / LayerNorm: every 1-D entry is per neuron (num_batches_tracked is 0-D).
        new_norm.state_dict()[name].copy_(tensor[rows] if tensor.ndim == 1 else tensor)


def _copy_linear(old: nn.Linear, new: nn.Linear, rows: torch.Tensor | None,
                 columns: torch.Tensor | None) -> None:
    weight = old.weight.detach()  # (out, in)
    if rows is not None:
        weight = weight[rows]
    if columns is not None:
        weight = weight[:, columns]
    new.weight.copy_(weight)
    if old.bias is not None:
        new.bias.copy_(old.bias.detach() if rows is None else old.bias.detach()[rows])
