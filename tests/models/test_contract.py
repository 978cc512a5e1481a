"""The contract every registered model keeps, and `build` / `check_kwargs` around it."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from typing import Annotated

import pytest
import torch
from pydantic import Field
from torch import nn

from dlpipe._signature import check_kwargs
from dlpipe.errors import ConfigError
from dlpipe.models import MODELS, SUPPLIED, build
from helpers import input_kind, tiny_input, tiny_layout

N_NUMERIC = 4
CARDINALITIES = (3, 7)  # two embedded categoricals; index 0 is the unseen bucket


def tiny_batch(cardinalities: Sequence[int] = (), batch: int = 8, seed: int = 0,
               name: str = "mlp") -> torch.Tensor:
    """A float32 (batch, F) input in the layout model `name` reads (tabular: N_NUMERIC
    numbers then one index per categorical; image, text or mixed blocks otherwise)."""
    return tiny_input(tiny_layout(input_kind(name), tuple(cardinalities)), batch, seed)


def tiny_model(name: str, out_features: int, cardinalities=(), seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build(name, N_NUMERIC, out_features, cardinalities=cardinalities,
                 layout=tiny_layout(input_kind(name), tuple(cardinalities)))


with_and_without_categoricals = pytest.mark.parametrize(
    "cardinalities", [(), CARDINALITIES], ids=["numeric", "categorical"]
)


# -- the contract, run over every registered model -------------------------------------------


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("out_features", [1, 3])
@with_and_without_categoricals
def test_every_model_maps_a_batch_to_one_row_of_outputs_per_example(
    name, out_features, cardinalities
):
    model = tiny_model(name, out_features, cardinalities)
    out = model(tiny_batch(cardinalities, batch=8, name=name))
    assert out.shape == (8, out_features)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("name", MODELS.names())
@with_and_without_categoricals
def test_every_model_gives_finite_gradients_to_every_parameter(name, cardinalities):
    model = tiny_model(name, 3, cardinalities).train()
    model(tiny_batch(cardinalities, name=name)).square().mean().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", MODELS.names())
@with_and_without_categoricals
def test_every_model_is_reproducible_from_the_seed(name, cardinalities):
    x = tiny_batch(cardinalities, name=name)
    first = tiny_model(name, 3, cardinalities, seed=0).eval()(x)
    again = tiny_model(name, 3, cardinalities, seed=0).eval()(x)
    other = tiny_model(name, 3, cardinalities, seed=1).eval()(x)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)  # the seed is what makes them equal


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_exports_with_a_dynamic_batch_axis(name):
    # torch.export is the graph capture that the ONNX exporter starts from; it needs no onnx.
    model = tiny_model(name, 3, CARDINALITIES).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        model, (tiny_batch(CARDINALITIES, batch=2, name=name),), dynamic_shapes=({0: batch},)
    )
    x = tiny_batch(CARDINALITIES, batch=5, seed=1, name=name)  # 5 != 2: a dynamic batch axis
    # The same fp32 kernels run in both, so the outputs agree to the bit up to summation order.
    torch.testing.assert_close(program.module()(x), model(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_exports_to_onnx_and_matches_pytorch(name, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = tiny_model(name, 3, CARDINALITIES).eval()
    program = torch.onnx.export(
        model,
        (tiny_batch(CARDINALITIES, batch=2, name=name),),
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    program.save(str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = tiny_batch(CARDINALITIES, batch=5, seed=1, name=name)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    # Same fp32 ops in both runtimes; only summation-order rounding differs.
    torch.testing.assert_close(torch.from_numpy(got), model(x).detach(), rtol=1e-5, atol=1e-5)


# -- build: names, kwargs, user builders ---------------------------------------------------------


def test_unknown_model_name_suggests_the_closest_one():
    with pytest.raises(
        ConfigError, match=r"model\.name: unknown model 'mpl'\. Did you mean 'mlp'\?"
    ):
        build("mpl", 4, 1)


def test_build_reports_every_bad_kwarg_and_the_init_at_once():
    with pytest.raises(ConfigError) as info:
        build("mlp", 4, 1, init="orthogonl", kwargs={"hiden": [8], "dropout": 1.0})
    assert dict(info.value.problems) == {
        "model.init": "unknown init scheme 'orthogonl'. Did you mean 'orthogonal'? Known: "
        "kaiming_normal, kaiming_uniform, normal, orthogonal, uniform, xavier_normal, "
        "xavier_uniform, zeros",
        "model.hiden": "unknown argument 'hiden'. Did you mean 'hidden'? Known: activation, "
        "dropout, embedding_dim, hidden, norm, residual",
        "model.dropout": "Input should be less than 1; got 1.0",
    }


def test_build_refuses_shapes_set_in_the_config():
    with pytest.raises(ConfigError, match=r"model\.in_features: set by dlpipe"):
        build("mlp", 4, 1, kwargs={"in_features": 10})


def test_build_passes_the_validated_kwargs_to_the_builder():
    model = build("mlp", 4, 2, kwargs={"hidden": [5], "dropout": "0.25"})
    assert model.block0[0].out_features == 5
    assert model.block0[3].p == 0.25  # the string from YAML arrives as the annotated float


def write_module(tmp_path, monkeypatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_a_user_builder_by_module_path_gets_the_shapes_and_its_kwargs(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "user_models_plain", """
        from torch import nn

        def tiny(n_in: int, n_out: int, *, width: int = 4) -> nn.Module:
            return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, n_out))
    """)
    model = build("user_models_plain:tiny", 6, 2, init="zeros", kwargs={"width": 9})
    assert model[0].in_features == 6 and model[0].out_features == 9
    assert model(torch.randn(3, 6)).shape == (3, 2)
    assert not model[0].weight.any()  # the init is applied to user models too


def test_a_user_builder_that_takes_cardinalities_gets_them(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "user_models_cards", """
        from torch import nn

        def tiny(in_features, out_features, cardinalities=()):
            model = nn.Linear(in_features + len(cardinalities), out_features)
            model.seen = tuple(cardinalities)
            return model
    """)
    assert build("user_models_cards:tiny", 2, 1, cardinalities=[3, 4]).seen == (3, 4)
    assert build("user_models_cards:tiny", 2, 1).seen == ()


def test_a_user_builder_without_cardinalities_needs_onehot_features(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "user_models_nocards", """
        from torch import nn

        def tiny(in_features, out_features):
            return nn.Linear(in_features, out_features)
    """)
    with pytest.raises(
        ConfigError, match=r"model\.name: .*takes no `cardinalities`.*features\.categorical: onehot"
    ):
        build("user_models_nocards:tiny", 2, 1, cardinalities=[3])


def test_a_user_builder_must_return_a_module(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "user_models_bad", """
        def tiny(in_features, out_features):
            return [in_features, out_features]
    """)
    with pytest.raises(
        ConfigError, match=r"model\.name: builder 'user_models_bad:tiny' returned list, not a"
    ):
        build("user_models_bad:tiny", 2, 1)


def test_a_user_builder_must_take_the_two_shapes(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "user_models_noshape", """
        from torch import nn

        def tiny(width=3):
            return nn.Linear(width, 1)
    """)
    with pytest.raises(ConfigError, match=r"model\.name: .*\(in_features, out_features\)"):
        build("user_models_noshape:tiny", 2, 1)


# -- check_kwargs: the builder's signature is the schema -------------------------------------------


def test_check_kwargs_names_an_unknown_argument_and_the_closest_known_one():
    problems = check_kwargs(MODELS.get("mlp"), {"hiden": [8]}, "model", skip=SUPPLIED)
    assert problems == [("model.hiden", "unknown argument 'hiden'. Did you mean 'hidden'? "
                         "Known: activation, dropout, embedding_dim, hidden, norm, residual")]


def test_check_kwargs_says_what_type_was_expected_and_what_came():
    problems = check_kwargs(MODELS.get("mlp"), {"hidden": "256,128", "residual": "yes please"},
                            "model")
    assert problems == [
        ("model.hidden", "expected a list of integers; got '256,128'"),
        ("model.residual", "expected true or false; got 'yes please'"),
    ]


def test_check_kwargs_reports_a_broken_constraint_with_the_list_position():
    problems = check_kwargs(MODELS.get("mlp"), {"hidden": [64, 0], "dropout": -0.1}, "model")
    assert problems == [
        ("model.hidden.1", "Input should be greater than or equal to 1; got 0"),
        ("model.dropout", "Input should be greater than or equal to 0; got -0.1"),
    ]


def test_check_kwargs_suggests_a_choice_for_a_misspelled_literal():
    problems = check_kwargs(MODELS.get("mlp"), {"activation": "rleu"}, "model")
    assert problems == [("model.activation", "unknown value 'rleu'. Did you mean 'relu'? "
                         "Known: elu, gelu, leaky_relu, relu, selu, sigmoid, tanh")]


def test_check_kwargs_resolves_string_annotations_and_skips_unresolvable_ones():
    def builder(params, *, lr: Annotated[float, Field(gt=0)], mystery: NoSuchType = None):  # noqa: F821
        ...

    problems = check_kwargs(builder, {"lr": -0.001, "mystery": object(), "params": []},
                            "train.optimizer", skip=["params"])
    assert problems == [
        ("train.optimizer.lr", "Input should be greater than 0; got -0.001"),
        ("train.optimizer.params", "set by dlpipe, not by the config; remove it"),
    ]


def test_check_kwargs_reports_a_missing_required_keyword_argument():
    def builder(params, *, lr: float): ...

    assert check_kwargs(builder, {}, "train.optimizer") == [
        ("train.optimizer.lr", "required argument is missing")
    ]


def test_check_kwargs_lets_a_builder_with_var_kwargs_take_anything():
    def builder(in_features, out_features, *, depth: int = 2, **rest): ...

    assert check_kwargs(builder, {"anything": 1, "depth": 3}, "model") == []
    assert check_kwargs(builder, {"depth": "deep"}, "model") == [
        ("model.depth", "expected an integer; got 'deep'")
    ]
