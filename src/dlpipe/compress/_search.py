"""The compress stage's work: try each method under the guard, keep or revert, measure.

The kept fp32 model is a chain: it starts as the trained model; each pruning method searches
its levels in increasing order, every level pruning the last kept model further and
fine-tuning it, and stops at the first level the guard rejects (so the strongest level within
the guard is kept when the metric falls monotonically with the level, as it usually does).
`structured` reaches each level in steps of at most `compress.structured_step` of the
original widths (`structured_steps`), fine-tuning after each: removing half the neurons at
once loses more than fine-tuning wins back. Fine-tuning keeps its epoch of lowest validation
loss, so the validation split both picks that epoch and judges the variant.
The formats (int8, fp16, bf16) then convert the chain's final model, each judged on its own.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from dlpipe.compress import cast, prune
from dlpipe.compress._finetune import finetune
from dlpipe.compress.guard import Guard, score_outputs
from dlpipe.compress.quantize import quantize_int8, scheme_for, unquantized_recurrent
from dlpipe.compress.report import Variant, measure_onnx
from dlpipe.config import CompressConfig, PipelineConfig
from dlpipe.export import _runtime
from dlpipe.export.onnx import check_parity, to_onnx
from dlpipe.features import FittedFeatures


@dataclass
class Arrays:
    """Model inputs (N, F) float32 and encoded targets (N,) of each split."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


@dataclass
class Link:
    """The fp32 model the chain holds: network, spec, ONNX bytes and its variant row."""

    model: nn.Module
    spec: dict[str, Any]
    onnx: bytes
    variant: Variant


@dataclass
class Outcome:
    """What the search kept: the fp32 chain's end and the accepted formats' files."""

    original: Link
    chain: Link
    variants: list[Variant] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # "int8" / "fp16" / "bf16" → bytes
    kept: dict[str, str | None] = field(default_factory=dict)


class Compressor:
    """Runs the configured methods on one trained model; see the module docstring."""

    def __init__(self, cfg: PipelineConfig, section: CompressConfig, *, fitted: FittedFeatures,
                 arrays: Arrays, metric: str, threshold: float) -> None:
        self.cfg, self.section, self.fitted = cfg, section, fitted
        self.task, self.target, self.arrays = fitted.task, fitted.target, arrays
        self.metric, self.threshold = metric, threshold
        self.guard: Guard | None = None

    def run(self, model: nn.Module, spec: dict[str, Any]) -> Outcome:
        original = self._link("original", "original", None, model.eval(), spec)
        baseline = original.variant.val
        if baseline is None:  # NaN: every comparison fails, so every variant is rejected
            original.variant.reason = f"val {self.metric} is undefined; nothing can be kept"
        self.guard = Guard(self.metric, math.nan if baseline is None else baseline,
                           self.section.max_metric_drop)
        original.variant.delta = 0.0
        outcome = Outcome(original=original, chain=original, variants=[original.variant])
        for method in self.section.methods:
            if method == "structured":
                self._search(outcome, "structured", self.section.structured_amounts)
            elif method == "prune":
                self._search(outcome, "prune", self.section.sparsities)
            else:
                self._format(outcome, method)
        outcome.kept = {"fp32": outcome.chain.variant.name, **{
            m: (m if m in outcome.files else None) for m in ("int8", "fp16", "bf16")
            if m in self.section.methods}}
        self._test(outcome)
        return outcome

    # -- pruning -----------------------------------------------------------------------------

    def _search(self, outcome: Outcome, method: str, levels: list[float]) -> None:
        if method == "structured" and (why := prune.structured_support(outcome.chain.spec)):
            outcome.variants.append(Variant(f"{method}", method, accepted=False,
                                            reason=f"skipped: {why}"))
            return
        previous = 0.0
        for level in levels:
            model = copy.deepcopy(outcome.chain.model)
            spec = outcome.chain.spec
            if method == "structured":
                done = previous
                for amount in structured_steps(previous, level, self.section.structured_step):
                    # Amounts are fractions of the original widths; the chain is narrower.
                    model, spec = prune.shrink(model, spec, 1 - (1 - amount) / (1 - done))
                    self._finetune(model)
                    done = amount
            else:
                prune.magnitude_prune(model, level, scope=self.section.scope)
                self._finetune(model)
            prune.make_permanent(model)
            link = self._link(f"{method}-{level:g}", method, level, model, spec)
            outcome.variants.append(link.variant)
            if not link.variant.accepted:
                return  # stronger levels start from here: the search stops
            outcome.chain, previous = link, level

    def _finetune(self, model: nn.Module) -> None:
        """Fine-tune a pruned `model` in place, keeping its epoch of lowest val loss."""
        finetune(model, self.cfg, self.fitted, self.arrays.train, self.arrays.val,
                 epochs=self.section.finetune_epochs, lr_factor=self.section.finetune_lr_factor)

    # -- formats -------------------------------------------------------------------------------

    def _format(self, outcome: Outcome, method: str) -> None:
        import onnx
        from safetensors.torch import save

        chain, section = outcome.chain, self.section
        variant = Variant(method, method, parameters=chain.variant.parameters,
                          nonzero=chain.variant.nonzero)
        if method == "bf16":
            weights = cast.to_bf16(chain.model.state_dict())
            data = save({k: v.contiguous() for k, v in weights.items()})
            variant.setting = "weights"
            variant.file_bytes = variant.weight_bytes = len(data)
            model = copy.deepcopy(chain.model)
            model.load_state_dict(cast.from_bf16(weights))
            variant.val = self._score_torch(model, self.arrays.val)
        else:
            if method == "int8":
                rows = _calibration_rows(self.arrays.train[0], section.calibration_rows,
                                         self.cfg.seed)
                variant.setting = scheme_for(onnx.load_from_string(chain.onnx),
                                             section.quantization)
                data = quantize_int8(chain.onnx, mode=variant.setting, calibration=rows,
                                     per_channel=section.per_channel)
            else:
                data = cast.to_fp16_onnx(chain.onnx)
            sess = measure_onnx(variant, data, self.arrays.val[0], runs=section.latency_runs)
            variant.val = self._score_onnx(sess, self.arrays.val)
        self._judge(variant)
        if method == "int8" and (left := unquantized_recurrent(onnx.load_from_string(data))):
            variant.reason += (f"; {', '.join(sorted(set(left)))} stays float (ONNX Runtime "
                               f"has int8 kernels for LSTM only)")
        outcome.variants.append(variant)
        if variant.accepted:
            outcome.files[method] = data

    # -- measuring -------------------------------------------------------------------------------

    def _link(self, name: str, method: str, setting: float | None, model: nn.Module,
              spec: dict[str, Any]) -> Link:
        """Export `model`, check it against PyTorch, measure it and judge it."""
        x_val = self.arrays.val[0]
        example = torch.from_numpy(_runtime.rows_of(self.arrays.train[0], 2))
        proto = to_onnx(model, example)
        data = proto.SerializeToString()
        check_parity(model, proto, [torch.from_numpy(_runtime.rows_of(x_val, n)) for n in (1, 64)])
        params, nonzero = prune.count_parameters(model)
        variant = Variant(name, method, setting, parameters=params, nonzero=nonzero)
        sess = measure_onnx(variant, data, x_val, runs=self.section.latency_runs)
        variant.val = self._score_onnx(sess, self.arrays.val)
        if self.guard is not None:
            self._judge(variant)
        return Link(model, spec, data, variant)

    def _judge(self, variant: Variant) -> None:
        guard = self.guard
        if guard is None:
            return
        known = variant.val is not None and math.isfinite(guard.baseline)
        variant.delta = variant.val - guard.baseline if known else None
        variant.accepted = guard.allows(variant.val)
        variant.reason = guard.reason(variant.val)

    def _score_onnx(self, sess: Any, split: tuple[np.ndarray, np.ndarray]) -> float | None:
        x, y = split
        return self._score(_runtime.run_batched(sess, x), y)

    def _score_torch(self, model: nn.Module, split: tuple[np.ndarray, np.ndarray]
                     ) -> float | None:
        x, y = split
        with torch.inference_mode():
            outputs = model.eval()(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()
        return self._score(outputs, y)

    def _score(self, outputs: np.ndarray, y: np.ndarray) -> float | None:
        return score_outputs(outputs, y, task=self.task, metric=self.metric, target=self.target,
                             threshold=self.threshold, top_k=self.cfg.evaluate.top_k)

    def _test(self, outcome: Outcome) -> None:
        """Score the original and every kept variant once on the test split."""
        if len(self.arrays.test[0]) == 0:
            return
        test = self.arrays.test
        for link in {id(outcome.original): outcome.original, id(outcome.chain): outcome.chain
                     }.values():
            link.variant.test = self._score_onnx(_runtime.session(link.onnx), test)
        for variant in outcome.variants:
            if variant.method in ("int8", "fp16") and variant.method in outcome.files:
                variant.test = self._score_onnx(_runtime.session(outcome.files[variant.method]),
                                                test)
            elif variant.method == "bf16" and "bf16" in outcome.files:
                model = copy.deepcopy(outcome.chain.model)
                model.load_state_dict(cast.from_bf16(cast.to_bf16(model.state_dict())))
                variant.test = self._score_torch(model, test)


def structured_steps(start: float, level: float, step: float) -> list[float]:
    """The amounts (fractions of the original widths) structured pruning goes through from
    `start` to `level`, in equal steps of at most `step`; the last is `level`.

    Example:
        >>> structured_steps(0.0, 0.5, 0.125)
        [0.125, 0.25, 0.375, 0.5]
        >>> structured_steps(0.25, 0.5, 0.2)
        [0.375, 0.5]
    """
    n = max(1, math.ceil((level - start) / step - 1e-9))
    return [start + (level - start) * (i + 1) / n for i in range(n - 1)] + [level]


def _calibration_rows(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` training rows drawn without replacement (all when there are fewer)."""
    order = np.random.default_rng(seed).permutation(len(x))[:n]
    return np.ascontiguousarray(x[order], dtype=np.float32)
