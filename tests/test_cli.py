"""The command line: exit codes, errors without tracebacks, --debug, validate, schema."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _dlpipe(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dlpipe", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def test_a_config_error_prints_one_line_without_a_traceback_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {source: {builtin: wine}}\nmodle: {name: mlp}\n")
    done = _dlpipe("validate", bad)
    assert done.returncode == 2
    # One line; the known sections grow as stages land, so only the core ones are pinned.
    line = done.stderr.strip()
    assert "\n" not in line
    assert line.startswith("error: modle: unknown key 'modle'. Did you mean 'model'? Known: ")
    assert {"data", "evaluate", "features", "model", "name", "seed", "train"} <= set(
        line.split("Known: ")[1].split(", "))
    assert "Traceback" not in done.stderr


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {source: {builtin: wine}}\nmodle: {name: mlp}\n")
    done = _dlpipe("--debug", "validate", bad)
    assert done.returncode != 0 and "Traceback" in done.stderr and "ConfigError" in done.stderr


def test_validate_accepts_the_quickstart_and_reports_builder_argument_problems(tmp_path):
    assert _dlpipe("validate", EXAMPLES / "quickstart.yaml").returncode == 0
    done = _dlpipe("validate", EXAMPLES / "quickstart.yaml", "--set", "model.hiden=[3]",
                   "--set", "train.optimizer.lr=-0.001")
    assert done.returncode == 2
    assert "model.hiden: unknown argument 'hiden'. Did you mean 'hidden'?" in done.stderr
    assert "train.optimizer.lr:" in done.stderr and "greater than 0" in done.stderr


def test_schema_prints_json_schema_with_descriptions():
    done = _dlpipe("schema")
    assert done.returncode == 0
    schema = json.loads(done.stdout)
    assert schema["$defs"]["TrainConfig"]["properties"]["epochs"]["description"] == (
        "Passes over the training split.")


def test_a_stage_on_a_folder_that_is_not_a_run_says_so(tmp_path):
    done = _dlpipe("evaluate", tmp_path)
    assert done.returncode == 2
    assert f"error: run directory: {tmp_path} is not a dlpipe run (no config.yaml)" in done.stderr


def test_a_missing_config_file_is_a_clear_error(tmp_path):
    done = _dlpipe("run", tmp_path / "nope.yaml")
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_an_unknown_option_is_a_usage_error_without_a_traceback():
    done = _dlpipe("run", EXAMPLES / "quickstart.yaml", "--no-such-option")
    assert done.returncode == 2
    assert "No such option: --no-such-option" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_stage_run_again_says_what_it_wrote_and_what_it_removed(tmp_path):
    import dlpipe
    from helpers import minimal_config

    run = dlpipe.run(minimal_config(export={}), run_dir=tmp_path / "run").path
    done = _dlpipe("train", run, "--set", "train.epochs=2", "--set", "data.split.seed=3")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "trained 2 epochs; kept epoch" in text and "weights written to" in text
    assert "note: data.split.seed=3 held for this command only" in text
    assert (f"removed the evaluate, export results (they described the previous train); to "
            f"make them again: dlpipe evaluate {run} && dlpipe export {run}") in text


def test_predict_names_the_line_of_a_csv_that_is_not_utf8_and_takes_its_encoding(tmp_path):
    import dlpipe
    from helpers import minimal_config

    frame = pd.DataFrame({"x": range(100), "city": ["Orl\xe9ans", "Paris"] * 50,
                          "label": [0, 1] * 50})
    frame["x"] = frame["x"] % 7
    frame.to_csv(tmp_path / "data.csv", index=False)
    run = dlpipe.run(minimal_config(data={"source": {"path": str(tmp_path / "data.csv")},
                                          "target": "label"}), run_dir=tmp_path / "run")
    frame.drop(columns="label").head(4).to_csv(tmp_path / "new.csv", index=False,
                                               encoding="latin-1")
    done = _dlpipe("predict", run.path, tmp_path / "new.csv", "-o", tmp_path / "out.csv")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "is not UTF-8 (line 2, byte 0xe9)" in done.stderr
    done = _dlpipe("predict", run.path, tmp_path / "new.csv", "-o", tmp_path / "out.csv",
                   "--encoding", "latin-1")
    assert done.returncode == 0, done.stderr
    assert len(pd.read_csv(tmp_path / "out.csv")) == 4
