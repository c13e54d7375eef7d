from collections import Counter

import pytest

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


def test_a_larger_calibration_share_takes_training_rows_and_leaves_test_alone() -> None:
    one = {s: {e.text for e in load_reviews(s)} for s in ("train", "validation", "test")}
    rows = {s: load_reviews(s, 2) for s in ("train", "validation", "test")}
    two = {s: {e.text for e in r} for s, r in rows.items()}
    assert {s: len(r) for s, r in rows.items()} == {
        "train": 8962,
        "validation": 2560,
        "test": 1286,
    }
    assert two["test"] == one["test"]
    assert one["validation"] < two["validation"] and two["train"] < one["train"]
    assert not two["train"] & two["validation"]


@pytest.mark.parametrize("tenths", [0, 5])
def test_a_calibration_share_outside_the_documented_range_is_refused(tenths: int) -> None:
    with pytest.raises(ValueError, match="validation_tenths must be 1 to 4"):
        load_reviews("validation", tenths)
    with pytest.raises(ValueError, match="validation_tenths must be 1 to 4"):
        split_of("any text", tenths)
