"""The model-input block of one text column (`TextFeatures`): tokens → ids, cut and padded.

Each text becomes `length_` token ids stored as float32 (docs/CONTRACTS.md)::

    text ─lowercase─► tokens (regex words, or BPE / WordPiece subwords) ─ids─► [5, 2, 9, 1]
         ─truncate to length_─► ─right-pad with 0─► [5, 2, 9, 1, 0, 0]

Id 0 is padding and id 1 the out-of-vocabulary token (``[PAD]`` and ``[UNK]``), for every
tokenizer. The vocabulary (word level) or the trained subword tokenizer (its own JSON, from
Hugging Face `tokenizers`) is fitted on the training split only and saved as JSON, never
pickle.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import pandas as pd

from dlpipe.data.text import check_text
from dlpipe.errors import ConfigError, DataError, suggest
from dlpipe.features.base import check_fitted

__all__ = ["OOV", "PAD", "SPECIAL_TOKENS", "TOKENIZERS", "TRUNCATIONS", "TextFeatures"]

TOKENIZERS = ("word", "bpe", "wordpiece")
TRUNCATIONS = ("end", "start")
PAD, OOV = 0, 1
SPECIAL_TOKENS = ("[PAD]", "[UNK]")
"""The tokens of ids 0 (padding) and 1 (out of vocabulary), first in every vocabulary."""

_FIELD = "features.text"


class TextFeatures:
    """Turn one text column into a float32 (N, length_) block of token ids.

    Args:
        column: The text column (every cell a non-empty string).
        tokenizer: ``word`` (regex split, vocabulary of whole tokens), ``bpe`` or
            ``wordpiece`` (subwords trained with Hugging Face `tokenizers` on the training
            texts, split first by `pattern`).
        lowercase: Lowercase texts before tokenizing.
        pattern: Regular expression matching one word (`re.findall` semantics).
        min_frequency: Word level: tokens seen fewer times in training become ``[UNK]``.
            Subwords: the fewest occurrences of a pair for the trainer to merge it.
        max_vocab: Largest vocabulary, ``[PAD]`` and ``[UNK]`` included (word level: the
            most frequent tokens are kept, ties broken by the token).
        max_length: Ids kept per text; None: the `length_percentile` of the training texts'
            token counts (at least 1).
        length_percentile: Percentile of training token counts used when `max_length` is None.
        truncation: ``end`` keeps the first tokens of a long text, ``start`` the last ones.

    Attributes:
        vocabulary_: The tokens, index = id (``[PAD]``, ``[UNK]``, then the learned ones).
        vocab_size_: ``len(vocabulary_)``; every id is below it.
        length_: Ids per text, the width of the block.

    Example:
        >>> features = TextFeatures("review", max_length=32).fit(train)
        >>> x = features.transform(test)            # (N, 32) float32 ids, 0 = padding
        >>> features.vocabulary_[:3], features.oov_rate(test)
        (['[PAD]', '[UNK]', 'the'], 0.012)
    """

    def __init__(
        self,
        column: str,
        *,
        tokenizer: str = "word",
        lowercase: bool = True,
        pattern: str = r"\w+|[^\w\s]",
        min_frequency: int = 1,
        max_vocab: int = 20000,
        max_length: int | None = None,
        length_percentile: float = 95.0,
        truncation: str = "end",
    ) -> None:
        self.column = column
        self.tokenizer = tokenizer
        self.lowercase = lowercase
        self.pattern = pattern
        self.min_frequency = min_frequency
        self.max_vocab = max_vocab
        self.max_length = max_length
        self.length_percentile = length_percentile
        self.truncation = truncation

    # -- fit / transform ---------------------------------------------------------------------

    def fit(self, frame: pd.DataFrame) -> Self:
        """Learn the vocabulary (or train the subword tokenizer) and the length on `frame`.

        Raises:
            ConfigError: a bad setting, named as ``features.text.<field>``.
            DataError: the column is missing, the split has no rows, or a text is empty or
                not a string (naming the row).
        """
        regex = self._check_params()
        texts = self._texts(frame)
        if not texts:
            raise DataError(f"column {self.column!r}: the training split has no rows; the "
                            f"vocabulary is learned from it")
        if self.tokenizer == "word":
            self._regex = regex
            words = [self._words(text) for text in texts]
            self._set_vocabulary(_word_vocabulary(words, self.min_frequency, self.max_vocab))
            counts = [len(w) for w in words]
        else:
            self._set_tokenizer(_train_subwords(texts, self))
            counts = [len(ids) for ids in self._encode_subwords(texts)]
        if self.max_length is not None:
            self.length_ = int(self.max_length)
        else:
            self.length_ = max(1, math.ceil(np.percentile(counts, self.length_percentile)))
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Return the float32 (N, length_) token ids of the rows of `frame`, 0-padded.

        Raises:
            DataError: the column is missing, or a text is empty or not a string (naming the
                column, the row and how many rows are bad).
        """
        check_fitted(self, "length_")
        return pad_ids(self.encode(self._texts(frame)), self.length_, self.truncation)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, neither cut nor padded (no checks: see `transform`)."""
        check_fitted(self, "length_")
        if self.tokenizer == "word":
            lookup = self._lookup
            return [[lookup.get(token, OOV) for token in self._words(text)] for text in texts]
        return self._encode_subwords(texts)

    def oov_rate(self, frame: pd.DataFrame) -> float:
        """Share of the tokens of `frame` that are out of vocabulary (``[UNK]``), in [0, 1].

        Counted before truncation; a rise at serve time means the texts drift away from the
        training vocabulary. 0.0 for texts without tokens.
        """
        ids = self.encode(self._texts(frame))
        total = sum(len(row) for row in ids)
        return sum(row.count(OOV) for row in ids) / total if total else 0.0

    # -- JSON ------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Constructor arguments and fitted state as plain JSON data; a subword tokenizer is
        stored as its own JSON document (`tokenizers.Tokenizer.to_str`)."""
        check_fitted(self, "length_")
        fitted: dict[str, Any] = {"length": self.length_}
        if self.tokenizer == "word":
            fitted["vocabulary"] = list(self.vocabulary_)
        else:
            fitted["tokenizer"] = self._hf.to_str()
        return {"params": self._params(), "fitted": fitted}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild a fitted TextFeatures from `to_json`'s output (no code is run)."""
        params = dict(data["params"])
        obj = cls(params.pop("column"), **params)
        regex = obj._check_params()
        fitted = data["fitted"]
        if obj.tokenizer == "word":
            obj._regex = regex
            obj._set_vocabulary(list(fitted["vocabulary"]))
        else:
            from tokenizers import Tokenizer

            obj._set_tokenizer(Tokenizer.from_str(fitted["tokenizer"]))
        obj.length_ = int(fitted["length"])
        return obj

    # -- helpers ---------------------------------------------------------------------------------

    def _params(self) -> dict[str, Any]:
        return {"column": self.column, "tokenizer": self.tokenizer,
                "lowercase": bool(self.lowercase), "pattern": self.pattern,
                "min_frequency": int(self.min_frequency), "max_vocab": int(self.max_vocab),
                "max_length": None if self.max_length is None else int(self.max_length),
                "length_percentile": float(self.length_percentile),
                "truncation": self.truncation}

    def _texts(self, frame: pd.DataFrame) -> list[str]:
        if not isinstance(frame, pd.DataFrame):
            frame = pd.DataFrame(frame)
        if self.column not in frame.columns:
            raise DataError(f"text column {self.column!r} is missing; the data has "
                            f"{', '.join(map(str, frame.columns)) or 'no columns'}")
        return check_text(frame[self.column], self.column).tolist()

    def _words(self, text: str) -> list[str]:
        return self._regex.findall(text.lower() if self.lowercase else text)

    def _set_vocabulary(self, vocabulary: list[str]) -> None:
        self.vocabulary_ = vocabulary
        self.vocab_size_ = len(vocabulary)
        # The special tokens are never looked up: a text's "[UNK]" is the tokens "[", "unk", "]".
        self._lookup = {token: i for i, token in enumerate(vocabulary) if i > OOV}

    def _set_tokenizer(self, tokenizer: Any) -> None:
        self._hf = tokenizer
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.vocabulary_ = [token for token, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        self.vocab_size_ = len(self.vocabulary_)

    def _encode_subwords(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]

    def _check_params(self) -> re.Pattern[str]:
        """Raise a ConfigError listing every bad setting; return the compiled `pattern`."""
        problems: list[tuple[str, str]] = []
        if self.tokenizer not in TOKENIZERS:
            problems.append((f"{_FIELD}.tokenizer", _choice(self.tokenizer, TOKENIZERS)))
        if self.truncation not in TRUNCATIONS:
            problems.append((f"{_FIELD}.truncation", _choice(self.truncation, TRUNCATIONS)))
        for name, low in (("min_frequency", 1), ("max_vocab", len(SPECIAL_TOKENS) + 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                problems.append((f"{_FIELD}.{name}", f"must be an integer of at least {low}; "
                                                     f"got {value!r}"))
        if self.max_length is not None and (not isinstance(self.max_length, int)
                                            or isinstance(self.max_length, bool)
                                            or self.max_length < 1):
            problems.append((f"{_FIELD}.max_length", f"must be an integer of at least 1 or "
                                                     f"null; got {self.max_length!r}"))
        if not (isinstance(self.length_percentile, int | float)
                and 0 < self.length_percentile <= 100):
            problems.append((f"{_FIELD}.length_percentile",
                             f"must be in (0, 100]; got {self.length_percentile!r}"))
        regex = None
        try:
            regex = re.compile(self.pattern)
        except (re.error, TypeError) as exc:
            problems.append((f"{_FIELD}.pattern", f"is not a valid regular expression "
                                                  f"({exc}); got {self.pattern!r}"))
        if regex is not None and (regex.groups or regex.match("") is not None):
            problems.append((f"{_FIELD}.pattern", f"must match one token, with no capturing "
                             f"groups (use (?:...)) and never the empty string; got "
                             f"{self.pattern!r}"))
        if problems:
            raise ConfigError(problems)
        return regex  # type: ignore[return-value]


def pad_ids(ids: Sequence[Sequence[int]], length: int, truncation: str = "end") -> np.ndarray:
    """Cut each id list to `length` (dropping its tail, or its head for ``start``) and
    right-pad it with 0.

    Returns:
        float32 (len(ids), length); ids are exact in float32 below 2**24.

    Example:
        >>> pad_ids([[5, 6, 7], [8]], 2).tolist()
        [[5.0, 6.0], [8.0, 0.0]]
    """
    out = np.zeros((len(ids), length), dtype=np.float32)  # (N, L), 0 = padding
    for i, row in enumerate(ids):
        kept = row[:length] if truncation == "end" else row[max(0, len(row) - length):]
        out[i, :len(kept)] = kept
    return out


def _word_vocabulary(words: Sequence[Sequence[str]], min_frequency: int,
                     max_vocab: int) -> list[str]:
    """The special tokens, then tokens by falling count, ties by the token (deterministic)."""
    counts = Counter(token for row in words for token in row)
    kept = sorted((t for t, c in counts.items() if c >= min_frequency),
                  key=lambda t: (-counts[t], t))
    return [*SPECIAL_TOKENS, *kept[:max_vocab - len(SPECIAL_TOKENS)]]


def _train_subwords(texts: Sequence[str], settings: TextFeatures) -> Any:
    """A BPE or WordPiece `tokenizers.Tokenizer` trained on `texts`.

    The texts are split by `pattern` first (like the word level) and the pieces never
    cross a word. BPE training is deterministic; WordPiece training in `tokenizers` is not
    (huggingface/tokenizers#1794: ties between merges depend on hash order), so refitting may
    give a slightly different vocabulary; a fitted one, saved in features.json, is stable.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    unk = SPECIAL_TOKENS[OOV]
    options = {"vocab_size": settings.max_vocab, "min_frequency": settings.min_frequency,
               "special_tokens": list(SPECIAL_TOKENS), "show_progress": False}
    if settings.tokenizer == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=unk))
        trainer = trainers.BpeTrainer(**options)
    else:
        tokenizer = Tokenizer(models.WordPiece(unk_token=unk))
        trainer = trainers.WordPieceTrainer(**options)
    if settings.lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    try:
        regex = Regex(settings.pattern)  # Oniguruma, not Python's re: a few patterns differ
    except Exception as exc:  # tokenizers raises a bare Exception for a bad pattern
        raise ConfigError([(f"{_FIELD}.pattern", f"tokenizers cannot compile {settings.pattern!r}"
                                                 f" ({exc}); simplify the pattern or use "
                                                 f"tokenizer: word")]) from None
    # invert=True: the pattern matches the pieces to keep, the rest (spaces) is dropped.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(regex, behavior="removed", invert=True)
    tokenizer.train_from_iterator(texts, trainer, length=len(texts))
    for token, expected in zip(SPECIAL_TOKENS, (PAD, OOV), strict=True):
        if tokenizer.token_to_id(token) != expected:  # an invariant of the trainers
            raise RuntimeError(f"the trained tokenizer gave {token} id "
                               f"{tokenizer.token_to_id(token)}, not {expected}")
    return tokenizer


def _choice(value: Any, allowed: Sequence[str]) -> str:
    return f"unknown value {value!r}. {suggest(str(value), allowed)}"
