"""Weight initialisation schemes, checked against their theoretical statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlpipe.errors import ConfigError
from dlpipe.models import INITS, apply_init, build


def small_model() -> nn.Module:
    return nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(8, 3), nn.Embedding(5, 2))


@pytest.mark.parametrize("scheme", INITS.names())
def test_every_scheme_sets_linear_and_conv_weights_zeroes_biases_and_spares_embeddings(scheme):
    torch.manual_seed(0)
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_init(model, scheme)
    for layer in ("0", "2"):  # Conv1d, Linear
        assert not model.get_parameter(f"{layer}.bias").any()
        changed = not torch.equal(model.get_parameter(f"{layer}.weight"), before[f"{layer}.weight"])
        assert changed, f"{scheme} left {layer}.weight as it was"
    torch.testing.assert_close(model[3].weight, before["3.weight"], rtol=0, atol=0)


def test_zeros_gives_zero_weights():
    model = build("mlp", 4, 2, init="zeros", kwargs={"hidden": [8]})
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    assert weights and all(not w.any() for w in weights)


def test_orthogonal_gives_orthonormal_rows():
    layer = nn.Linear(64, 32)  # weight (32, 64): fewer rows than columns
    apply_init(layer, "orthogonal")
    w = layer.weight.detach()
    # QR in float32: entries of W Wᵀ are sums of 64 products, each off by about 1e-7.
    torch.testing.assert_close(w @ w.T, torch.eye(32), rtol=0, atol=1e-5)


FAN_IN, FAN_OUT = 1000, 500


@pytest.mark.parametrize(
    ("scheme", "variance"),
    [
        ("xavier_uniform", 2 / (FAN_IN + FAN_OUT)),
        ("xavier_normal", 2 / (FAN_IN + FAN_OUT)),
        ("kaiming_uniform", 2 / FAN_IN),
        ("kaiming_normal", 2 / FAN_IN),
        ("normal", 0.05**2),
        ("uniform", 0.1**2 / 12),  # U(-0.05, 0.05): width² / 12
    ],
)
def test_random_schemes_have_their_theoretical_variance(scheme, variance):
    torch.manual_seed(0)
    layer = nn.Linear(FAN_IN, FAN_OUT)
    apply_init(layer, scheme)
    w = layer.weight.detach().double()
    # 500,000 draws: the sample variance is off by about sqrt(2 / n) ≈ 0.2% (normal), less for
    # uniform; 2% is ten standard errors, so only a wrong formula fails.
    assert w.var().item() == pytest.approx(variance, rel=0.02)
    assert abs(w.mean().item()) < 5 * math.sqrt(variance / w.numel())


def test_unknown_init_scheme_suggests_the_closest_one():
    message = r"model\.init: unknown init scheme 'orthogonl'\. Did you mean 'orthogonal'\?"
    with pytest.raises(ConfigError, match=message):
        apply_init(nn.Linear(2, 2), "orthogonl")
