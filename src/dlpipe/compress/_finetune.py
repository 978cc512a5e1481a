"""A few epochs of training at a lower learning rate after a pruning step, with the run's own
loss, optimizer, batch size and clipping, through `dlpipe.train.fit`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dlpipe.config import PipelineConfig
from dlpipe.train import TensorBatches, build_loss, build_optimizer, fit


def finetune(model: nn.Module, cfg: PipelineConfig, task: str, x: np.ndarray, y: np.ndarray,
             *, epochs: int, lr_factor: float) -> nn.Module:
    """Train `model` in place for `epochs` epochs at `lr_factor` × the run's learning rate.

    Pruning masks attached by `torch.nn.utils.prune` stay applied, so pruned weights stay
    zero. Returns the model in eval mode.

    Args:
        x: float32 (N, F) training inputs.
        y: (N,) encoded training targets.
    """
    if epochs == 0 or len(x) == 0:
        return model.eval()
    tc = cfg.train
    torch.manual_seed(cfg.seed)
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    yt = torch.as_tensor(np.ascontiguousarray(y),
                         dtype=torch.long if task == "multiclass" else torch.float32)
    loss_fn = build_loss(tc, task, yt, cfg.data.imbalance == "class_weight")
    optimizer = build_optimizer(tc, model)
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * lr_factor
    batches = TensorBatches(xt, yt, tc.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(cfg.seed))
    fit(model, batches, None, optimizer=optimizer, loss_fn=loss_fn, epochs=epochs,
        grad_clip=tc.grad_clip)
    return model.eval()
