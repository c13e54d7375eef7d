"""The shifted stream (evaluation/shift.py) on tiny hand-made table sets: no models."""

from __future__ import annotations

import numpy as np
import pytest

from tierplace.evaluation.shift import segment_order, shifted_stream, stream
from tierplace.evaluation.table_set import TableSet, TierTable


def _set(name: str, n: int, offset: float, keys: tuple[str, ...] = ("text",)) -> TableSet:
    """``n`` rows whose every value says which row it was: probs[i, :, 0] = offset + i."""
    tables = {}
    for source in keys:
        probs = np.zeros((n, 2, 2), dtype=np.float32)
        probs[:, :, 0] = (offset + np.arange(n))[:, None]
        tables[("v", source)] = TierTable(
            "v",
            source,
            probs,
            np.arange(n, dtype=np.int64) + int(offset),
            np.arange(n, dtype=np.int64) * 10 + int(offset),
        )
    return TableSet(name, np.arange(n, dtype=np.int64) % 2, tables)


MOVIES = _set("test", 8, 0.0)
TWEETS = _set("tweets", 6, 100.0)


def test_movies_then_the_other_domain_with_a_segment_per_row() -> None:
    s = shifted_stream(MOVIES, TWEETS, n_other=4, seed=3)
    assert len(s) == 12 and s.segments == ("test", "tweets")
    assert s.segment.tolist() == [0] * 8 + [1] * 4
    assert s.starts == (0, 8)
    assert s.rows(1).tolist() == [8, 9, 10, 11]
    assert s.tables.split == "test>tweets"
    # every column follows the same row: the table, the tokens, the bytes and the label
    t = s.tables.get("v", "text")
    offset = np.where(s.segment == 0, 0, 100)
    assert (t.probs[:, 0, 0] == offset + s.origin).all()
    assert (t.num_tokens == offset + s.origin).all()
    assert (t.in_bytes == offset + s.origin * 10).all()
    assert (s.tables.labels == s.origin % 2).all()
    assert sorted(s.origin[:8].tolist()) == list(range(8))  # every movie row once
    assert len(set(s.origin[8:].tolist())) == 4


def test_the_order_is_fixed_by_the_seed_and_a_segment_by_its_own_seed() -> None:
    a = shifted_stream(MOVIES, TWEETS, n_other=4, seed=3)
    b = shifted_stream(MOVIES, TWEETS, n_other=4, seed=3)
    c = shifted_stream(MOVIES, TWEETS, n_other=4, seed=4)
    assert a.origin.tolist() == b.origin.tolist()
    assert a.origin.tolist() != c.origin.tolist()
    assert a.origin[:8].tolist() != list(range(8))  # shuffled, not in file order
    longer = shifted_stream(MOVIES, TWEETS, n_other=6, seed=3)
    assert longer.origin[:12].tolist() == a.origin.tolist()  # a longer tail extends it
    fewer_movies = shifted_stream(MOVIES, TWEETS, n_other=4, n_movies=5, seed=3)
    assert fewer_movies.origin[:5].tolist() == a.origin[:5].tolist()
    assert fewer_movies.origin[5:].tolist() == a.origin[8:].tolist()


def test_only_the_tables_both_sets_hold_and_mismatches_refused() -> None:
    both = stream([(_set("a", 3, 0.0, ("text", "k")), None), (_set("b", 2, 50.0), None)])
    assert set(both.tables.tables) == {("v", "text")}
    with pytest.raises(ValueError, match="share no"):
        stream([(_set("a", 3, 0.0, ("k",)), None), (_set("b", 2, 0.0), None)])
    wide = TableSet(
        "w",
        np.zeros(2, dtype=np.int64),
        {
            ("v", "text"): TierTable(
                "v", "text", np.zeros((2, 3, 2), np.float32), np.zeros(2, np.int64),
                np.zeros(2, np.int64),
            )
        },
    )  # fmt: skip
    with pytest.raises(ValueError, match="exits and classes differ"):
        stream([(MOVIES, None), (wide, None)])
    with pytest.raises(ValueError, match="cannot take -1 rows"):
        shifted_stream(MOVIES, TWEETS, n_other=-1)


def test_segment_order_is_a_prefix_of_one_permutation() -> None:
    full = segment_order(20, None, seed=1, index=1)
    assert sorted(full.tolist()) == list(range(20))
    assert segment_order(20, 5, seed=1, index=1).tolist() == full[:5].tolist()
    assert segment_order(20, None, seed=1, index=0).tolist() != full.tolist()


def test_a_segment_longer_than_its_set_replays_it_in_shuffled_passes() -> None:
    three = segment_order(20, 50, seed=1, index=1)
    assert three[:20].tolist() == segment_order(20, None, seed=1, index=1).tolist()
    for start in (20, 40):
        chunk = three[start : start + 20].tolist()
        assert len(set(chunk)) == len(chunk)  # each pass takes every row at most once
    assert sorted(three[20:40].tolist()) == list(range(20))
    assert three[20:40].tolist() != three[:20].tolist()  # a new order each pass
