"""A trained variant on disk: HF encoder + tokenizer, exit heads, and a metadata JSON.

The layout is what Triton's model.py loads (from a volume in Kubernetes, from
``$TIERPLACE_HOME/models/<variant>`` here)::

    <dir>/encoder/        config.json, model.safetensors, tokenizer files
    <dir>/exits.safetensors
    <dir>/tierplace.json  variant, sizes, per-exit validation accuracy, training record
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from tierplace.model.backbone import Backbone
from tierplace.model.early_exit import EarlyExitClassifier
from tierplace.model.profiles import METADATA as METADATA
from tierplace.model.profiles import swap_in


@dataclass
class VariantMetadata:
    variant: str
    encoder: str
    model_type: str
    tokenizer: str
    num_layers: int
    hidden_size: int
    labels: list[str]
    max_length: int
    params: int
    exit_accuracy: list[float] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: Path) -> VariantMetadata:
        return cls(**json.loads((directory / METADATA).read_text()))

    def write(self, directory: Path) -> None:
        (directory / METADATA).write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass
class LoadedVariant:
    model: EarlyExitClassifier
    tokenizer: PreTrainedTokenizerBase
    meta: VariantMetadata


def build(
    encoder_dir: Path, num_layers: int | None = None, num_labels: int = 2
) -> tuple[EarlyExitClassifier, PreTrainedTokenizerBase]:
    """A fresh early-exit classifier on top of any BERT-family checkpoint directory."""
    _quiet_transformers()
    encoder = AutoModel.from_pretrained(str(encoder_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir))
    return EarlyExitClassifier(Backbone(encoder, num_layers), num_labels), tokenizer


def save(
    directory: Path,
    model: EarlyExitClassifier,
    tokenizer: PreTrainedTokenizerBase,
    meta: VariantMetadata,
) -> None:
    """Written beside ``directory`` and swapped in whole: a server loading the variant (or a
    crash mid-write) never meets half of one."""
    staged = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    model.backbone.encoder.save_pretrained(str(staged / "encoder"))
    tokenizer.save_pretrained(str(staged / "encoder"))
    state = {k: v.detach().contiguous() for k, v in model.exits.state_dict().items()}
    save_file(state, str(staged / "exits.safetensors"))
    meta.write(staged)
    swap_in(staged, directory)


def load(directory: Path) -> LoadedVariant:
    if not (directory / METADATA).exists():
        raise FileNotFoundError(
            f"no trained variant in {directory} (missing {METADATA}); run `tierplace train`"
        )
    meta = VariantMetadata.read(directory)
    model, tokenizer = build(directory / "encoder", None, len(meta.labels))
    model.exits.load_state_dict(load_file(str(directory / "exits.safetensors")))
    model.eval()
    return LoadedVariant(model, tokenizer, meta)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _quiet_transformers() -> None:
    # Loading a sentence-transformers checkpoint as a bare encoder reports unused pooler
    # weights and draws progress bars; expected here, and noise in every server log.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
