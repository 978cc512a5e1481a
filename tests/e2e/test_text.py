"""Text columns through the whole pipeline: tokenizers fitted on train, the recurrent model,
predict on raw strings, and the bad inputs the CLI must refuse with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

import dlpipe
from dlpipe.errors import DataError
from helpers import minimal_config

SMALL_RNN = {"name": "rnn", "embedding_dim": 32, "hidden": 32, "bidirectional": True,
             "head": [32], "head_dropout": 0.1}


def reviews_config(n: int = 1500, **train):
    return minimal_config(
        data={"source": {"builtin": "reviews", "params": {"n": n, "seed": 0}},
              "split": {"val": 0.15, "test": 0.2}},
        features={"text": {"max_length": 32}},
        model=SMALL_RNN,
        train={"epochs": 15, "batch_size": 64, "progress": "never", "grad_clip": 1.0,
               "optimizer": {"name": "adamw", "lr": 0.01}, **train})


@pytest.mark.slow
def test_a_bilstm_learns_word_order_and_predicts_raw_strings_like_evaluate(tmp_path):
    result = dlpipe.run(reviews_config(), run_dir=tmp_path / "run")
    assert result.metrics["test"]["accuracy"] >= 0.88  # bag of words: ~0.60 on this corpus

    rows = pd.read_parquet(result.path / "data" / "test.parquet").drop(columns=["target"])
    evaluated = pd.read_parquet(result.path / "predictions" / "test.parquet")
    predictor = dlpipe.load(result.path)
    again = predictor.predict(rows)
    assert (again.labels == evaluated["predicted"].to_numpy()).all()
    np.testing.assert_allclose(again.probabilities[:, 1], evaluated["probability_1"],
                               rtol=0, atol=1e-6)
    # raw strings, as a list: order matters to the model, as it does to the labels
    texts = ["the battery is great .", "the battery is not great .",
             "the screen was awful , but the sound is excellent ."]
    assert list(predictor.predict(texts).labels) == [1, 0, 1]


def test_the_tokenizer_is_fitted_on_train_only_and_saved_as_json(tmp_path):
    result = dlpipe.run(reviews_config(n=400, epochs=1), run_dir=tmp_path / "run")
    document = json.loads((result.path / "features.json").read_text())
    text = document["text"]["text"]
    vocabulary = set(text["fitted"]["vocabulary"]) if "fitted" in text else None
    train = pd.read_parquet(result.path / "data" / "train.parquet")
    train_words = {w for t in train["text"] for w in t.lower().replace(",", " , ").split()}
    if vocabulary is not None:
        assert vocabulary - {"[PAD]", "[UNK]"} <= train_words
    [block] = document["layout"]
    assert block["kind"] == "text" and block["width"] == 32
    assert block["vocab_size"] == len(text["fitted"]["vocabulary"])


def test_bpe_subwords_run_end_to_end(tmp_path):
    config = reviews_config(n=400, epochs=1)
    config["features"] = {"text": {"tokenizer": "bpe", "max_vocab": 300, "max_length": 40}}
    result = dlpipe.run(config, run_dir=tmp_path / "run")
    assert json.loads((result.path / "features.json").read_text())["layout"][0][
        "vocab_size"] <= 300


def run_cli(tmp_path, config) -> subprocess.CompletedProcess[str]:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "dlpipe", "run", str(tmp_path / "c.yaml"),
                           "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)


def text_table(tmp_path, texts) -> str:
    frame = pd.DataFrame({"review": texts, "label": [i % 2 for i in range(len(texts))]})
    frame.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    return str(tmp_path / "t.jsonl")


def test_a_non_string_text_names_the_row(tmp_path):
    texts = [f"review number {i} says the thing was good" for i in range(40)]
    texts[7] = 12345
    frame = pd.DataFrame({"review": texts, "label": [i % 2 for i in range(40)]})
    with pytest.raises(DataError, match=r"row 7.*12345"):
        dlpipe.run(minimal_config(data={"target": "label", "columns": {"review": "text"}},
                                  model=SMALL_RNN), data=frame, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize(("bad", "message"), [("   ", r"row 7.*empty"), ("", r"row 7")])
def test_an_empty_text_names_the_row_and_exits_2(tmp_path, bad, message):
    texts = [f"review number {i} says the thing was good" for i in range(40)]
    texts[7] = bad
    done = run_cli(tmp_path, minimal_config(
        data={"source": {"path": text_table(tmp_path, texts)}, "target": "label",
              "columns": {"review": "text"}}, model=SMALL_RNN))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    import re

    assert re.search(message, done.stdout + done.stderr), done.stdout + done.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_text_folder_with_one_class_is_refused(tmp_path):
    (tmp_path / "docs" / "pos").mkdir(parents=True)
    for i in range(5):
        (tmp_path / "docs" / "pos" / f"{i}.txt").write_text(f"good thing number {i}")
    with pytest.raises(DataError, match=r"pos"):
        dlpipe.run(minimal_config(data={"source": {"path": str(tmp_path / "docs")}},
                                  model=SMALL_RNN), run_dir=tmp_path / "run")


def test_a_text_folder_trains_and_long_strings_are_inferred_as_text(tmp_path):
    from dlpipe.data.reviews import make_reviews

    frame = make_reviews(n=300, seed=1)
    for i, row in frame.iterrows():
        folder = tmp_path / "docs" / ("pos" if row["target"] else "neg")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.txt").write_text(row["text"])
    result = dlpipe.run(minimal_config(data={"source": {"path": str(tmp_path / "docs")}},
                                       model=SMALL_RNN, train={"epochs": 1, "progress": "never"}),
                        run_dir=tmp_path / "run")
    schema = json.loads((result.path / "schema.json").read_text())
    assert schema["columns"] == [{"name": "text", "kind": "text", "dtype": schema["columns"][0][
        "dtype"]}]

    frame.to_csv(tmp_path / "reviews.csv", index=False)  # no data.columns: inferred
    inferred = dlpipe.run(minimal_config(data={"source": {"path": str(tmp_path / "reviews.csv")}},
                                         model=SMALL_RNN, train={"epochs": 1, "progress": "never"}),
                          run_dir=tmp_path / "csv")
    assert json.loads((inferred.path / "schema.json").read_text())["columns"][0]["kind"] == "text"


def test_mixed_numeric_categorical_binary_and_text_columns_train_one_model(tmp_path):
    config = minimal_config(
        data={"source": {"builtin": "returns", "params": {"n": 600, "seed": 0}},
              "target": "returned"},
        features={"categorical": "embedding", "text": {"max_length": 24}},
        model={"name": "multi", "encoders": {"review": {"name": "rnn", "hidden": 16,
                                                        "embedding_dim": 16}},
               "hidden": [16]},
        train={"epochs": 2, "progress": "never"})
    result = dlpipe.run(config, run_dir=tmp_path / "run")
    layout = json.loads((result.path / "features.json").read_text())["layout"]
    assert [b["kind"] for b in layout] == ["tabular", "text"]
    rows = pd.read_parquet(result.path / "data" / "test.parquet").drop(columns=["returned"])
    evaluated = pd.read_parquet(result.path / "predictions" / "test.parquet")
    again = dlpipe.load(result.path).predict(rows.to_dict(orient="records"))
    np.testing.assert_allclose(again.probabilities[:, 1], evaluated["probability_1"],
                               rtol=0, atol=1e-6)
