"""Tiny variants built from configs: the whole model tier in seconds, for tests and demos.

Same families as the real ones (a BERT-like vocabulary shared by the two MiniLM variants, a
different MPNet vocabulary for the cloud), same artifact layout, briefly trained on real
review rows so their confidences spread out instead of sitting at 0.5.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    MPNetConfig,
    MPNetModel,
    MPNetTokenizer,
)

from tierplace.api.variants import VARIANTS
from tierplace.model.data import load_reviews
from tierplace.model.train import DEFAULTS, train_variant, training_order

_BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_MPNET_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "[UNK]", "<mask>"]
# (layers, hidden) per variant: small enough for seconds, deep enough to have early exits.
TINY_SHAPES = {"minilm-l2": (2, 32), "minilm-l6": (3, 48), "mpnet-base": (4, 64)}


def _words(limit: int) -> list[str]:
    counts: Counter[str] = Counter()
    for ex in load_reviews("train"):
        counts.update(re.findall(r"\w+|[^\w\s]", ex.text.lower()))
    return [w for w, _ in counts.most_common(limit)]


def build_encoder(directory: Path, family: str, layers: int, hidden: int, vocab: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    special = _MPNET_SPECIAL if family == "mpnet" else _BERT_SPECIAL
    tokens = special + [w for w in vocab if w not in special]
    common: dict[str, Any] = dict(
        vocab_size=len(tokens),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=514,
    )
    tok: BertTokenizer | MPNetTokenizer
    table = {t: i for i, t in enumerate(tokens)}
    if family == "mpnet":
        tok = MPNetTokenizer(vocab=table)
        MPNetModel(MPNetConfig(pad_token_id=tok.pad_token_id, **common)).save_pretrained(directory)
    else:
        tok = BertTokenizer(vocab=table, do_lower_case=True)
        BertModel(BertConfig(pad_token_id=tok.pad_token_id, **common)).save_pretrained(directory)
    tok.model_max_length = 512
    tok.save_pretrained(directory)


def make_tiny_home(home: Path, train_rows: int = 4000, progress: bool = False) -> Path:
    """Write tiny trained variants to ``home/models/<variant>``; returns ``home``."""
    vocab = _words(3000)
    for name in training_order(list(TINY_SHAPES), DEFAULTS):  # the cloud teaches the others
        layers, hidden = TINY_SHAPES[name]
        encoder_dir = home / "tiny-encoders" / name
        build_encoder(encoder_dir, VARIANTS[name].tokenizer, layers, hidden, vocab)
        cfg = replace(
            DEFAULTS[name], epochs=2, lr=2e-3, head_epochs=5, limit=train_rows, max_length=48
        )
        train_variant(
            name, home / "models" / name, cfg, encoder=str(encoder_dir), progress=progress
        )
    return home
