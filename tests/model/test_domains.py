"""The off-domain sentiment sets (model/domains.py): the labelling rule on tiny inputs, the
error when the data is missing, and the documented counts on the files `make setup` fetches."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tierplace.model import domains
from tierplace.model.data import Example
from tierplace.model.domains import Rated, capped, label_rated, load_domain, parse_ground_truth

LINES = [
    "1\t2.5\tI love it &amp; so does she\r\n",
    "2\t-1.25\tbroke after a day",
    "3\t0.49\tit is a phone",  # neutral: below the margin
    "4\t-0.5\tnot great",  # exactly on the margin: kept, negative
    "",
    "5\t0.0\tmeh",  # neutral
    "6\t0.3\tnot great",  # repeat: mean (-0.5 + 0.3) / 2 = -0.1 -> neutral
    "7\t1.0\t  broke after a day ",  # repeat after stripping: mean -0.125 -> neutral
    "8\t0.5\tfine",  # on the margin: kept, positive
]


def test_repeats_count_once_at_their_mean_rating_in_first_seen_order() -> None:
    rows = parse_ground_truth(LINES)
    assert [r.text for r in rows] == [
        "I love it & so does she",
        "broke after a day",
        "it is a phone",
        "not great",
        "meh",
        "fine",
    ]
    by_text = {r.text: r for r in rows}
    assert by_text["not great"] == Rated("not great", pytest.approx(-0.1), 2)
    assert by_text["broke after a day"].rating == pytest.approx(-0.125)


def test_neutrals_are_dropped_and_labels_come_from_the_sign() -> None:
    out = label_rated(parse_ground_truth(LINES))
    assert out.examples == [Example("I love it & so does she", 1), Example("fine", 1)]
    assert out.neutral == 4
    strict = label_rated([Rated("a", 0.7), Rated("b", -0.9), Rated("c", 0.2)], margin=0.8)
    assert strict.examples == [Example("b", 0)] and strict.neutral == 2
    with pytest.raises(ValueError, match="margin"):
        label_rated([], margin=0.0)


def test_a_malformed_line_names_its_number() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_ground_truth(["1\t1.0\tok", "2\tno tabs here"])


def test_the_cap_is_stable_spread_by_hash_and_keeps_file_order() -> None:
    rows = [Example(f"text {i}", i % 2) for i in range(50)]
    ten = capped(rows, 10)
    twenty = capped(rows, 20)
    assert len(ten) == 10 and set(ten) <= set(twenty)
    assert [rows.index(e) for e in ten] == sorted(rows.index(e) for e in ten)
    assert ten != rows[:10]  # not the first lines of the file
    assert capped(rows, None) == rows and capped(rows, 99) == rows


def test_missing_data_says_to_run_make_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERPLACE_CACHE", str(tmp_path))
    with pytest.raises(domains.DomainDataMissing, match="make setup") as err:
        load_domain("tweets")
    assert isinstance(err.value, FileNotFoundError)
    assert str(tmp_path / "data" / domains.SOURCE) in str(err.value)
    with pytest.raises(ValueError, match="unknown domain"):
        load_domain("imdb")  # type: ignore[arg-type]


def test_reads_the_extracted_file_under_the_cache_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIERPLACE_CACHE", str(tmp_path))
    folder = tmp_path / "data" / domains.SOURCE
    folder.mkdir(parents=True)
    (folder / "nytEditorialSnippets_GroundTruth.txt").write_text("\n".join(LINES), "utf-8")
    assert [e.label for e in load_domain("nyt")] == [1, 1]
    assert load_domain("nyt", limit=1)[0] in load_domain("nyt")


def test_the_fetched_sets_have_the_documented_counts() -> None:
    """Needs `make setup` (scripts/fetch-domain-data.sh); the module docstring states these."""
    expected = {
        "tweets": (2345, 1087, 768),
        "amazon": (1743, 1233, 721),
        "nyt": (1171, 1754, 2194),
    }
    for domain, (pos, neg, neutral) in expected.items():
        got = domains.load_labelled(domain)
        labels = Counter(e.label for e in got.examples)
        assert (labels[1], labels[0], got.neutral) == (pos, neg, neutral), domain
        assert len({e.text for e in got.examples}) == len(got.examples)
