"""TextFeatures: word vocabularies and subword tokenizers fitted on the training split, ids cut
and padded, JSON round trips, and errors that name the row or the setting."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dlpipe.errors import ConfigError, DataError
from dlpipe.features.base import NotFittedError
from dlpipe.features.text import SPECIAL_TOKENS, TextFeatures, pad_ids

pytest.importorskip("tokenizers")

TRAIN = pd.DataFrame({"review": [
    "The battery is great.",
    "the battery is not great!",
    "Great screen, bad battery",
    "the screen is the best",
]})
SUBWORDS = ("bpe", "wordpiece")


def frame(*texts: str, index=None) -> pd.DataFrame:
    return pd.DataFrame({"review": list(texts)}, index=index)


# -- word level ----------------------------------------------------------------------------------


def test_the_word_vocabulary_is_ordered_by_count_then_token_after_the_special_tokens():
    features = TextFeatures("review").fit(TRAIN)
    # counts: the 5, battery 3, great 3, is 3, screen 2, then one each, ties by token
    assert features.vocabulary_ == [
        "[PAD]", "[UNK]", "the", "battery", "great", "is", "screen", "!", ",", ".", "bad",
        "best", "not"]
    assert features.vocab_size_ == 13


def test_word_ids_come_from_the_training_texts_only_and_unseen_words_are_oov():
    features = TextFeatures("review", max_length=6).fit(TRAIN)
    x = features.transform(frame("THE battery is purple"))
    assert x.dtype == np.float32 and x.shape == (1, 6)
    assert x.tolist() == [[2, 3, 5, 1, 0, 0]]  # purple → 1, then padding


def test_min_frequency_and_max_vocab_limit_the_vocabulary():
    assert TextFeatures("review", min_frequency=3).fit(TRAIN).vocabulary_ == [
        *SPECIAL_TOKENS, "the", "battery", "great", "is"]
    capped = TextFeatures("review", max_vocab=4).fit(TRAIN)
    assert capped.vocabulary_ == [*SPECIAL_TOKENS, "the", "battery"]
    assert capped.transform(frame("great battery")).max() < capped.vocab_size_


def test_lowercase_and_pattern_change_the_tokens():
    cased = TextFeatures("review", lowercase=False).fit(TRAIN)
    assert "The" in cased.vocabulary_ and "Great" in cased.vocabulary_
    words_only = TextFeatures("review", pattern=r"[a-z]+").fit(TRAIN)
    assert "!" not in words_only.vocabulary_ and "," not in words_only.vocabulary_


def test_the_length_is_the_percentile_of_training_token_counts_unless_given():
    texts = frame(*[" ".join(["w"] * n) for n in range(1, 101)])  # 1 .. 100 tokens
    assert TextFeatures("review").fit(texts).length_ == 96  # 95th percentile, rounded up
    assert TextFeatures("review", length_percentile=50).fit(texts).length_ == 51
    assert TextFeatures("review", max_length=7).fit(texts).length_ == 7
    assert TextFeatures("review", length_percentile=1).fit(frame("!")).length_ == 1


def test_truncation_drops_the_tail_by_default_or_the_head():
    texts = frame("a b c d e f", "a b")
    end = TextFeatures("review", max_length=3).fit(texts)
    start = TextFeatures("review", max_length=3, truncation="start").fit(texts)
    a, b, c, d, e, f = (end.vocabulary_.index(t) for t in "abcdef")
    assert end.transform(texts).tolist() == [[a, b, c], [a, b, 0]]
    assert start.transform(texts).tolist() == [[d, e, f], [a, b, 0]]  # padding stays right


def test_pad_ids_cuts_and_pads():
    assert pad_ids([[5, 6, 7], [8], []], 2).tolist() == [[5, 6], [8, 0], [0, 0]]
    assert pad_ids([[5, 6, 7]], 2, "start").tolist() == [[6, 7]]


def test_oov_rate_counts_unknown_tokens_before_truncation():
    features = TextFeatures("review", max_length=1).fit(TRAIN)
    assert features.oov_rate(frame("battery purple orange", "great")) == pytest.approx(2 / 4)
    assert features.oov_rate(TRAIN) == 0.0


# -- subwords (Hugging Face tokenizers) ----------------------------------------------------------


@pytest.mark.parametrize("tokenizer", SUBWORDS)
def test_subword_tokenizers_keep_pad_0_and_unk_1_and_split_unseen_words(tokenizer):
    features = TextFeatures("review", tokenizer=tokenizer, max_vocab=60).fit(TRAIN)
    assert features.vocabulary_[:2] == list(SPECIAL_TOKENS)
    assert features.vocab_size_ == len(features.vocabulary_) <= 60
    (ids,) = features.encode(["screens"])  # an unseen word, built from subwords
    assert len(ids) > 1 and 1 not in ids
    (ids,) = features.encode(["€"])  # a character never seen in training
    assert ids == [1]
    x = features.transform(frame("the screen", "zzz battery is great"))
    assert x.dtype == np.float32 and x.shape == (2, features.length_)
    assert (x < features.vocab_size_).all() and (x[0, 2:] == 0).all()


def test_bpe_training_is_deterministic():
    first = TextFeatures("review", tokenizer="bpe", max_vocab=60).fit(TRAIN).to_json()
    assert TextFeatures("review", tokenizer="bpe", max_vocab=60).fit(TRAIN).to_json() == first


# -- JSON ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer", ["word", *SUBWORDS])
def test_a_json_round_trip_reproduces_transform(tokenizer):
    features = TextFeatures("review", tokenizer=tokenizer, max_vocab=50,
                            truncation="start").fit(TRAIN)
    data = json.loads(json.dumps(features.to_json()))  # plain JSON: no pickle, no code
    loaded = TextFeatures.from_json(data)
    test = frame("the battery is not bad at all", "screen!")
    np.testing.assert_array_equal(loaded.transform(test), features.transform(test))
    assert loaded.vocabulary_ == features.vocabulary_ and loaded.length_ == features.length_
    assert data["params"]["truncation"] == "start"


# -- errors ----------------------------------------------------------------------------------------


def test_an_empty_text_names_the_row_at_fit_and_at_transform():
    with pytest.raises(DataError, match=r"column 'review', row 'b': empty text"):
        TextFeatures("review").fit(frame("fine", " ", index=["a", "b"]))
    features = TextFeatures("review").fit(TRAIN)
    with pytest.raises(DataError, match=r"column 'review', row 5: missing value; 2 rows"):
        features.transform(frame("ok", None, 3, index=[4, 5, 6]))


def test_a_missing_text_column_is_named():
    with pytest.raises(DataError, match=r"text column 'review' is missing; the data has body"):
        TextFeatures("review").fit(pd.DataFrame({"body": ["x"]}))


def test_an_empty_training_split_is_refused():
    with pytest.raises(DataError, match="the training split has no rows"):
        TextFeatures("review").fit(frame())


def test_transform_before_fit_says_to_fit():
    with pytest.raises(NotFittedError, match="call fit"):
        TextFeatures("review").transform(TRAIN)


def test_every_bad_setting_is_named_at_once():
    features = TextFeatures("review", tokenizer="sentencepiece", truncation="middle",
                            min_frequency=0, max_vocab=2, max_length=0, length_percentile=0,
                            pattern="(")
    with pytest.raises(ConfigError) as info:
        features.fit(TRAIN)
    fields = [path for path, _ in info.value.problems]
    assert fields == [f"features.text.{name}" for name in (
        "tokenizer", "truncation", "min_frequency", "max_vocab", "max_length",
        "length_percentile", "pattern")]
    assert "unknown value 'sentencepiece'. Known: bpe, word, wordpiece" in str(info.value)


@pytest.mark.parametrize("pattern", [r"\w*", r"(\w+)"])
def test_a_pattern_that_matches_nothing_or_has_groups_is_refused(pattern):
    with pytest.raises(ConfigError, match=r"features\.text\.pattern: must match one token"):
        TextFeatures("review", pattern=pattern).fit(TRAIN)
