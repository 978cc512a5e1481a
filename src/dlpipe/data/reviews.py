"""A generated sentiment corpus whose labels need word order: the `reviews` builtin data set.

Each review is one or two neutral filler sentences around one opinion sentence, whose
meaning needs word order:

- negation flips a clause: ``the battery is not great`` is negative, ``the screen was never
  disappointing`` positive (30% of clauses are negated, in either class);
- contrast (40% of reviews): in ``A , but B`` and ``although A , B`` the second clause
  decides, in ``B , although A`` the first one, and the two clauses always disagree, so a
  positive and a negative word appear together in both classes;
- intensifiers (``very``, ``truly``) and the filler carry no signal; typos in the filler and
  its random order are noise; 2.5% of the labels are flipped (as many of each class).

Measured on 4,000 reviews (3,000 to train, seeds 0-2): a scikit-learn logistic regression
on unigram counts reaches 0.59-0.61 accuracy (0.69-0.71 with bigrams); reading the words in
order with the rules above gives exactly the noise ceiling, 0.975 (tests/data/test_text.py);
the `rnn` models reach 0.96-0.97 (a BiLSTM, 6 epochs on 1,200 reviews: 0.96-0.977 over
seeds 0-4) and `textcnn`, whose windows see a few words at a time, 0.94.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["LABEL_NOISE", "make_reviews"]

LABEL_NOISE = 0.025
"""Share of reviews whose label is flipped: the ceiling of any model's accuracy is 1 minus it."""

_POSITIVE = ("good", "great", "excellent", "amazing", "wonderful", "solid", "reliable",
             "impressive", "perfect", "sturdy")
_NEGATIVE = ("bad", "poor", "terrible", "awful", "disappointing", "flimsy", "useless",
             "horrible", "mediocre", "faulty")
_NEGATIONS = ("not", "never", "hardly", "barely")
_INTENSIFIERS = ("very", "really", "extremely", "quite", "truly", "so")
_SUBJECTS = ("the battery", "the screen", "the sound", "the case", "the keyboard",
             "the price", "the delivery", "customer service", "the charger", "the design",
             "the camera", "the motor")
_VERBS = ("is", "was", "felt", "seems", "looked")
_PRODUCTS = ("blender", "phone", "kettle", "backpack", "lamp", "speaker", "drill", "jacket",
             "monitor", "toaster")
_FILLER = (
    "i bought this {product} last month .",
    "it arrived on a tuesday .",
    "my sister recommended this {product} .",
    "i use the {product} almost every day .",
    "the box was blue and white .",
    "shipping took about four days .",
    "this is my second {product} from this brand .",
    "i have had it for three weeks now .",
    "my old {product} stopped working in may .",
    "i got it as a birthday present .",
    "the instructions were in four languages .",
    "it replaced a {product} i had for years .",
)
# How the opinion sentence is built (probabilities sum to 1).
_SHAPES = {"plain": 0.6, "but": 0.18, "although_first": 0.12, "although_last": 0.10}
_P_NEGATION = 0.3     # per clause; with the contrasts, leaves a bag of words near 0.6
_P_INTENSIFIER = 0.4
_FILLERS = (1, 3)     # 1 or 2 neutral sentences per review
_P_TYPO = 0.02        # per filler word; sentiment words stay clean so the labels stay learnable


def make_reviews(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Generate `n` product reviews with balanced binary sentiment labels.

    Args:
        n: Number of reviews (at least 2); the two labels get `n // 2` and `n - n // 2`.
        seed: Seed of the generator; the same `(n, seed)` always gives the same table.

    Returns:
        A DataFrame with a `text` column (lowercase, tokens separated by spaces) and a
        `target` column: 1 positive, 0 negative (about `LABEL_NOISE` of them flipped).

    Raises:
        ValueError: `n` is smaller than 2.

    Example:
        >>> frame = make_reviews(n=6, seed=0)
        >>> frame.shape, int(frame["target"].sum())
        ((6, 2), 3)
    """
    if n < 2:
        raise ValueError(f"make_reviews: n must be at least 2; got {n}")
    rng = np.random.default_rng(seed)
    sentiment = rng.permutation(np.arange(n) < n // 2 + n % 2).astype(int)  # the true opinion
    texts = [_review(bool(s), rng) for s in sentiment]
    # Flip as many positives as negatives, so the labels stay as balanced as the opinions.
    flips = int(round(n * LABEL_NOISE / 2))
    flip = np.concatenate([rng.choice(np.flatnonzero(sentiment == k), flips, replace=False)
                           for k in (0, 1)]).astype(int)
    target = sentiment.copy()
    target[flip] = 1 - target[flip]
    return pd.DataFrame({"text": texts, "target": target})


def _review(positive: bool, rng: np.random.Generator) -> str:
    product = str(rng.choice(_PRODUCTS))
    fillers = [_typos(str(f).format(product=product), rng)
               for f in rng.choice(_FILLER, size=rng.integers(*_FILLERS), replace=False)]
    cut = int(rng.integers(0, len(fillers) + 1))  # the opinion goes anywhere among the filler
    return " ".join([*fillers[:cut], _opinion(positive, rng), *fillers[cut:]])


def _opinion(positive: bool, rng: np.random.Generator) -> str:
    shape = rng.choice(list(_SHAPES), p=list(_SHAPES.values()))
    decisive = _clause(positive, rng)
    if shape == "plain":
        return f"{decisive} ."
    other = _clause(not positive, rng)  # a contrast: the other clause says the opposite
    if shape == "but":
        return f"{other} , but {decisive} ."
    if shape == "although_first":
        return f"although {other} , {decisive} ."
    return f"{decisive} , although {other} ."


def _clause(positive: bool, rng: np.random.Generator) -> str:
    """`<subject> <verb> [negation] [intensifier] <word>` whose meaning is `positive`."""
    negated = bool(rng.random() < _P_NEGATION)
    pool = _NEGATIVE if positive == negated else _POSITIVE  # a negation flips the word
    words = [str(rng.choice(_SUBJECTS)), str(rng.choice(_VERBS))]
    if negated:
        words.append(str(rng.choice(_NEGATIONS)))
    if rng.random() < _P_INTENSIFIER:
        words.append(str(rng.choice(_INTENSIFIERS)))
    words.append(str(rng.choice(pool)))
    return " ".join(words)


def _typos(sentence: str, rng: np.random.Generator) -> str:
    """Swap two neighbouring letters in about `_P_TYPO` of the words of a filler sentence."""
    words = sentence.split(" ")
    for i, word in enumerate(words):
        if len(word) > 3 and rng.random() < _P_TYPO:
            j = int(rng.integers(0, len(word) - 1))
            words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2:]
    return " ".join(words)
