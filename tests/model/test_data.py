from collections import Counter

from tierplace.model.data import load_reviews, split_of


def test_split_sizes_are_the_documented_ones() -> None:
    sizes = {s: len(load_reviews(s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 10250, "validation": 1272, "test": 1286}


def test_splits_are_disjoint_and_labelled_both_ways() -> None:
    texts = {s: {e.text for e in load_reviews(s)} for s in ("train", "validation", "test")}
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    labels = Counter(e.label for e in load_reviews("validation"))
    assert set(labels) == {0, 1} and min(labels.values()) > 400


def test_split_depends_only_on_the_text() -> None:
    text = "a gorgeous, witty, seductive movie."
    assert split_of(text) == split_of(str(text))
    assert {split_of(f"review {i}") for i in range(200)} == {"train", "validation", "test"}
