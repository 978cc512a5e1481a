"""One trial: the metric reaches Optuna every epoch, and the pruner's verdict reaches the loop."""

import optuna
import pytest

import dlpipe
from dlpipe.config import load_config
from dlpipe.errors import ConfigError
from dlpipe.tune.objective import BEST_EPOCH, EPOCHS, Search, metric_value
from helpers import minimal_config

EPOCHS_PER_TRIAL = 6


def tuned(**options):
    cfg = minimal_config(tune={"space": {"train.optimizer.lr": {"float": [1e-7, 0.1],
                                                                "log": True}}, **options})
    cfg["train"]["epochs"] = EPOCHS_PER_TRIAL
    return cfg


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A run directory with splits and fitted features, shared by the tests of this file."""
    path = tmp_path_factory.mktemp("objective") / "run"
    return dlpipe.run(tuned(), run_dir=path, stages=("data", "features")).rundir


def test_pruning_reaches_optuna_and_stops_the_bad_trial_early(prepared):
    search = Search.prepare(load_config(tuned()), prepared)
    study = optuna.create_study(direction=search.direction,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1,
                                                                   n_warmup_steps=0))
    study.enqueue_trial({"train.optimizer.lr": 0.05})   # learns: val_loss drops at once
    study.enqueue_trial({"train.optimizer.lr": 1e-7})   # barely moves: worse than the median
    study.optimize(search, n_trials=2)
    good, bad = study.trials
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert sorted(good.intermediate_values) == list(range(1, EPOCHS_PER_TRIAL + 1))
    # The Optuna TrialPruned contract: raised inside fit, it reached `optimize` unwrapped.
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert bad.user_attrs[EPOCHS] == len(bad.intermediate_values) < EPOCHS_PER_TRIAL
    assert bad.intermediate_values[1] > good.intermediate_values[1]


def test_a_trials_value_is_its_best_epochs_metric(prepared):
    cfg = load_config(tuned(metric="val.accuracy"))
    search = Search.prepare(cfg, prepared)
    assert (search.key, search.direction) == ("val_accuracy", "maximize")
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"train.optimizer.lr": 0.01})
    study.optimize(search, n_trials=1)
    trial = study.trials[0]
    per_epoch = trial.intermediate_values
    assert trial.value == max(per_epoch.values())
    assert per_epoch[trial.user_attrs[BEST_EPOCH]] == trial.value


def test_the_averaged_weights_count_when_they_validate_better():
    metrics = {"val_loss": 0.5, "ema_val_loss": 0.4, "val_accuracy": 0.8, "ema_val_accuracy": 0.7}
    assert metric_value(metrics, "val_loss", maximize=False) == 0.4
    assert metric_value(metrics, "val_accuracy", maximize=True) == 0.8
    assert metric_value({"val_roc_auc": float("nan")}, "val_roc_auc", maximize=True) is None


def test_a_metric_that_does_not_fit_the_task_fails_before_any_trial(prepared):
    with pytest.raises(ConfigError, match=r"tune\.metric: metric 'r2' does not apply to a binary "
                                          r"task; use loss or one of: .*accuracy"):
        Search.prepare(load_config(tuned(metric="r2")), prepared)
