"""A generated table with numeric, categorical, binary and text columns: the `returns` builtin.

Each row is an order: the product's `price` (numeric), its `category` (categorical), whether
the buyer is `verified` (binary) and the buyer's `review` (text, from `make_reviews`, so its
sentiment needs word order). The target, `returned`, needs all of them::

    returned = 1 when the review is negative and (price > 60 or category is clothing),
               or when category is clothing and the buyer is not verified

with 3% of the labels flipped. A model that reads only the table, or only the text, misses
part of the rule; the `multi` model reads both (examples/mixed.yaml).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dlpipe.data.reviews import make_reviews

__all__ = ["CATEGORIES", "make_returns"]

CATEGORIES = ("electronics", "kitchen", "clothing", "outdoor", "toys")
_LABEL_NOISE = 0.03


def make_returns(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Generate `n` orders with a `returned` target (1 returned, 0 kept).

    Args:
        n: Number of orders (at least 2).
        seed: Seed of the generator; the same `(n, seed)` always gives the same table.

    Returns:
        A DataFrame with columns `price`, `category`, `verified`, `review` and `returned`.

    Example:
        >>> make_returns(n=4, seed=0).columns.tolist()
        ['price', 'category', 'verified', 'review', 'returned']
    """
    reviews = make_reviews(n=n, seed=seed)
    rng = np.random.default_rng(seed + 7919)  # apart from the reviews' own stream
    price = np.round(rng.lognormal(mean=np.log(45.0), sigma=0.6, size=n), 2)
    category = rng.choice(CATEGORIES, size=n)
    verified = rng.random(n) < 0.7
    negative = reviews["target"].to_numpy() == 0
    clothing = category == "clothing"
    returned = (negative & ((price > 60) | clothing)) | (clothing & ~verified)
    flip = rng.random(n) < _LABEL_NOISE
    return pd.DataFrame({
        "price": price,
        "category": category,
        "verified": verified,
        "review": reviews["text"].to_numpy(),
        "returned": (returned ^ flip).astype(np.int64),
    })
