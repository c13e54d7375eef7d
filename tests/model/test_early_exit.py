"""Layer-by-layer execution and early exit on small models built from configs."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

from tierplace.model.backbone import Backbone
from tierplace.model.early_exit import EarlyExitClassifier, confidence


def _encoder(kind: str, attn: str = "sdpa") -> BertModel | MPNetModel:
    torch.manual_seed(0)
    common = dict(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=80,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if kind == "mpnet":
        return MPNetModel(MPNetConfig(**common)).eval()
    cfg = BertConfig(**common)
    cfg._attn_implementation = attn
    return BertModel(cfg).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[2, 17, 33, 9, 41, 3], [2, 50, 3, 0, 0, 0], [2, 7, 8, 3, 0, 0]])
    return ids, (ids != 0).long()


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_layer_by_layer_matches_the_encoder(kind: str) -> None:
    encoder = _encoder(kind)
    ids, mask = _batch()
    with torch.no_grad():
        reference = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        backbone = Backbone(encoder)
        hidden, inp = backbone.embed(ids, mask)
        for i in range(backbone.num_layers):
            hidden = backbone.layer(i, hidden, inp)
            real = mask.unsqueeze(-1).bool()
            expected = reference.hidden_states[i + 1]
            assert torch.allclose(hidden * real, expected * real, atol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_cls_attention_equals_the_encoders_own_attention_row(kind: str) -> None:
    encoder = _encoder(kind, attn="eager")
    ids, mask = _batch()
    with torch.no_grad():
        out = encoder(input_ids=ids, attention_mask=mask, output_attentions=True)
        backbone = Backbone(encoder)
        hidden, inp = backbone.embed(ids, mask)
        for i in range(backbone.num_layers):
            row = backbone.cls_attention(i, hidden, inp)
            expected = out.attentions[i][:, :, 0, :].mean(dim=1)
            assert torch.allclose(row, expected, atol=1e-5)
            assert torch.allclose(row.sum(-1), torch.ones(len(ids)))
            assert bool((row[mask == 0] == 0).all())
            hidden = backbone.layer(i, hidden, inp)


def test_truncating_layers_keeps_the_lowest_ones() -> None:
    encoder = _encoder("bert")
    first = encoder.encoder.layer[0]
    backbone = Backbone(encoder, num_layers=2)
    assert backbone.num_layers == 2 and encoder.config.num_hidden_layers == 2
    assert backbone.encoder.encoder.layer[0] is first
    with pytest.raises(ValueError, match=r"num_layers must be in 1\.\.2"):
        Backbone(encoder, num_layers=3)


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_thresholds_pick_the_exit(kind: str) -> None:
    model = EarlyExitClassifier(Backbone(_encoder(kind))).eval()
    ids, mask = _batch()
    first = model.infer(ids, mask, threshold=0.0)
    assert first.exit_layer.tolist() == [1, 1, 1]
    last = model.infer(ids, mask, threshold=1.01)
    assert last.exit_layer.tolist() == [4, 4, 4]
    mixed = model.infer(ids, mask, threshold=torch.tensor([0.0, 1.01, 0.0]))
    assert mixed.exit_layer.tolist() == [1, 4, 1]
    # The answer at an exit does not depend on which other rows shared the batch.
    assert torch.allclose(mixed.probs[1], last.probs[1], atol=1e-5)
    assert torch.allclose(mixed.probs[0], first.probs[0], atol=1e-5)


def test_rows_exit_where_their_confidence_first_passes() -> None:
    model = EarlyExitClassifier(Backbone(_encoder("bert"))).eval()
    ids, mask = _batch()
    with torch.no_grad():
        per_exit = [torch.softmax(lg, -1) for lg in model(ids, mask)]
    conf = torch.stack([confidence(p, "confidence") for p in per_exit], dim=1)  # [B, exits]
    threshold = float(conf.median())
    result = model.infer(ids, mask, threshold=threshold)
    for row in range(len(ids)):
        passing = (conf[row] >= threshold).nonzero()
        expected = int(passing[0]) + 1 if len(passing) else 4
        assert int(result.exit_layer[row]) == expected
        assert torch.allclose(result.probs[row], per_exit[expected - 1][row], atol=1e-5)


def test_padding_does_not_change_a_rows_answer() -> None:
    model = EarlyExitClassifier(Backbone(_encoder("mpnet"))).eval()
    ids, mask = _batch()
    alone = model.infer(ids[1:2, :3], mask[1:2, :3], threshold=1.01, importance=True)
    padded = model.infer(ids, mask, threshold=1.01, importance=True)
    assert torch.allclose(alone.probs[0], padded.probs[1], atol=1e-5)
    assert padded.importance is not None and alone.importance is not None
    assert torch.allclose(alone.importance[0], padded.importance[1, :3], atol=1e-5)


def test_entropy_metric_is_one_minus_normalised_entropy() -> None:
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]])
    value = confidence(probs, "entropy")
    assert value[0] == pytest.approx(0.0, abs=1e-6)
    assert value[1] == pytest.approx(1.0, abs=1e-6)
    assert 0.5 < float(value[2]) < 0.6
