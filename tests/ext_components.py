"""Two components registered from outside llmzoo, as a user would (docs/extending.md walks through them).

ScaleNorm (Nguyen & Salazar, arXiv:1910.05895, §2.2): y = g · x / ‖x‖ with one learned scalar g,
initialised to sqrt(d). Cosine attention (Swin Transformer V2, Liu et al., arXiv:2111.09883, eq. 2):
scores are the cosine of q and k divided by a temperature τ, here with its own value width
(v_head_dim ≠ head_dim), so its KV-cache layout differs from every built-in kind.

Neither name nor class appears in llmzoo: count, scale-down, cache, init and tensor parallelism all
come from the answers below (llmzoo.protocol)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from llmzoo.attention import Context
from llmzoo.positions import apply_rope
from llmzoo.protocol import AttentionModule, AttentionSpecBase, KVLayout, NormModule, NormSpecBase
from llmzoo.registry import register


class ScaleNormSpec(NormSpecBase):
    type: Literal["scalenorm"] = "scalenorm"
    eps: float = Field(1e-5, gt=0)

    def n_params(self, dim: int) -> int:
        return 1  # the scalar g


@register("norm", "scalenorm", ScaleNormSpec)
class ScaleNorm(NormModule):
    """ScaleNorm: y = g · x / max(‖x‖, eps), g a learned scalar (init sqrt(d))."""

    def __init__(self, spec: ScaleNormSpec, dim: int):
        super().__init__()
        self.dim, self.eps = dim, spec.eps
        self.g = nn.Parameter(torch.full((), math.sqrt(dim)))

    def forward(self, x: Tensor) -> Tensor:  # (..., D)
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp(min=self.eps)

    def reset_parameters(self) -> None:  # what builder.init_weights and parallel.init_sharded call
        nn.init.constant_(self.g, math.sqrt(self.dim))


class CosineAttentionSpec(AttentionSpecBase):
    """n_heads query = key = value heads; head_dim for q and k, v_head_dim for v; scores cos(q, k) / tau."""

    type: Literal["cosine"] = "cosine"
    n_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)
    tau: float = Field(0.1, gt=0)

    @property
    def rotary_head_dim(self) -> int:  # rope, when the model uses it, rotates q and k before the cosine
        return self.head_dim

    def n_params(self, d_model: int) -> int:
        h = self.n_heads
        return d_model * h * (2 * self.head_dim + self.v_head_dim) + h * self.v_head_dim * d_model

    def kv_layout(self, latent: bool = True) -> KVLayout:
        return KVLayout(self.n_heads, self.head_dim, self.v_head_dim)

    def tp_local(self, tp: int, where: str) -> "CosineAttentionSpec":
        if self.n_heads % tp:
            raise ValueError(f"{where}: n_heads ({self.n_heads}) is not divisible by tp ({tp})")
        return self.model_copy(update={"n_heads": self.n_heads // tp})

    def scaled(self, s) -> "CosineAttentionSpec":
        h, _ = s.heads(self.n_heads, self.n_heads)
        return self.updated(n_heads=h, head_dim=s.head_dim, v_head_dim=s.head_dim // 2)


@register("attention", "cosine", CosineAttentionSpec)
class CosineAttention(AttentionModule):
    """softmax(cos(q_i, k_j) / tau) v: q and k L2-normalised per head (after rope), v of its own width."""

    def __init__(self, spec: CosineAttentionSpec, d_model: int, layer: int = 0, scale_mult: float = 1.0):
        super().__init__()
        self.spec, self.layer, self.window = spec, layer, None
        h = spec.n_heads
        self.q = nn.Linear(d_model, h * spec.head_dim, bias=False)
        self.k = nn.Linear(d_model, h * spec.head_dim, bias=False)
        self.v = nn.Linear(d_model, h * spec.v_head_dim, bias=False)
        self.o = nn.Linear(h * spec.v_head_dim, d_model, bias=False)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:  # (B, T, D)
        B, T, _ = x.shape
        s = self.spec
        q = self.q(x).view(B, T, -1, s.head_dim).transpose(1, 2)  # (B, H, T, Dh); H: this rank's heads
        k = self.k(x).view(B, T, -1, s.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, -1, s.v_head_dim).transpose(1, 2)  # (B, H, T, Dv)
        rope = ctx.rotary(self.layer)
        if rope is not None:
            q, k = apply_rope(q, *rope, ctx.rope_layout), apply_rope(k, *rope, ctx.rope_layout)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer, k, v)
        mask = ctx.mask(self.window)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=1 / s.tau)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, D)

    def tp_plan(self, tp: int, ep: bool = False) -> dict:
        """Heads split across ranks (Megatron-LM): q, k, v column-parallel, o row-parallel."""
        from llmzoo.parallel import ColwiseParallel, RowwiseParallel

        self.spec.tp_local(tp, f"blocks.{self.layer}.attn")  # checks divisibility
        return {"q": ColwiseParallel(), "k": ColwiseParallel(), "v": ColwiseParallel(), "o": RowwiseParallel()}

    def beta_scaled(self) -> list[nn.Module]:
        return [self.v, self.o]


YAML = """\
name: cosine-scalenorm
family: out-of-tree
vocab_size: 96
d_model: 48
n_layers: 3
max_seq_len: 64
position: {type: rope, theta: 10000}
block:
  placement: pre
  norm: {type: scalenorm, eps: 1.0e-5}
  attention: {type: cosine, n_heads: 4, head_dim: 12, v_head_dim: 8, tau: 0.1}
  mlp: {type: glu, activation: silu, d_ff: 64, bias: false}
final_norm: {type: scalenorm, eps: 1.0e-5}
head: {tied: false}
"""
