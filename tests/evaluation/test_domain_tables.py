"""Per-exit tables for the off-domain sets (tables.build_domain_tables): cached under a key
that names the source package, the set and its rows; no review split is read. Tiny variants,
a few hand-made rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tierplace.evaluation import tables
from tierplace.evaluation.tables import build_domain_tables, domain_key
from tierplace.model import domains

VARIANTS = ["minilm-l2", "minilm-l6", "mpnet-base"]
TWEETS = ["1\t2.0\tso happy today", "2\t-1.5\tworst day ever", "3\t0.1\tat the bus stop"]
NYT = ["1_1\t-1.0\tThe plan failed.", "1_2\t1.2\tA welcome decision.", "1_3\t-2\tA disgrace."]


@pytest.fixture
def vader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake extracted VADER folder under a cache root of its own."""
    monkeypatch.setenv("TIERPLACE_CACHE", str(tmp_path))
    folder = tmp_path / "data" / domains.SOURCE
    folder.mkdir(parents=True)
    (folder / "tweets_GroundTruth.txt").write_text("\n".join(TWEETS), "utf-8")
    (folder / "nytEditorialSnippets_GroundTruth.txt").write_text("\n".join(NYT), "utf-8")
    return folder


def test_the_key_names_the_source_the_set_and_its_rows() -> None:
    texts, labels = ["a", "b"], np.asarray([1, 0], dtype=np.int64)
    key = domain_key("tweets", texts, labels)
    assert key.startswith(f"{domains.SOURCE}.tweets.")
    assert domain_key("tweets", texts, labels) == key
    assert domain_key("nyt", texts, labels) != key
    assert domain_key("tweets", texts, np.asarray([1, 1], dtype=np.int64)) != key
    assert domain_key("tweets", ["a"], labels[:1]) != key


def test_domain_tables_are_cached_per_domain(eval_home: Path, vader: Path) -> None:
    cache = eval_home / "eval" / "tables"
    tables.SPLIT_READS.clear()
    tweets = build_domain_tables(VARIANTS, "tweets", (1.0,))
    assert tables.SPLIT_READS == []  # no review split is read for a domain
    assert tweets.split == "tweets" and tweets.labels.tolist() == [1, 0]
    assert tweets.get("mpnet-base", "text").probs.shape[0] == 2
    tweet_files = set(cache.glob(f"*-{domains.SOURCE}.tweets.*.npz"))
    assert len(tweet_files) == 3  # one per variant on the original text

    nyt = build_domain_tables(VARIANTS, "nyt", (1.0,))
    assert nyt.labels.tolist() == [0, 1, 0]
    nyt_files = set(cache.glob(f"*-{domains.SOURCE}.nyt.*.npz"))
    assert len(nyt_files) == 3 and not nyt_files & tweet_files

    again = build_domain_tables(VARIANTS, "tweets", (1.0,))  # from the cache
    assert set(cache.glob("*.npz")) == tweet_files | nyt_files
    for key, table in tweets.tables.items():
        assert np.array_equal(again.tables[key].probs, table.probs)


def test_review_splits_are_still_read_and_recorded(eval_home: Path) -> None:
    tables.SPLIT_READS.clear()
    val = tables.build_tables(VARIANTS, "validation", (1.0,), limit=4)
    assert tables.SPLIT_READS == ["validation"] and val.split == "validation"
    assert list((eval_home / "eval" / "tables").glob("mpnet-base-*-validation-4-text-top-v1.npz"))
