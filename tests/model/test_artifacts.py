"""Saving, loading and training variants, including users' own BERT checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizer

from tierplace.model import artifacts, repository
from tierplace.model.tiny import _words


def test_a_saved_variant_loads_with_identical_answers(
    tiny_model_home: Path, tmp_path: Path
) -> None:
    first = artifacts.load(tiny_model_home / "models" / "mpnet-base")
    ids = first.tokenizer(["an utterly charming film"], return_tensors="pt")
    before = first.model.infer(ids["input_ids"], ids["attention_mask"], threshold=1.01)
    artifacts.save(tmp_path / "copy", first.model, first.tokenizer, first.meta)
    second = artifacts.load(tmp_path / "copy")
    after = second.model.infer(ids["input_ids"], ids["attention_mask"], threshold=1.01)
    assert torch.equal(before.probs, after.probs)
    assert second.meta.exit_accuracy == first.meta.exit_accuracy


def test_metadata_records_size_and_per_exit_accuracy(tiny_model_home: Path) -> None:
    meta = json.loads((tiny_model_home / "models" / "minilm-l6" / "tierplace.json").read_text())
    assert meta["num_layers"] == 3 and len(meta["exit_accuracy"]) == 3
    assert all(0.5 < a <= 1.0 for a in meta["exit_accuracy"])
    assert meta["params"] > 0 and meta["labels"] == ["negative", "positive"]


def user_checkpoint(directory: Path) -> Path:
    """A user's own small BERT checkpoint, built from a config (no hub)."""
    vocab = {
        t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_words(500)])
    }
    BertTokenizer(vocab=vocab).save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    BertModel(config).save_pretrained(directory)
    return directory


def train_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tierplace.cli", "train", "--variant", "minilm-l6", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)


def test_the_quick_profile_keeps_the_encoder_and_is_replaced_only_by_a_full_one(
    tmp_path: Path,
) -> None:
    ckpt = user_checkpoint(tmp_path / "my-bert")
    out = tmp_path / "models"
    common = ("--encoder", str(ckpt), "--out", str(out), "--limit", "200")
    done = train_cli(*common, "--profile", "quick")
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((out / "minilm-l6" / "tierplace.json").read_text())
    assert meta["training"]["profile"] == "quick" and meta["training"]["epochs"] == 0
    assert len(meta["exit_accuracy"]) == 2
    # The packaged (here: the user's) encoder is served as it is; only exit heads learned.
    trained = artifacts.load(out / "minilm-l6").model.backbone.encoder.state_dict()
    original = BertModel.from_pretrained(str(ckpt)).state_dict()
    assert all(torch.equal(trained[k], original[k]) for k in original if k in trained)
    assert "already trained (quick)" in train_cli(*common, "--profile", "quick").stdout
    # A full training replaces a quick variant; a quick one never replaces a full one.
    done = train_cli(*common, "--epochs", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((out / "minilm-l6" / "tierplace.json").read_text())
    assert meta["training"]["profile"] == "full"
    assert "already trained (full)" in train_cli(*common, "--profile", "quick").stdout
    assert not list(out.glob(".*"))  # no half-written folder left beside it


def test_train_accepts_any_bert_checkpoint_directory(tmp_path: Path) -> None:
    """A user's own checkpoint (here a small BERT built from a config) trains through the CLI."""
    ckpt = user_checkpoint(tmp_path / "my-bert")
    out = tmp_path / "models"
    cmd = [
        sys.executable,
        "-m",
        "tierplace.cli",
        "train",
        "--variant",
        "minilm-l6",
        "--encoder",
        str(ckpt),
        "--out",
        str(out),
        "--limit",
        "200",
        "--epochs",
        "1",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((out / "minilm-l6" / "tierplace.json").read_text())
    assert meta["encoder"] == str(ckpt) and meta["num_layers"] == 2
    assert len(meta["exit_accuracy"]) == 2
    assert artifacts.load(out / "minilm-l6").model.num_layers == 2
    # its catalogue teacher (the cloud variant) is not trained here: said, and skipped
    assert "training without distillation" in done.stderr
    assert meta["training"]["teacher"] is None


def test_committed_model_repository_matches_the_catalogue() -> None:
    from tierplace import paths

    assert repository.stale(paths.model_repository()) == []
