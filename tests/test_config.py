"""The config: every bad field is reported with its dotted path, overrides, schema, examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlpipe._signature import check_kwargs
from dlpipe.config import PipelineConfig, json_schema, load_config
from dlpipe.errors import ConfigError
from dlpipe.models import MODELS, SUPPLIED

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
every_example = pytest.mark.parametrize(
    "path",
    [pytest.param(p, id=p.name) for p in EXAMPLES]
    or [pytest.param(None, marks=pytest.mark.skip(reason="examples/ has no *.yaml yet"))],
)


def minimal(**sections) -> dict:
    return {"data": {"source": {"builtin": "iris"}}, **sections}


def problems_of(raw: dict, overrides=()) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(raw, overrides)
    return dict(info.value.problems)


# -- every bad field names its path --------------------------------------------------------------


def test_an_unknown_section_suggests_the_closest_one():
    # The known sections grow as stages land (compress, tune, ...), so the list is not pinned.
    with pytest.raises(ConfigError, match=r"^trian: unknown key 'trian'\. Did you mean 'train'\? "
                                          r"Known: .*\bdata, evaluate, .*\bmodel, name, .*\bseed, "
                                          r".*\btrain\b"):
        load_config(minimal(trian={"epochs": 3}))


def test_an_unknown_nested_key_suggests_the_closest_field_of_its_section():
    assert problems_of(minimal(train={"early_stopping": {"patiense": 3}})) == {
        "train.early_stopping.patiense": "unknown key 'patiense'. Did you mean 'patience'? "
        "Known: min_delta, mode, monitor, patience, restore_best"
    }
    assert problems_of({"data": {"source": {"builtin": "iris", "pth": "x.csv"}}}) == {
        "data.source.pth": "unknown key 'pth'. Did you mean 'path'? "
        "Known: builtin, encoding, format, params, path, sep"
    }


def test_a_wrong_type_names_the_field_and_the_value():
    with pytest.raises(
        ConfigError, match=r"^train\.epochs: Input should be a valid integer.*; got 'many'$"
    ):
        load_config(minimal(train={"epochs": "many"}))


def test_a_broken_constraint_names_the_field_and_the_value():
    message = r"^data\.split\.val: Input should be less than 1; got 1\.5$"
    with pytest.raises(ConfigError, match=message):
        load_config({"data": {"source": {"builtin": "iris"}, "split": {"val": 1.5}}})


def test_a_list_item_is_addressed_by_its_position():
    assert problems_of({"data": {"source": {"builtin": "iris"}, "drop_columns": ["id", 3]}}) == {
        "data.drop_columns.1": "Input should be a valid string; got 3"
    }


def test_every_problem_is_reported_at_once():
    raw = minimal(train={"epochs": 0, "batch_sise": 8}, model={"name": "mlp", "init": 3})
    with pytest.raises(ConfigError, match=r"^invalid config \(3 problems\):\n  ") as info:
        load_config(raw)
    assert [path for path, _ in info.value.problems] == [
        "model.init", "train.epochs", "train.batch_sise",
    ]


def test_a_missing_data_section_is_reported():
    assert problems_of({}) == {"data": "required field is missing"}


def test_a_column_name_in_a_mapping_is_part_of_the_path():
    raw = {"data": {"source": {"builtin": "iris"}, "columns": {"Age": "numerc"}}}
    assert list(problems_of(raw)) == ["data.columns.Age"]


def test_a_bad_union_value_is_reported_once_at_its_field():
    assert list(problems_of(minimal(evaluate={"threshold": "best"}))) == ["evaluate.threshold"]


# -- overrides -------------------------------------------------------------------------------------


def test_overrides_set_values_by_dotted_path_even_in_sections_the_file_lacks():
    config = load_config(minimal(), ["train.epochs=3", "train.optimizer.lr=0.01", "train.loss=mse"])
    assert config.train.epochs == 3
    assert config.train.optimizer.name == "adamw"  # the rest of the default stays
    assert config.train.optimizer.kwargs == {"lr": 0.01}
    assert config.train.loss is not None and config.train.loss.name == "mse"


def test_overrides_parse_values_as_yaml_and_reach_into_bare_component_names():
    config = load_config(
        minimal(train={"loss": "mse", "batch_size": 8}),
        ["model.hidden=[8, 4]", "train.loss.reduction=sum", "train.early_stopping.patience=2"],
    )
    assert config.model.kwargs == {"hidden": [8, 4]}
    assert config.train.loss.kwargs == {"reduction": "sum"}
    assert config.train.early_stopping.patience == 2
    assert config.train.batch_size == 8  # untouched values of the file stay


def test_an_override_without_a_value_is_refused():
    with pytest.raises(ConfigError, match=r"^--set: expected KEY=VALUE .*; got 'train\.epochs'$"):
        load_config(minimal(), ["train.epochs"])


def test_an_override_is_validated_like_the_file():
    assert problems_of(minimal(), ["train.epochs=0"]) == {
        "train.epochs": "Input should be greater than or equal to 1; got 0"
    }


def test_an_override_cannot_reach_inside_a_plain_value():
    with pytest.raises(ConfigError, match=r"^train\.epochs\.x: cannot set inside train\.epochs"):
        load_config(minimal(train={"epochs": 3}), ["train.epochs.x=1"])


# -- files, schema, examples -----------------------------------------------------------------------


def test_a_config_file_names_the_run_and_anchors_relative_data_paths(tmp_path):
    (tmp_path / "cfg.yaml").write_text("data:\n  source: {path: data/train.csv}\n")
    config = load_config(tmp_path / "cfg.yaml")
    assert config.name == "cfg"
    assert config.data.source.path == str(tmp_path / "data" / "train.csv")


def test_a_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope\.yaml' does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_an_exponent_without_a_dot_is_read_as_a_number(tmp_path):
    (tmp_path / "cfg.yaml").write_text(
        "data: {source: {builtin: iris}}\ntrain: {optimizer: {name: adamw, lr: 1e-3}}\n"
    )
    assert load_config(tmp_path / "cfg.yaml").train.optimizer.kwargs == {"lr": 0.001}


def test_the_json_schema_describes_every_field():
    schema = json_schema()
    assert schema["$defs"]["TrainConfig"]["properties"]["epochs"]["description"]
    sections = [schema, *schema["$defs"].values()]
    undocumented = [
        f"{section.get('title')}.{name}"
        for section in sections
        for name, field in section.get("properties", {}).items()
        if not field.get("description")
    ]
    assert not undocumented


@every_example
def test_every_example_validates(path):
    config = load_config(path)
    assert isinstance(config, PipelineConfig)


@every_example
def test_every_example_model_section_fits_its_builder(path):
    model = load_config(path).model
    assert check_kwargs(MODELS.get(model.name, "model.name"), model.kwargs, "model", SUPPLIED) == []
