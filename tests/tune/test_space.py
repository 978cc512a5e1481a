"""The search space: its syntax, its checks (each with the path), and sampled configs."""

import optuna
import pytest

from dlpipe.config import load_config
from dlpipe.errors import ConfigError
from dlpipe.pipeline import check
from dlpipe.tune.space import Param, Space, base_config, trial_config
from helpers import minimal_config


def tuned(space, **options):
    return minimal_config(tune={"space": space, **options})


def test_ranges_and_choices_become_optuna_distributions():
    cfg = load_config(tuned({
        "train.optimizer.lr": {"float": [1e-4, 1e-1], "log": True},
        "train.batch_size": {"int": [16, 64], "step": 16},
        "model.hidden": [[16], [32, 16]],
        "model.activation": {"choice": ["relu", "gelu"]},
    }))
    got = Space.from_config(cfg.tune).distributions()
    assert got == {
        "train.optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
        "train.batch_size": optuna.distributions.IntDistribution(16, 64, step=16),
        # Lists are stored as their JSON text (Optuna keeps only scalars) ...
        "model.hidden": optuna.distributions.CategoricalDistribution(["[16]", "[32, 16]"]),
        "model.activation": optuna.distributions.CategoricalDistribution(["relu", "gelu"]),
    }


def test_sampled_values_come_back_as_config_values_and_validate():
    cfg = load_config(tuned({"model.hidden": [[16], [32, 16]],
                             "train.optimizer.lr": {"float": [1e-3, 1e-2]}}))
    space = Space.from_config(cfg.tune)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    values = space.sample(trial)
    assert values["model.hidden"] in ([16], [32, 16])          # ... and decoded on the way out
    trial_cfg = trial_config(base_config(cfg), values)
    assert list(trial_cfg.model.kwargs["hidden"]) == values["model.hidden"]
    assert trial_cfg.train.optimizer.kwargs["lr"] == values["train.optimizer.lr"]
    assert trial_cfg.tune is None and trial_cfg.data == cfg.data


@pytest.mark.parametrize(("spec", "message"), [
    ({"float": [0.5, 0.1]}, r"low must be below high; got \[0\.5, 0\.1\]"),
    ({"float": [0.0, 1.0], "log": True}, r"a log scale needs low > 0; got low = 0\.0"),
    ({"flaot": [0, 1]}, r"unknown key 'flaot'\. Did you mean 'float'\?"),
    ({"choice": [1, 2], "int": [1, 2]}, r"give exactly one of .*; got int, choice"),
    ({"choice": [1, 2], "log": True}, r"`log` and `step` apply to `float` and `int` ranges"),
    ({"int": [1, 9], "step": 1.5}, r"an `int` range needs a whole-number step; got 1\.5"),
])
def test_a_malformed_entry_is_a_config_error_at_its_path(spec, message):
    with pytest.raises(ConfigError, match=r"tune\.space\.train\.epochs: " + message):
        load_config(tuned({"train.epochs": spec}))


def test_the_data_section_cannot_be_searched():
    with pytest.raises(ConfigError, match=r"tune\.space: 'data\.split\.val' cannot be searched: "
                                          r"the data is split once before the search"):
        load_config(tuned({"data.split.val": [0.1, 0.2]}))


def test_the_metric_must_be_a_validation_metric_and_its_forms_agree():
    assert load_config(tuned({"train.epochs": [2, 3]}, metric="val.accuracy")).tune.metric == (
        "accuracy")
    assert load_config(tuned({"train.epochs": [2, 3]}, metric="val_f1")).tune.metric == "f1"
    with pytest.raises(ConfigError, match=r"tune: metric: 'test\.accuracy' is not a validation "
                                          r"metric; trials are scored on the val split"):
        load_config(tuned({"train.epochs": [2, 3]}, metric="test.accuracy"))


def test_a_path_naming_no_field_is_an_error_with_the_path_before_any_trial():
    cfg = load_config(tuned({"model.hiden": [[8], [16]], "train.epoch": {"int": [2, 5]}}))
    with pytest.raises(ConfigError) as caught:
        check(cfg)
    (hiden, hiden_says), (epoch, epoch_says) = caught.value.problems
    assert (hiden, epoch) == ("tune.space.model.hiden", "tune.space.train.epoch")
    assert hiden_says.startswith("unknown argument 'hiden'. Did you mean 'hidden'? Known: ")
    assert epoch_says.startswith("unknown key 'epoch'. Did you mean 'epochs'? Known: ")


def test_every_choice_and_range_end_is_validated_against_its_field():
    cfg = load_config(tuned({"model.activation": ["relu", "nope"],
                             "train.optimizer.lr": {"float": [-1.0, 0.1]}}))
    with pytest.raises(ConfigError) as caught:
        check(cfg)
    paths = [path for path, _ in caught.value.problems]
    assert paths == ["tune.space.model.activation", "tune.space.train.optimizer.lr"]
    assert "'nope'" in caught.value.problems[0][1]
    assert "greater than" in caught.value.problems[1][1]


def test_an_unknown_metric_and_an_enqueued_point_outside_the_space_are_errors():
    cfg = load_config(tuned({"train.epochs": {"int": [2, 4]}}, metric="acuracy",
                            enqueue=[{"train.epochs": 9}]))
    with pytest.raises(ConfigError) as caught:
        check(cfg)
    assert caught.value.problems[0] == (
        "tune.enqueue[0]", "train.epochs: 9 is outside its search space [2, 4]")
    assert caught.value.problems[1][0] == "tune.metric"
    assert "Did you mean 'accuracy'?" in caught.value.problems[1][1]


def test_a_grid_needs_a_finite_space_and_lists_every_point():
    assert Param("a", "int", low=2, high=10, step=4).grid() == [2, 6, 10]
    assert Param("b", "float", low=0.0, high=0.5, step=0.25).grid() == [0.0, 0.25, 0.5]
    assert Param("c", "choice", choices=([8], [16, 8])).grid() == ["[8]", "[16, 8]"]
    with pytest.raises(ConfigError, match=r"tune\.space\.d: the grid sampler needs a finite set"):
        Param("d", "float", low=0.0, high=1.0).grid()


def test_a_searched_parent_is_applied_before_its_children():
    cfg = load_config(tuned({"train.optimizer.lr": {"float": [0.01, 0.1]},
                             "train.optimizer": {"choice": [{"name": "sgd", "momentum": 0.9},
                                                            {"name": "adam"}]}}))
    space = Space.from_config(cfg.tune)
    assert space.paths == ["train.optimizer", "train.optimizer.lr"]
    trial_cfg = trial_config(base_config(cfg), {"train.optimizer": {"name": "sgd", "momentum": 0.9},
                                                "train.optimizer.lr": 0.05})
    assert trial_cfg.train.optimizer.name == "sgd"
    assert trial_cfg.train.optimizer.kwargs == {"momentum": 0.9, "lr": 0.05}
