"""A stream whose domain changes partway (issue 18): the rows of several table sets, one
segment after another, each segment in a seeded order. What the domain-shift replay consumes.

Pure: table sets in (``tables.build_tables`` for the movie test split,
``tables.build_domain_tables`` for an off-domain set), one ``TableSet`` in stream order out,
with each row's segment and its row in the set it came from. ``simulate`` replays the stream
as it replays a split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tierplace.evaluation.table_set import IntArray, TableSet, TierTable


@dataclass(frozen=True)
class Stream:
    """Rows in stream order: ``tables`` (labels and every table, row ``i`` is request ``i``),
    ``segment[i]`` indexes ``segments`` (the names of the sets, in order), ``origin[i]`` is the
    row's index in its own set."""

    tables: TableSet
    segment: IntArray
    segments: tuple[str, ...]
    origin: IntArray

    def __len__(self) -> int:
        return len(self.segment)

    def rows(self, segment: int) -> IntArray:
        """Stream positions of one segment (contiguous, in order)."""
        return np.flatnonzero(self.segment == segment).astype(np.int64)

    @property
    def starts(self) -> tuple[int, ...]:
        """The stream position where each segment begins (``starts[1]`` is the shift)."""
        return tuple(int(np.searchsorted(self.segment, s)) for s in range(len(self.segments)))


def segment_order(n: int, take: int | None, seed: int, index: int) -> IntArray:
    """Which rows of a set of ``n`` a segment takes, in stream order: the first ``take`` of
    shuffled passes over the set, each pass a permutation seeded by ``(seed, index, pass)``, so
    a segment's order depends on neither the other segments nor ``take`` (a longer segment
    begins with the shorter one). ``take`` above ``n`` replays the set in further passes: the
    online bound needs more requests than a labelled set of a few thousand rows holds."""
    if take is not None and take < 0:
        raise ValueError(f"segment {index}: cannot take {take} rows")
    if n == 0 and take:
        raise ValueError(f"segment {index}: cannot take {take} rows of an empty set")
    want = n if take is None else take
    passes = max(1, -(-want // n)) if n else 1
    order: IntArray = np.concatenate(
        [
            np.random.default_rng([seed, index] + ([p] if p else [])).permutation(n)
            for p in range(passes)
        ]
    ).astype(np.int64)
    return order[:want]


def _concat(name: str, parts: Sequence[tuple[TableSet, IntArray]]) -> TableSet:
    """The chosen rows of every part, one after another; only the tables all parts hold."""
    keys = set.intersection(*(set(ts.tables) for ts, _ in parts))
    if not keys:
        raise ValueError("the sets share no (variant, input) table")
    tables: dict[tuple[str, str], TierTable] = {}
    for key in sorted(keys):
        chunks = [(ts.tables[key], rows) for ts, rows in parts]
        shapes = {c.probs.shape[1:] for c, _ in chunks}
        if len(shapes) != 1:
            raise ValueError(f"{key[0]}@{key[1]}: exits and classes differ between sets: {shapes}")
        tables[key] = TierTable(
            key[0],
            key[1],
            np.concatenate([c.probs[rows] for c, rows in chunks]),
            np.concatenate([c.num_tokens[rows] for c, rows in chunks]),
            np.concatenate([c.in_bytes[rows] for c, rows in chunks]),
        )
    labels = np.concatenate([ts.labels[rows] for ts, rows in parts]).astype(np.int64)
    return TableSet(name, labels, tables)


def stream(segments: Sequence[tuple[TableSet, int | None]], seed: int = 0) -> Stream:
    """``segments`` one after another: from each set, ``take`` rows (None: all) in a seeded
    order (``segment_order``)."""
    if not segments:
        raise ValueError("a stream needs at least one segment")
    parts = [
        (ts, segment_order(len(ts.labels), take, seed, i)) for i, (ts, take) in enumerate(segments)
    ]
    names = tuple(ts.split for ts, _ in segments)
    return Stream(
        tables=_concat(">".join(names), parts),
        segment=np.concatenate(
            [np.full(len(rows), i, dtype=np.int64) for i, (_, rows) in enumerate(parts)]
        ),
        segments=names,
        origin=np.concatenate([rows for _, rows in parts]).astype(np.int64),
    )


def shifted_stream(
    movies: TableSet,
    other: TableSet,
    n_other: int | None = None,
    n_movies: int | None = None,
    seed: int = 0,
) -> Stream:
    """Movie sentences (``movies``: the test split's tables), then ``n_other`` rows of another
    domain (``other``: ``build_domain_tables``): segment 0, then segment 1, each in a seeded
    order; None takes every row of that set."""
    return stream([(movies, n_movies), (other, n_other)], seed)
