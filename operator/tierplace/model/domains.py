"""Labelled sentiment text that is not movie reviews: the off-domain sets of the domain-shift
replay (issue 18). For evaluation and replay only: nothing is trained or tuned on them, so they
have no split.

Where the text comes from: the human-rated snippets of C.J. Hutto and E. Gilbert, "VADER: A
Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text", ICWSM 2014
(MIT-licensed), shipped inside the ``vaderSentiment==3.3.2`` SOURCE package on PyPI
(``additional_resources/hutto_ICWSM_2014.tar.gz``; the wheel does not carry them). ``make
setup`` (scripts/fetch-domain-data.sh) downloads that sdist once, checks its sha256 and
extracts the ``*_GroundTruth.txt`` files into ``~/.cache/tierplace/data/vaderSentiment-3.3.2``
(``$TIERPLACE_CACHE`` overrides the root). Each line is ``id<TAB>mean rating<TAB>text``: the mean
of about 20 raters' sentiment intensities from -4 (extremely negative) to +4.

The sets: ``tweets`` (4,200 tweets), ``amazon`` (3,708 product-review sentences), ``nyt``
(5,190 New York Times opinion-piece sentences). The fourth file, movie-review snippets, holds
the same Rotten Tomatoes sentences as the in-domain data (``data.load_reviews``) and is unused.

The labelling rule (``label_rated``), the same for every set:

1. the text is HTML-unescaped (the tweets say ``&amp;``) and stripped;
2. a text that occurs more than once counts once, at the mean of its ratings (10 texts of
   amazon and 71 of nyt occur twice or more: 3,697 and 5,119 distinct texts);
3. a text whose mean rating is within ``NEUTRAL_MARGIN`` (0.5) of zero is neutral and dropped:
   the binary model has no neutral class, and such a label would be a coin toss;
4. label 1 (positive, like Rotten Tomatoes' "fresh") for a positive rating, 0 for a negative
   one, as ``data.Example`` and ``api.variants.LABELS`` have them.

Kept (positive / negative) and dropped as neutral: tweets 3,432 (2,345 / 1,087), 768 dropped;
amazon 2,976 (1,743 / 1,233), 721 dropped; nyt 2,925 (1,171 / 1,754), 2,194 dropped
(``tests/model/test_domains.py`` holds these numbers).
"""

from __future__ import annotations

import hashlib
import html
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tierplace.model.data import Example

Domain = Literal["tweets", "amazon", "nyt"]
DOMAINS: tuple[Domain, ...] = ("tweets", "amazon", "nyt")

#: Names the package the text came from; part of every cache key built from these sets.
SOURCE = "vaderSentiment-3.3.2"

#: Mean ratings with an absolute value below this are neutral (dropped).
NEUTRAL_MARGIN = 0.5

_FILES: dict[Domain, str] = {
    "tweets": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}


class DomainDataMissing(FileNotFoundError):
    """The extracted files are not there: ``make setup`` fetches them."""


@dataclass(frozen=True)
class Rated:
    """One distinct text and the mean of its ratings (over ``times`` lines of the file)."""

    text: str
    rating: float
    times: int = 1


@dataclass(frozen=True)
class Labelled:
    """What the rule kept, and how many texts it dropped as neutral."""

    examples: list[Example]
    neutral: int


def data_dir() -> Path:
    """Where scripts/fetch-domain-data.sh extracts the files."""
    root = os.environ.get("TIERPLACE_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "tierplace"
    return base / "data" / SOURCE


def parse_ground_truth(lines: Iterable[str]) -> list[Rated]:
    """``id<TAB>rating<TAB>text`` lines to distinct texts in first-seen order, a repeated
    text at the mean of its ratings (rule steps 1 and 2). Blank lines are skipped."""
    sums: dict[str, tuple[float, int]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != 3:
            raise ValueError(f"line {number}: expected id, rating and text, got {line!r}")
        text = html.unescape(parts[2]).strip()
        if not text:
            continue
        total, times = sums.get(text, (0.0, 0))
        sums[text] = (total + float(parts[1]), times + 1)
    return [Rated(text, total / times, times) for text, (total, times) in sums.items()]


def label_rated(rows: Iterable[Rated], margin: float = NEUTRAL_MARGIN) -> Labelled:
    """Rule steps 3 and 4: drop ``|rating| < margin`` as neutral, label the rest by sign."""
    if margin <= 0:
        raise ValueError(f"margin must be positive (a zero rating has no sign), got {margin}")
    kept: list[Example] = []
    neutral = 0
    for row in rows:
        if abs(row.rating) < margin:
            neutral += 1
        else:
            kept.append(Example(row.text, 1 if row.rating > 0 else 0))
    return Labelled(kept, neutral)


def capped(examples: list[Example], limit: int | None) -> list[Example]:
    """At most ``limit`` rows, kept in file order: those with the smallest sha1 of the text.

    The files are grouped by source document (an article, a product), so the first N lines
    would be a few documents; the hash spreads the cap over the whole set, and a larger cap
    keeps every row of a smaller one."""
    if limit is None or limit >= len(examples):
        return list(examples)
    ranked = sorted(
        range(len(examples)),
        key=lambda i: hashlib.sha1(examples[i].text.encode("utf-8")).hexdigest(),
    )
    chosen = set(ranked[:limit])
    return [e for i, e in enumerate(examples) if i in chosen]


def domain_file(domain: Domain) -> Path:
    if domain not in _FILES:
        raise ValueError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    path = data_dir() / _FILES[domain]
    if not path.is_file():
        raise DomainDataMissing(
            f"the {domain} sentiment set is missing ({path}): run `make setup`, which fetches "
            f"it from the {SOURCE} source package on PyPI (scripts/fetch-domain-data.sh)"
        )
    return path


def load_labelled(domain: Domain, margin: float = NEUTRAL_MARGIN) -> Labelled:
    """Every labelled example of ``domain`` with the count the rule dropped as neutral."""
    text = domain_file(domain).read_text(encoding="utf-8")
    return label_rated(parse_ground_truth(text.splitlines()), margin)


def load_domain(
    domain: Domain, limit: int | None = None, margin: float = NEUTRAL_MARGIN
) -> list[Example]:
    """The labelled examples of one off-domain set, in file order (``capped`` to ``limit``)."""
    return capped(load_labelled(domain, margin).examples, limit)
