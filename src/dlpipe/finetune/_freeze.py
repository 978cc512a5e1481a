"""Which parameters fine-tuning trains: freezing by name pattern, blocks, gradual unfreezing.

Everything here reads a network through `named_children`, `named_parameters` and
`named_buffers` only, so it works for every model in `MODELS` and for any `nn.Module` a user
registers, whatever its layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from dlpipe.errors import ConfigError
from dlpipe.train import Callback, TrainState

__all__ = ["Block", "FreezePlan", "Freezing", "blocks_of", "freeze_plan", "set_optimized"]


@dataclass(frozen=True)
class Block:
    """A unit of gradual unfreezing: one child module of the network (or a bare parameter)."""

    name: str
    """Module path (`block0`, `head`), or the parameter's name for a bare parameter."""

    state: tuple[str, ...]
    """Names of its parameters and buffers, as in the network's `state_dict`."""

    has_parameters: bool


@dataclass(frozen=True)
class FreezePlan:
    """What is frozen when fine-tuning starts, and in which order gradual unfreezing frees it."""

    frozen: tuple[str, ...]
    """Parameter and buffer names frozen at the start, in the network's order."""

    unfreeze: tuple[Block, ...]
    """Blocks holding frozen state, output side first: the order they are unfrozen in."""

    every: int | None
    """Unfreeze one more block every this many epochs; None: what is frozen stays frozen."""

    def frozen_at(self, epoch: int) -> set[str]:
        """The state names frozen during epoch `epoch` (0-based)."""
        released = self.released_at(epoch)
        return set(self.frozen).difference(*(block.state for block in released))

    def released_at(self, epoch: int) -> tuple[Block, ...]:
        """The blocks unfrozen by the start of epoch `epoch` (0-based)."""
        if not self.every:
            return ()
        return self.unfreeze[: epoch // self.every]


def blocks_of(model: nn.Module) -> list[Block]:
    """The network's blocks, input side first.

    The blocks are the children, in registration order, of the outermost module that has
    more than one child holding state: wrappers with a single child (`self.net =
    nn.Sequential(...)`) are looked through. Parameters held directly by that module come
    first, one block each.

    Example:
        >>> [b.name for b in blocks_of(build("mlp", 8, 3, kwargs={"hidden": [16, 16]}))]
        ['block0', 'block1', 'head']
    """
    prefix, module = "", model
    while True:
        own = [name for name, _ in module.named_parameters(recurse=False)]
        children = [(name, child) for name, child in module.named_children()
                    if _state_names(child)]
        if len(children) != 1 or own:
            break
        name, module = children[0]
        prefix += f"{name}."
    blocks = [Block(prefix + name, (prefix + name,), True) for name in own]
    for name, child in children:
        path = prefix + name
        state = tuple(f"{path}.{n}" for n in _state_names(child))
        blocks.append(Block(path, state, any(True for _ in child.parameters())))
    return blocks


def freeze_plan(model: nn.Module, freeze: Sequence[str] | str,
                unfreeze_every: int | None = None) -> FreezePlan:
    """Resolve `finetune.freeze` and `finetune.unfreeze_every` on `model`.

    Args:
        freeze: glob patterns matched against parameter and buffer names (`block0.*`), or
            ``"all_but_head"``: everything outside the last block that has parameters.
        unfreeze_every: epochs between two unfreezings; None for none.

    Raises:
        ConfigError: a pattern that matches nothing (listing the parameter names), a plan
            that freezes every parameter, or gradual unfreezing with nothing frozen.
    """
    names = _state_names(model)
    parameters = [name for name, _ in model.named_parameters()]
    blocks = blocks_of(model)
    if isinstance(freeze, str):  # "all_but_head"
        head = next((b for b in reversed(blocks) if b.has_parameters), None)
        kept = set(head.state) if head is not None else set()
        frozen = [name for name in names if name not in kept]
    else:
        problems = [
            (f"finetune.freeze[{i}]", f"pattern {pattern!r} matches no parameter of the "
                                      f"network; its parameters: {', '.join(_short(parameters))}")
            for i, pattern in enumerate(freeze)
            if not any(fnmatchcase(name, pattern) for name in names)
        ]
        if problems:
            raise ConfigError(problems)
        frozen = [name for name in names if any(fnmatchcase(name, p) for p in freeze)]
    if parameters and set(parameters) <= set(frozen):
        raise ConfigError([("finetune.freeze", f"freezes every parameter of the network "
                                               f"({len(parameters)}), so nothing would train; "
                                               f"leave the head trainable, e.g. all_but_head")])
    unfreeze: tuple[Block, ...] = ()
    if unfreeze_every is not None:
        if not frozen:
            raise ConfigError([("finetune.unfreeze_every", "nothing is frozen, so there is "
                                                           "nothing to unfreeze; set "
                                                           "finetune.freeze (e.g. all_but_head)")])
        frozen_set = set(frozen)
        unfreeze = tuple(
            Block(b.name, tuple(n for n in b.state if n in frozen_set), b.has_parameters)
            for b in reversed(blocks) if frozen_set.intersection(b.state)
        )
    return FreezePlan(tuple(frozen), unfreeze, unfreeze_every)


def set_optimized(model: nn.Module, plan: FreezePlan) -> None:
    """Set `requires_grad` to what the optimizer is built with.

    Without gradual unfreezing the frozen parameters are left out for good. With it, every
    parameter is in the optimizer; `Freezing` holds the frozen ones back until their block's
    turn (no gradient, so no update, weight decay included).
    """
    frozen = set(plan.frozen) if plan.every is None else set()
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)


class Freezing(Callback):
    """Apply a `FreezePlan` during `fit`: frozen parameters get no gradient, and frozen norm
    layers run in inference mode so their running statistics stay as they were.

    What is frozen follows from the epoch alone, so a resumed run unfreezes exactly as an
    uninterrupted one. `released` lists each unfrozen block with the first (1-based) epoch
    it trained in, as history.jsonl counts epochs.
    """

    def __init__(self, model: nn.Module, plan: FreezePlan) -> None:
        self.model = model
        self.plan = plan
        self.released: list[dict[str, Any]] = []
        self._held: dict[str, Any] = {}  # module name → forward pre-hook handle

    def on_fit_start(self, state: TrainState) -> None:
        self._apply(state.epoch)

    def on_epoch_start(self, state: TrainState) -> None:
        self._apply(state.epoch)

    def on_fit_end(self, state: TrainState) -> None:
        for handle in self._held.values():
            handle.remove()
        self._held.clear()
        for param in self.model.parameters():
            param.requires_grad_(True)

    def _apply(self, epoch: int) -> None:
        frozen = self.plan.frozen_at(epoch)
        for name, param in self.model.named_parameters():
            param.requires_grad_(name not in frozen)
        for name, module in self.model.named_modules():
            held = _has_running_stats(module) and _is_frozen(name, module, frozen)
            if held and name not in self._held:
                self._held[name] = module.register_forward_pre_hook(_inference_mode)
            elif not held and name in self._held:
                self._held.pop(name).remove()
        for k, block in enumerate(self.plan.released_at(epoch)[len(self.released):],
                                  start=len(self.released) + 1):
            every = self.plan.every or 0
            self.released.append({"block": block.name, "from_epoch": k * every + 1,
                                  "state": list(block.state)})


def _state_names(module: nn.Module) -> list[str]:
    """Parameter and buffer names in `state_dict` order (shared tensors once)."""
    return list(dict.fromkeys(module.state_dict(keep_vars=True)))


def _has_running_stats(module: nn.Module) -> bool:
    return bool(getattr(module, "track_running_stats", False)) and getattr(
        module, "running_mean", None) is not None


def _is_frozen(name: str, module: nn.Module, frozen: set[str]) -> bool:
    """A layer is frozen when all its own parameters are (or, without any, its buffers)."""
    prefix = f"{name}." if name else ""
    own = [prefix + n for n, _ in module.named_parameters(recurse=False)]
    own = own or [prefix + n for n, _ in module.named_buffers(recurse=False)]
    return bool(own) and all(n in frozen for n in own)


def _inference_mode(module: nn.Module, args: Any) -> None:
    # fit calls model.train() every epoch; a frozen norm layer goes back to inference
    # mode before each forward, so it normalizes with, and keeps, its running statistics.
    module.train(False)


def _short(names: list[str], limit: int = 12) -> list[str]:
    return names[:limit] + ([f"... ({len(names) - limit} more)"] if len(names) > limit else [])
