"""Training on a CUDA GPU: every precision, channels_last convolutions, and a run trained on
the GPU that predicts on the CPU. Skipped with a reason where there is no GPU."""

from __future__ import annotations

import pytest
import torch

import dlpipe
from helpers import minimal_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_the_gpu_reaches_the_cpu_accuracy_in_every_precision(tmp_path, precision):
    config = minimal_config(data={"source": {"builtin": "breast_cancer"},
                                  "split": {"val": 0.15, "test": 0.2}},
                            model={"name": "mlp", "hidden": [64, 32]},
                            train={"epochs": 30, "batch_size": 32, "progress": "never",
                                   "device": "cuda", "precision": precision})
    result = dlpipe.run(config, run_dir=tmp_path / "run")
    assert result.metrics["test"]["accuracy"] >= 0.93
    summary = (result.path / "training.json").read_text()
    assert '"epochs_run": 30' in summary
    # Weights trained on the GPU load and predict on the CPU.
    predictor = dlpipe.load(result.path)
    assert next(predictor.model.parameters()).device.type == "cpu"


def test_a_cnn_trains_in_channels_last_under_bf16_on_the_gpu(tmp_path):
    from dlpipe import train
    from dlpipe.features import load as load_features
    from dlpipe.pipeline import load_run_config

    config = minimal_config(
        data={"source": {"builtin": "digits", "params": {"as_images": True}}},
        model={"name": "cnn", "pool": "avg", "hidden": [32],
               "blocks": [{"channels": 16, "padding": "same", "batch_norm": True, "pool": "max"},
                          {"channels": 32, "padding": "same", "batch_norm": True}]},
        train={"epochs": 10, "batch_size": 64, "progress": "never", "device": "cuda",
               "precision": "bf16", "optimizer": {"name": "adamw", "lr": 0.005},
               "augment": [{"name": "random_crop", "padding": 1}]})
    result = dlpipe.run(config, run_dir=tmp_path / "run")
    assert result.metrics["test"]["accuracy"] >= 0.8  # 10 epochs of a small CNN, augmented

    cfg = load_run_config(result.rundir)
    fitted = load_features(result.rundir)
    trained = train.fit_arrays(cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"epochs": 1})}), fitted, fitted.arrays(result.rundir.read_split("train")), None)
    conv = next(m for m in trained.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.device.type == "cuda"
    optimizer_fused = train.build_optimizer(cfg.train, trained.model.cuda())
    assert optimizer_fused.defaults.get("fused") is True  # adamw on CUDA parameters
