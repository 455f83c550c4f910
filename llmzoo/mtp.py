"""Multi-token prediction (DeepSeek-V3, arXiv:2412.19437, §2.2): extra modules that predict further ahead.

Module k (1-based) combines, for token i, the previous depth's state h_i^{k-1} and the embedding of
token i+k:  h'_i = W [RMSNorm(Emb(t_{i+k})) ; RMSNorm(h_i^{k-1})]  (eq. 21, in the order the
released weights use: embedding first, as vLLM/SGLang load them), runs one transformer block over
the shortened sequence (eq. 22) and predicts t_{i+k+1} with the shared output head after its own
norm (eq. 23). h^0 is the main model's final-normed state (the serving engines' convention).
The embedding and output head are the main model's (the checkpoint's copies are skipped).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .block import Block
from .config import ModelConfig
from .linear import Linear, linear
from .registry import build


class MTPLayer(nn.Module):
    """One prediction depth: enorm, hnorm, eh_proj (2·D → D), a block like the base block, head_norm."""

    def __init__(self, config: ModelConfig, k: int, scale_mult: float = 1.0):
        super().__init__()
        d = config.d_model
        self.enorm = build("norm", config.block.norm, d)
        self.hnorm = build("norm", config.block.norm, d)
        self.eh_proj = Linear(2 * d, d, bias=False)
        self.block = Block(config.block, d, config.n_layers + k, scale_mult)
        self.head_norm = build("norm", config.final_norm or config.block.norm, d)

    def forward(self, embedded: Tensor, previous: Tensor, ctx) -> Tensor:  # 2 × (B, T', D) -> (B, T', D)
        h = self.eh_proj(torch.cat([self.enorm(embedded), self.hnorm(previous)], dim=-1))
        return self.block(h, ctx)


def predict_ahead(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None) -> list[Tensor]:
    """Logits of the main head and of every MTP depth: [ (B, T, V), (B, T-1, V), ... ].

    Entry k at position i predicts token i+k+1 (the main head's entry 0 predicts token i+1)."""
    if getattr(model, "mtp", None) is None:
        raise ValueError(f"{model.config.name}: config.mtp is not set, so no MTP modules were built")
    ctx = model.context(input_ids, attention_mask)
    x = model.embed_tokens(input_ids, ctx.positions)
    for block in model.blocks:
        x = block(x, ctx)
    out = [model.logits(x)]
    head = model.embed.weight if model.head is None else model.head.weight
    h = model.final_norm(x)
    for k, layer in enumerate(model.mtp, start=1):
        ids = input_ids[:, k:]
        mask = attention_mask[:, k:] if attention_mask is not None else None
        ctx_k = model.context(ids, mask)
        h = layer(model.embed_tokens(ids, ctx_k.positions), h[:, : ids.shape[1]], ctx_k)
        out.append(linear(layer.head_norm(h), head))
    return out
