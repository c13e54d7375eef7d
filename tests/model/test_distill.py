"""Distillation: lower tiers learning the cloud's judgement, across vocabularies."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tierplace.model import artifacts
from tierplace.model.train import DEFAULTS, Loss, TrainConfig, train_variant


def test_without_a_teacher_or_weight_the_loss_is_plain_cross_entropy() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.1]])
    labels = torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(Loss(TrainConfig())(logits, labels, None), ce)
    off = Loss(TrainConfig(distill_weight=0.0))
    assert torch.allclose(off(logits, labels, torch.tensor([[-5.0, 5.0]] * 2)), ce)


def test_the_distillation_term_vanishes_when_the_student_matches_the_teacher() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.1]])
    labels = torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy(logits, labels)
    same = Loss(TrainConfig(distill_weight=0.25))(logits, labels, logits.clone())
    assert torch.allclose(same, 0.75 * ce)


def test_a_step_on_the_distillation_loss_moves_the_student_toward_the_teacher() -> None:
    student = torch.tensor([[1.0, -1.0]], requires_grad=True)
    teacher = torch.tensor([[-2.0, 2.0]])
    loss = Loss(TrainConfig(distill_weight=1.0))(student, torch.tensor([0]), teacher)
    loss.backward()  # type: ignore[no-untyped-call]
    assert student.grad is not None
    moved = student.detach() - 0.5 * student.grad
    before = torch.softmax(student.detach(), -1)[0, 1]
    assert torch.softmax(moved, -1)[0, 1] > before


def test_cascade_aware_training_weighs_down_rows_the_teacher_gets_wrong() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.3, 0.1]])
    labels = torch.tensor([0, 1])
    teacher = torch.tensor([[3.0, -3.0], [3.0, -3.0]])  # right on row 0, wrong on row 1
    per_row = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    cfg = TrainConfig(distill_weight=0.0, cascade_weight=0.25)
    expected = (per_row[0] + 0.25 * per_row[1]) / 1.25
    assert torch.allclose(Loss(cfg)(logits, labels, teacher), expected)
    # Without a teacher there is nothing to weigh by: plain cross-entropy.
    assert torch.allclose(Loss(cfg)(logits, labels, None), per_row.mean())
    # Weight 1 is plain distillation, exactly.
    plain = Loss(TrainConfig(distill_weight=0.5))(logits, labels, teacher)
    same = Loss(TrainConfig(distill_weight=0.5, cascade_weight=1.0))(logits, labels, teacher)
    assert torch.allclose(plain, same)


@pytest.fixture
def student_home(tiny_model_home: Path, tmp_path: Path) -> tuple[Path, str]:
    """A models folder holding only the tiny cloud (the teacher), and the tiny edge encoder."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "mpnet-base").symlink_to(tiny_model_home / "models" / "mpnet-base")
    return models, str(tiny_model_home / "tiny-encoders" / "minilm-l6")


@pytest.mark.slow
def test_a_student_distils_across_vocabularies_and_says_so(
    student_home: tuple[Path, str],
) -> None:
    """A BERT-vocabulary edge learns from the MPNet-vocabulary cloud through `train_variant`."""
    models, encoder = student_home
    cfg = replace(DEFAULTS["minilm-l6"], epochs=1, lr=2e-3, head_epochs=2, limit=500, max_length=48)
    meta = train_variant("minilm-l6", models / "minilm-l6", cfg, encoder, False)
    assert meta.training["teacher"] == "mpnet-base"
    assert artifacts.load(models / "minilm-l6").meta.training["distill_weight"] == 0.5


@pytest.mark.slow
def test_a_student_is_refused_a_teacher_that_trained_on_its_validation_rows(
    student_home: tuple[Path, str],
) -> None:
    models, encoder = student_home
    cfg = replace(DEFAULTS["minilm-l6"], epochs=1, limit=50, validation_tenths=2)
    with pytest.raises(ValueError, match="held out 1 validation tenths, this variant 2"):
        train_variant("minilm-l6", models / "minilm-l6", cfg, encoder, False)
    assert not (models / "minilm-l6").exists()


def test_teachers_train_before_their_students() -> None:
    from tierplace.model.train import training_order, with_teacher

    order = training_order(["minilm-l2", "minilm-l6", "mpnet-base"], DEFAULTS)
    assert order[0] == "mpnet-base" and sorted(order) == ["minilm-l2", "minilm-l6", "mpnet-base"]
    assert training_order(["minilm-l6"], DEFAULTS) == ["minilm-l6"]
    off = with_teacher(DEFAULTS, "none")
    assert all(c.teacher is None for c in off.values())
    edge = with_teacher(DEFAULTS, "minilm-l6")
    assert edge["minilm-l6"].teacher is None and edge["mpnet-base"].teacher == "minilm-l6"
    cyclic = {**DEFAULTS, "mpnet-base": replace(DEFAULTS["mpnet-base"], teacher="minilm-l2")}
    with pytest.raises(ValueError, match="cycle"):
        training_order(["minilm-l2", "mpnet-base"], cyclic)
