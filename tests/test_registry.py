"""The registry: names users type, did-you-mean, `module:function` paths."""

from __future__ import annotations

import sys

import pytest

from dlpipe.errors import ConfigError
from dlpipe.registry import Registry


def make_registry() -> Registry:
    losses = Registry("loss")

    @losses.register("mse")
    def mse(): ...

    @losses.register("cross_entropy")
    def cross_entropy(): ...

    return losses


def test_a_registered_builder_is_found_by_its_name():
    losses = make_registry()
    assert losses.get("mse").__name__ == "mse"
    assert "mse" in losses and "mae" not in losses
    assert losses.names() == ["cross_entropy", "mse"]


def test_an_unknown_name_suggests_the_closest_one_and_lists_the_known_ones():
    with pytest.raises(ConfigError, match=(
        r"^train\.loss\.name: unknown loss 'cross_entopy'\. Did you mean 'cross_entropy'\? "
        r"Known: cross_entropy, mse$"
    )) as info:
        make_registry().get("cross_entopy", path="train.loss.name")
    assert info.value.problems[0][0] == "train.loss.name"


def test_a_name_close_to_nothing_still_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown loss 'hinge'\. Known: cross_entropy, mse$"):
        make_registry().get("hinge", path="train.loss.name")


def test_a_module_path_imports_the_builder(tmp_path, monkeypatch):
    (tmp_path / "user_losses.py").write_text("def smooth(beta=1.0):\n    return beta\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_losses", raising=False)
    builder = make_registry().get("user_losses:smooth", path="train.loss.name")
    assert builder(beta=2.0) == 2.0


def test_a_module_path_to_an_unknown_module_names_the_field():
    with pytest.raises(ConfigError, match=(
        r"^train\.loss\.name: cannot import module 'no_such_module_xyz' for loss "
        r"'no_such_module_xyz:f'"
    )):
        make_registry().get("no_such_module_xyz:f", path="train.loss.name")


def test_a_module_path_to_a_missing_function_names_the_field():
    with pytest.raises(ConfigError, match=(
        r"^model\.name: 'math' has no callable 'no_such_fn' \(from loss 'math:no_such_fn'\)$"
    )):
        make_registry().get("math:no_such_fn", path="model.name")


def test_a_name_can_be_registered_only_once():
    losses = make_registry()
    with pytest.raises(ValueError, match=r"loss 'mse' is already registered"):
        losses.register("mse")(lambda: None)
    assert losses.get("mse").__name__ == "mse"  # the first registration stands
