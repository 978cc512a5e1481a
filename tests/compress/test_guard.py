"""The accuracy guard: what it keeps, what it rejects, and that a rejected method is reverted."""

from __future__ import annotations

import pytest
import torch

from dlpipe import runs
from dlpipe.compress.guard import Guard, guarded_metric
from dlpipe.errors import ConfigError
from dlpipe.pipeline import load_run_config, run_stage


def test_the_guard_keeps_a_drop_up_to_the_limit_and_rejects_a_larger_one():
    guard = Guard("accuracy", baseline=0.90, max_drop=0.005)
    assert guard.allows(0.895)  # exactly the allowed drop
    assert guard.allows(0.93)   # better is always fine
    assert not guard.allows(0.8949)
    assert not guard.allows(None) and not guard.allows(float("nan"))
    assert guard.reason(0.88) == ("val accuracy 0.8800 vs 0.9000: drop +0.0200 exceeds the "
                                  "allowed 0.005")


def test_for_a_lower_is_better_metric_a_rise_is_the_drop():
    guard = Guard("rmse", baseline=10.0, max_drop=0.5)
    assert guard.allows(10.5) and guard.allows(9.0)
    assert not guard.allows(10.6)


def test_the_guarded_metric_defaults_by_task_and_must_fit_the_task():
    assert guarded_metric("binary", None) == "accuracy"
    assert guarded_metric("regression", None) == "r2"
    assert guarded_metric("multiclass", "f1_macro") == "f1_macro"
    with pytest.raises(ConfigError, match=r"compress\.metric: metric 'rmse' does not apply to a "
                                          r"binary task"):
        guarded_metric("binary", "rmse")
    with pytest.raises(ConfigError, match=r"compress\.metric: unknown metric 'acuracy'\. Did "
                                          r"you mean 'accuracy'\?"):
        guarded_metric("binary", "acuracy")


def test_a_method_that_breaks_accuracy_is_reverted_and_reported(compressed):
    # 99.9% of the weights zeroed and no fine-tuning: the network predicts one class.
    rundir, report = compressed(methods=["prune"], sparsities=[0.999], finetune_epochs=0)
    original, pruned = report["variants"]
    assert pruned["name"] == "prune-0.999" and pruned["setting"] == 0.999
    assert not pruned["accepted"]
    assert pruned["val"] < original["val"] - report["max_metric_drop"]
    assert pruned["reason"].startswith(f"val accuracy {pruned['val']:.4f} vs "
                                       f"{original['val']:.4f}") and "exceeds" in pruned["reason"]
    assert report["chosen"] == {"fp32": "original"}
    assert not rundir.has(runs.COMPRESSED_MODEL)  # nothing of the rejected variant is kept
    # The export that follows ships the original network unchanged.
    cfg = load_run_config(rundir)
    bundle = run_stage("export", cfg, rundir)
    from safetensors.torch import load_file

    shipped, trained = load_file(bundle / "weights.safetensors"), rundir.read_tensors(runs.WEIGHTS)
    assert shipped.keys() == trained.keys()
    assert all(torch.equal(shipped[k], trained[k]) for k in trained)


def test_pruning_keeps_the_strongest_sparsity_within_the_guard(compressed):
    rundir, report = compressed(methods=["prune"], sparsities=[0.3, 0.6, 0.999],
                                max_metric_drop=0.05)
    tried = report["variants"][1:]
    accepted = [v["setting"] for v in tried if v["accepted"]]
    rejected = [v["setting"] for v in tried if not v["accepted"]]
    assert rejected == [0.999]  # the search stops at its first rejection
    assert accepted == [0.3, 0.6]
    assert report["chosen"]["fp32"] == "prune-0.6"
    # The kept weights are exactly that sparse: 60% of every Linear weight, globally, zero.
    weights = rundir.read_tensors(runs.COMPRESSED_WEIGHTS)
    matrices = [w for k, w in weights.items() if k.endswith("weight") and w.ndim == 2]
    total = sum(w.numel() for w in matrices)
    assert sum(int((w == 0).sum()) for w in matrices) == round(0.6 * total)
