"""Run a Hugging Face encoder one transformer layer at a time.

Early exit needs the hidden states after every layer and the freedom to stop computing rows
that already exited; ``model(...)`` gives neither. Two layer contracts cover the BERT family:
BERT-like encoders (BERT, RoBERTa, MiniLM, ELECTRA: ``embeddings`` + ``encoder.layer`` with
``attention.self.query/key``) and MPNet, whose layers also take a relative position bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask


@dataclass
class LayerInput:
    """What every layer needs besides the hidden states, for the rows still running."""

    mask: torch.Tensor  # [B, L] 1 for real tokens
    layer_mask: torch.Tensor | None  # the encoder's own 4-D mask form (None: no padding)
    position_bias: torch.Tensor | None  # MPNet only: [1, heads, L, L]

    def select(self, rows: torch.Tensor) -> LayerInput:
        return LayerInput(
            mask=self.mask[rows],
            layer_mask=None if self.layer_mask is None else self.layer_mask[rows],
            position_bias=self.position_bias,
        )


class Backbone(nn.Module):
    """A truncatable encoder with per-layer execution and [CLS]-row attention."""

    def __init__(self, encoder: PreTrainedModel, num_layers: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        # HF modules are navigated by attribute name; the two contracts above are checked here.
        hf: Any = encoder
        self.is_mpnet = encoder.config.model_type == "mpnet"
        if not hasattr(hf, "embeddings") or not hasattr(getattr(hf, "encoder", None), "layer"):
            raise TypeError(f"{type(encoder).__name__} is not a BERT-family encoder")
        layers = hf.encoder.layer
        if num_layers is not None:
            if not 1 <= num_layers <= len(layers):
                raise ValueError(f"num_layers must be in 1..{len(layers)}, got {num_layers}")
            hf.encoder.layer = nn.ModuleList(list(layers)[:num_layers])
            encoder.config.num_hidden_layers = num_layers
        # A pooler is never used by exits; dropping it keeps exported weights honest.
        if getattr(hf, "pooler", None) is not None:
            hf.pooler = None

    @property
    def _hf(self) -> Any:
        return self.encoder

    def layers(self) -> nn.ModuleList:
        layers: nn.ModuleList = self._hf.encoder.layer
        return layers

    def word_embeddings(self) -> nn.Embedding:
        table: nn.Embedding = self._hf.embeddings.word_embeddings
        return table

    @property
    def num_layers(self) -> int:
        return len(self.layers())

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.hidden_size)

    def embed(self, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, LayerInput]:
        hidden: torch.Tensor = self._hf.embeddings(input_ids=input_ids)
        layer_mask = create_bidirectional_mask(
            config=self.encoder.config, inputs_embeds=hidden, attention_mask=mask
        )
        bias = None
        if self.is_mpnet:
            bias = self._hf.encoder.compute_position_bias(hidden[:1])
        return hidden, LayerInput(mask=mask, layer_mask=layer_mask, position_bias=bias)

    def layer(self, index: int, hidden: torch.Tensor, inp: LayerInput) -> torch.Tensor:
        module: Any = self.layers()[index]
        if self.is_mpnet:
            bias = inp.position_bias
            assert bias is not None
            out = module(hidden, inp.layer_mask, bias.expand(hidden.shape[0], -1, -1, -1))
        else:
            out = module(hidden, inp.layer_mask)
        result: torch.Tensor = out[0] if isinstance(out, tuple) else out
        return result

    def cls_attention(self, index: int, hidden_in: torch.Tensor, inp: LayerInput) -> torch.Tensor:
        """Head-averaged attention of [CLS] over the tokens in layer ``index``: [B, L].

        Computed from the query/key projections directly, so the encoder keeps its fast
        attention kernel (SDPA returns no weights) and only one row is ever materialised.
        """
        module: Any = self.layers()[index]
        if self.is_mpnet:
            attn = module.attention.attn
            q_proj, k_proj, heads = attn.q, attn.k, attn.num_attention_heads
        else:
            attn = module.attention.self
            q_proj, k_proj, heads = attn.query, attn.key, attn.num_attention_heads
        b, length, width = hidden_in.shape
        d = width // heads
        q = q_proj(hidden_in[:, :1]).view(b, 1, heads, d).transpose(1, 2)  # [B, H, 1, d]
        k = k_proj(hidden_in).view(b, length, heads, d).transpose(1, 2)  # [B, H, L, d]
        scores = (q @ k.transpose(-1, -2)).squeeze(2) / math.sqrt(d)  # [B, H, L]
        if inp.position_bias is not None:
            scores = scores + inp.position_bias[:, :, 0, :]
        scores = scores.masked_fill(inp.mask[:, None, :] == 0, float("-inf"))
        return torch.softmax(scores, dim=-1).mean(dim=1)
