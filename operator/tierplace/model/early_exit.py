"""A transformer classifier with an exit head after every layer (DeeBERT-style).

Inference stops computing a row at the first exit whose confidence reaches the threshold; rows
that continue run on as a smaller batch. The exit layer's [CLS] attention is the token
importance the router uses to prune what it offloads to the next tier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from tierplace.model.backbone import Backbone

ExitMetric = Literal["confidence", "entropy"]


class ExitHead(nn.Module):
    """Masked mean pooling, then a small MLP: the pooling sentence encoders were trained with."""

    def __init__(self, hidden: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_labels),
        )

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(pool(hidden, mask))  # type: ignore[no-any-return]


def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def confidence(probs: torch.Tensor, metric: ExitMetric) -> torch.Tensor:
    """Both metrics grow with certainty, so 'exit when >= threshold' holds for either."""
    if metric == "confidence":
        return probs.max(dim=-1).values
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum(-1)
    # Rounding puts a uniform answer a hair below 0; the router checks the range [0, 1].
    return (1.0 - entropy / math.log(probs.shape[-1])).clamp(0.0, 1.0)


@dataclass
class ExitResult:
    probs: torch.Tensor  # [B, C]
    exit_layer: torch.Tensor  # [B] int, 1-based
    confidence: torch.Tensor  # [B]
    importance: torch.Tensor | None  # [B, L] at each row's exit layer


class EarlyExitClassifier(nn.Module):
    def __init__(self, backbone: Backbone, num_labels: int = 2) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_labels = num_labels
        self.exits = nn.ModuleList(
            ExitHead(backbone.hidden_size, num_labels) for _ in range(backbone.num_layers)
        )

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    def forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor, frozen_layers: int = 0
    ) -> list[torch.Tensor]:
        """Logits of every exit, for training: all rows run all layers.

        The first ``frozen_layers`` layers (and the embeddings) run without autograd: a
        cheaper schedule for the large variant on a CPU, at the cost of fixed lower layers.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and frozen_layers == 0):
            hidden, inp = self.backbone.embed(input_ids, mask)
        logits = []
        for i, head in enumerate(self.exits):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= frozen_layers):
                hidden = self.backbone.layer(i, hidden, inp)
            logits.append(head(hidden, mask))
        return logits

    def pooled_features(self, input_ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Mean-pooled hidden states after every layer (exit-head training on a frozen body)."""
        hidden, inp = self.backbone.embed(input_ids, mask)
        feats = []
        for i in range(self.num_layers):
            hidden = self.backbone.layer(i, hidden, inp)
            feats.append(pool(hidden, mask))
        return feats

    @torch.inference_mode()
    def infer(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        threshold: float | torch.Tensor,
        metric: ExitMetric = "confidence",
        importance: bool = False,
        max_exit: int | None = None,
    ) -> ExitResult:
        """Per-row early exit; ``threshold`` is one value or one per row.

        ``max_exit`` caps the depth (1-based): rows still running there answer at that exit.
        """
        batch, length = input_ids.shape
        limit = torch.as_tensor(threshold, dtype=torch.float32).expand(batch).clone()
        probs_out = torch.zeros(batch, self.num_labels)
        layer_out = torch.zeros(batch, dtype=torch.int32)
        conf_out = torch.zeros(batch)
        imp_out = torch.zeros(batch, length) if importance else None

        hidden, inp = self.backbone.embed(input_ids, mask)
        rows = torch.arange(batch)
        last = min(self.num_layers, max_exit or self.num_layers) - 1
        for i, head in enumerate(self.exits):
            hidden_in = hidden
            hidden = self.backbone.layer(i, hidden, inp)
            probs = torch.softmax(head(hidden, inp.mask), dim=-1)
            conf = confidence(probs, metric)
            done = torch.ones_like(conf, dtype=torch.bool) if i == last else conf >= limit
            if bool(done.any()):
                finished = rows[done]
                probs_out[finished] = probs[done].float()
                layer_out[finished] = i + 1
                conf_out[finished] = conf[done].float()
                if imp_out is not None:
                    sub = inp.select(done.nonzero().squeeze(1))
                    imp_out[finished] = self.backbone.cls_attention(i, hidden_in[done], sub).float()
            if i == last or bool(done.all()):
                break
            keep = ~done
            rows, hidden, limit = rows[keep], hidden[keep], limit[keep]
            inp = inp.select(keep.nonzero().squeeze(1))
        return ExitResult(probs_out, layer_out, conf_out, imp_out)
