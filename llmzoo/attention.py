"""Attention: multi-head / grouped-query / multi-query, Multi-head Latent Attention, and masks.

Masks are expressed over token slots: query slot i may see key slot j when j ≤ i (causal), or j
lies in the bidirectional prefix (prefix-LM), and i - j < window (sliding window), and j is not
padding. `Context` builds each distinct mask once per forward and shares it across layers.
Specs and modules answer the questions of llmzoo.protocol (count, KV layout, scale-down, TP split).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, model_validator
from torch import Tensor, nn

from .config import MAX_SCALE, MAX_SEQ_LEN
from .errors import UnsupportedError
from .linear import Linear
from .norms import LayerNormSpec, RMSNormSpec
from .parallel import plan
from .positions import apply_rope, sinusoid_table
from .protocol import AttentionModule, AttentionSpecBase, KVLayout, Module
from .registry import Component, build, register

# ------------------------------------------------------------------------------------ masks


def attention_mask(
    q_index: Tensor,
    k_index: Tensor,
    key_padding: Tensor | None = None,
    prefix_len: Tensor | None = None,
    window: int | None = None,
    causal: bool = True,
) -> Tensor:
    """Boolean mask (B or 1, 1, T, S), True where query slot i may attend to key slot j.

    q_index (T,), k_index (S,): slot numbers; key_padding (B, S): True for real tokens;
    prefix_len (B,): keys before it are visible to every query (GLM's bidirectional context);
    window: a query sees at most `window` keys back, itself included (Mistral, GPT-Neo local layers);
    causal: False lets every query see every key (an encoder, cross-attention)."""
    i, j = q_index[:, None], k_index[None, :]
    allowed = ((j <= i) | (not causal))[None]  # (1, T, S)
    if window is not None:
        allowed = allowed & (i - j < window)[None]
    if prefix_len is not None:
        allowed = allowed | (j[None] < prefix_len[:, None, None])
    if key_padding is not None:
        allowed = allowed & key_padding[:, None, :].bool()
    # a row that sees nothing (a padding query) attends everywhere: finite garbage, never NaN
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    return allowed[:, None]


@dataclass
class Context:
    """What every layer needs about the current batch, built once per forward by the model."""

    positions: Tensor  # (B, T) position ids of the queries
    q_index: Tensor  # (T,) slot of each query (offset by the cache length)
    k_index: Tensor  # (S,) slots of all keys
    rope: tuple[Tensor, Tensor] | None = None  # cos, sin: (B, T, R) of the model's position encoding
    rope_layout: str = "halves"
    # layers whose block names its own position encoding (Gemma-3 local layers, SmolLM3 NoPE):
    # layer -> (cos, sin) or None, one table per distinct spec shared by the layers using it
    layer_rope: dict[int, tuple[Tensor, Tensor] | None] = field(default_factory=dict)
    bias: Tensor | None = None  # additive position bias (B, H, T, S)
    key_padding: Tensor | None = None  # (B, S) True for real tokens
    prefix_len: Tensor | None = None  # (B,)
    cache: Any = None
    causal: bool = True  # False: encoder self-attention and cross-attention see every key
    latent_kv: bool = False  # the cache stores compressed keys (MLA's absorbed path), set by the cache
    # with a cache: keys(window, q_index) -> (k_index (S,), key_padding (B, S), key positions (B, S))
    # of the slots a layer attends to (a rolling window buffer holds other slots than a full one),
    # and the position bias recomputed over them: bias_fn(q_pos, k_pos) -> (B, H, T, S) or None
    keys: Callable[[int | None, Tensor], tuple[Tensor, Tensor, Tensor]] | None = None
    bias_fn: Callable[[Tensor, Tensor], Tensor | None] | None = None
    # the position module's relative(q_pos, k_pos) -> (table (R, D), row (B, T, S)) or None (DeBERTa)
    relative: Callable[[Tensor, Tensor], tuple[Tensor, Tensor] | None] | None = None
    _masks: dict = field(default_factory=dict)
    _relative: dict = field(default_factory=dict)

    def rotary(self, layer: int) -> tuple[Tensor, Tensor] | None:
        """The cos/sin that `layer` rotates queries and keys by (None: that layer has no rotary)."""
        return self.layer_rope.get(layer, self.rope)

    def rope_apply(self, x: Tensor, layer: int | None = None) -> Tensor:
        return apply_rope(x, *(self.rope if layer is None else self.layer_rope.get(layer, self.rope)), self.rope_layout)

    def query_slots(self) -> Tensor:
        """(1 or B, T) slot of each query (Llama-4's query temperature reads it)."""
        return self.q_index[None]

    def key_positions(self, window: int | None) -> Tensor:
        """(B, S) position ids of the keys a layer with this window attends to (relative schemes that
        compute their own scores, e.g. Transformer-XL); without a cache the keys are the queries."""
        if self.keys is None:
            return self.positions
        return self.keys(window, self.q_index)[2]

    def relative_embeddings(self, window: int | None = None) -> tuple[Tensor, Tensor] | None:
        """The position module's relative table (R, D) and the row (B, T, S) of each query and key a
        layer with this window attends to; computed once per forward and shared across layers."""
        if window not in self._relative:
            rel = self.relative(self.positions, self.key_positions(window)) if self.relative is not None else None
            self._relative[window] = rel
        return self._relative[window]

    def mask(self, window: int | None, chunk: int | None = None) -> Tensor | None:
        """SDPA attn_mask for a layer with this window (and chunk); None means plain causal (is_causal)."""
        T, S = len(self.q_index), len(self.k_index)
        plain = self.causal and self.key_padding is None and self.prefix_len is None and self.bias is None
        short = (window is None or window >= S) and (chunk is None or chunk >= S)
        if plain and self.keys is None and T == S and short:
            return None
        if chunk is not None:
            return self._chunk_mask(window, chunk)
        if window not in self._masks:
            k_index, key_padding, bias = self.k_index, self.key_padding, self.bias
            if self.keys is not None:
                k_index, key_padding, key_pos = self.keys(window, self.q_index)
                bias = self.bias_fn(self.positions, key_pos) if self.bias_fn is not None else None
            allowed = attention_mask(self.q_index, k_index, key_padding, self.prefix_len, window, self.causal)
            if bias is None:
                self._masks[window] = allowed
            else:
                self._masks[window] = bias.masked_fill(~allowed, float("-inf"))
        return self._masks[window]

    def _chunk_mask(self, window: int | None, chunk: int) -> Tensor:
        """The window's mask restricted to keys whose position lies in the query's chunk of `chunk`
        positions (Llama-4; positions, not slots, as transformers shifts chunks by the left padding).
        A chunk never reaches further back than `chunk` tokens, so a cache keeps it as that window."""
        key = (window, chunk)
        if key not in self._masks:
            k_index, key_padding, k_pos = self.k_index, self.key_padding, self.positions
            if self.keys is not None:
                k_index, key_padding, k_pos = self.keys(window, self.q_index)
            allowed = attention_mask(self.q_index, k_index, key_padding, self.prefix_len, window, self.causal)
            q_chunk = torch.div(self.positions, chunk, rounding_mode="floor")  # (B, T)
            same = q_chunk[:, :, None] == torch.div(k_pos, chunk, rounding_mode="floor")[:, None, :]  # (B, T, S)
            allowed = allowed & same[:, None]
            self._masks[key] = allowed | ~allowed.any(-1, keepdim=True)  # a row seeing nothing: finite garbage
        return self._masks[key]


def with_sinks(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, sinks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Learned attention sinks (GPT-OSS; the sink idea: Xiao et al., arXiv:2309.17453): softmax over
    [q kᵀ · scale, s_h] with the sink's probability dropped, i.e. exp(s_h) joins every denominator.
    As SDPA inputs: one more key slot with k = 0, v = 0 whose mask logit is s_h (per head)."""
    B, H, T, _ = q.shape
    S = k.shape[2]
    if mask is None:  # plain causal over T == S slots
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)[None, None]
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    mask = mask.to(q.dtype).expand(mask.shape[0], H, T, S)
    sink = sinks.to(q.dtype).view(1, H, 1, 1).expand(mask.shape[0], H, T, 1)
    k = torch.cat([k, k.new_zeros(*k.shape[:2], 1, k.shape[3])], dim=2)  # (B, KV, S + 1, D)
    v = torch.cat([v, v.new_zeros(*v.shape[:2], 1, v.shape[3])], dim=2)
    return k, v, torch.cat([mask, sink], dim=-1)  # (B or 1, H, T, S + 1)


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, sinks: Tensor | None = None) -> Tensor:
    """softmax(q kᵀ · scale + mask) v with GQA head sharing; q (B, H, T, D), k/v (B, KV, S, D).
    sinks (H,): per-head logits in every softmax denominator (see `with_sinks`)."""
    if sinks is not None:
        k, v, mask = with_sinks(q, k, v, mask, sinks)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
    )


def softcapped_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float,
                         sinks: Tensor | None = None, *, cap: float) -> Tensor:
    """sdpa with scores → cap·tanh(scores/cap) before the mask (Gemma-2, arXiv:2408.00118 §2); eager,
    since SDPA kernels take no score transform. sinks as in `sdpa`."""
    if sinks is not None:
        k, v, mask = with_sinks(q, k, v, mask, sinks)
    if k.shape[1] != q.shape[1]:  # GQA: repeat each KV head for its group of query heads
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, T, S)
    return masked_softmax(torch.tanh(scores / cap) * cap, mask, v)


def masked_softmax(scores: Tensor, mask: Tensor | None, v: Tensor) -> Tensor:
    """softmax(scores + mask) v, the softmax in float32; scores (B, H, T, S), mask bool (allowed) or
    additive, None: causal over the last T of S slots. The eager path of the score-transforming kinds."""
    T, S = scores.shape[-2:]
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=scores.device).tril(S - T)
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask.to(scores.dtype)
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)  # (B, H, T, Dh)


# ---------------------------------------------------------------------- MHA / GQA / MQA


class AttentionSpec(AttentionSpecBase):
    """mha: n_kv_heads = n_heads; gqa: 1 < n_kv_heads < n_heads; mqa: n_kv_heads = 1."""

    type: Literal["mha", "gqa", "mqa"] = "mha"
    n_heads: int = Field(gt=0)
    n_kv_heads: int | None = Field(None, gt=0, description="defaults to n_heads (mha) or 1 (mqa)")
    head_dim: int = Field(gt=0)
    qkv_bias: bool = False
    o_bias: bool = False
    # a window ≥ the sequence is global (Mistral-7B: 4096 of 32k is local; any window may exceed
    # max_seq_len), bounded like max_seq_len so that `i - j < window` never overflows int64
    window: int | None = Field(
        None, gt=0, le=MAX_SEQ_LEN, description="sliding window: keys visible, self included"
    )
    prefix_lm: bool = Field(False, description="tokens before prefix_len attend bidirectionally")
    softmax_scale: float | None = Field(
        None, gt=0, le=MAX_SCALE, description="default 1/sqrt(head_dim); T5 uses 1"
    )
    # float32 must hold the bound (clamp refuses 1e300); MPT clips at 6-8
    clip_qkv: float | None = Field(None, gt=0, le=1e30, description="clamp q, k, v to ±clip (MPT)")
    qk_norm: Component("norm") | None = Field(  # type: ignore[valid-type]
        None, description="norm on queries and keys before rotary (Qwen3, Gemma-3, OLMo-2)"
    )
    qk_norm_scope: Literal["head", "projection"] = Field(
        "head", description="head: one norm over each head's head_dim (Qwen3, Gemma-3); projection: over "
        "the whole q / k projection before the head split (OLMo-2)"
    )
    softcap: float | None = Field(None, gt=0, description="scores → cap·tanh(scores/cap) before the mask (Gemma-2)")
    sinks: bool = Field(False, description="a learned per-head logit in every softmax denominator (GPT-OSS)")
    chunk: int | None = Field(None, gt=0, le=MAX_SEQ_LEN,
                              description="chunked local attention: a query sees the keys of its "
                              "own chunk of `chunk` slots (Llama-4 attention_chunk_size)")
    qk_norm_after_rope: bool = Field(False, description="apply qk_norm to the rotated q and k (Llama-4)")
    query_temperature: float | None = Field(
        None, gt=0, description="q × (1 + t·log(1 + ⌊(slot + 1) / temperature_floor⌋)) (Llama-4 NoPE layers)"
    )
    temperature_floor: int = Field(8192, gt=0, description="positions per temperature step (Llama-4 floor_scale)")

    @model_validator(mode="after")
    def _check_heads(self) -> "AttentionSpec":
        kv = self.n_kv_heads
        if kv is None:
            self.n_kv_heads = kv = 1 if self.type == "mqa" else self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) is not divisible by n_kv_heads ({kv})")
        expected = {"mha": kv == self.n_heads, "mqa": kv == 1, "gqa": 1 < kv < self.n_heads}
        if not expected[self.type]:
            raise ValueError(f"type {self.type!r} does not fit n_kv_heads={kv} with n_heads={self.n_heads}")
        if self.chunk is not None and self.window is not None:
            raise ValueError("chunk and window: a layer attends either within its chunk or within a window")
        return self

    @property
    def rotary_head_dim(self) -> int:
        return self.head_dim

    @property
    def qk_norm_dims(self) -> tuple[int, int]:
        """Width each of the query and key norms normalises over (see qk_norm_scope)."""
        if self.qk_norm_scope == "head":
            return self.head_dim, self.head_dim
        return self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim

    def n_params(self, d_model: int) -> int:
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        weights = d_model * (q + 2 * kv) + q * d_model
        norms = sum(self.qk_norm.n_params(n) for n in self.qk_norm_dims) if self.qk_norm is not None else 0
        return (weights + norms + (q + 2 * kv if self.qkv_bias else 0) + (d_model if self.o_bias else 0)
                + (self.n_heads if self.sinks else 0))

    def kv_layout(self, latent: bool = True) -> KVLayout:
        return KVLayout(self.n_kv_heads, self.head_dim, self.head_dim)  # the KV heads only

    def kv_window(self) -> int | None:
        return self.window if self.chunk is None else self.chunk  # a chunk reaches back < chunk slots

    def sees_prefix(self) -> bool:
        return self.prefix_lm

    def tp_local(self, tp: int, where: str) -> "AttentionSpec":
        """Heads split evenly; with fewer KV heads than ranks each keeps the one its queries share."""
        if self.n_heads % tp:
            raise ValueError(f"{where}: n_heads ({self.n_heads}) is not divisible by tp ({tp})")
        if self.n_kv_heads % tp and tp % self.n_kv_heads:
            raise ValueError(f"{where}: n_kv_heads ({self.n_kv_heads}) neither divides nor is a multiple of tp ({tp})")
        return self.model_copy(update={"n_heads": self.n_heads // tp, "n_kv_heads": max(1, self.n_kv_heads // tp)})

    def check_cross(self, where: str) -> None:
        if self.window is not None or self.prefix_lm or self.clip_qkv is not None:
            raise ValueError(f"{where}: window, prefix_lm and clip_qkv apply to self-attention only")

    def scaled_d_model(self, s) -> int:
        return s.heads(self.n_heads, self.n_kv_heads)[0] * s.head_dim

    def scaled(self, s) -> "AttentionSpec":
        h, kv = s.heads(self.n_heads, self.n_kv_heads)
        consistent = self.n_heads * self.head_dim == s.full_d_model  # else keep head_dim ≠ d_model / n_heads
        return self.updated(n_heads=h, n_kv_heads=kv, window=s.window(self.window), chunk=s.window(self.chunk),
                            head_dim=s.head_dim if consistent else s.head_dim * 3 // 2)


class Attention(AttentionModule):
    """Scaled dot-product attention (Vaswani et al., arXiv:1706.03762, eq. 1) with shared KV heads.

    n_kv_heads: GQA (Ainslie et al., arXiv:2305.13245) / MQA (Shazeer, arXiv:1911.02150).
    qk_norm: QK-norm (Dehghani et al., arXiv:2302.05442): RMSNorm on q and k before rotary, per head
    (Qwen3, Gemma-3) or over the whole projection (OLMo-2, arXiv:2501.00656 §3.2).
    softcap: Gemma-2's attention logit soft-capping (arXiv:2408.00118, §2), cap·tanh(s/cap).
    chunk, qk_norm_after_rope, query_temperature: Llama-4's chunked local attention, QK L2-norm on the
    rotated heads and NoPE-layer temperature tuning.
    window, prefix_lm, clip_qkv, softmax_scale, sinks: see AttentionSpec."""

    def __init__(self, spec: AttentionSpec, d_model: int, layer: int = 0, scale_mult: float = 1.0):
        super().__init__()
        self.spec, self.layer = spec, layer
        self.n_heads, self.n_kv, self.head_dim = spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.q = Linear(d_model, self.n_heads * self.head_dim, bias=spec.qkv_bias)
        self.k = Linear(d_model, self.n_kv * self.head_dim, bias=spec.qkv_bias)
        self.v = Linear(d_model, self.n_kv * self.head_dim, bias=spec.qkv_bias)
        self.o = Linear(self.n_heads * self.head_dim, d_model, bias=spec.o_bias)
        # the norms read (B, T, ·, width): width head_dim per head, or the whole projection
        self.q_width, k_width = spec.qk_norm_dims
        self.k_width = k_width
        norm = spec.qk_norm if not spec.qk_norm_after_rope else None
        self.q_norm = build("norm", norm, self.q_width) if norm is not None else nn.Identity()
        self.k_norm = build("norm", norm, k_width) if norm is not None else nn.Identity()
        after = spec.qk_norm if spec.qk_norm_after_rope else None  # Llama-4: on the rotated heads
        self.q_rot_norm = build("norm", after, self.head_dim) if after is not None else nn.Identity()
        self.k_rot_norm = build("norm", after, self.head_dim) if after is not None else nn.Identity()
        self.chunk = spec.chunk
        self.attend = sdpa if spec.softcap is None else partial(softcapped_attention, cap=spec.softcap)
        base = spec.softmax_scale if spec.softmax_scale is not None else self.head_dim**-0.5
        self.scale = base * scale_mult
        self.window = spec.kv_window()
        self.sinks = nn.Parameter(torch.zeros(self.n_heads)) if spec.sinks else None
        self.temper = self._temper if spec.query_temperature is not None else lambda q, ctx: q

    def _temper(self, q: Tensor, ctx: Context) -> Tensor:
        """Llama-4's attention temperature tuning on NoPE layers: queries grow with log(slot / floor)."""
        s = self.spec
        slots = ctx.query_slots().float()  # (1 or B, T)
        t = torch.log1p(torch.floor((slots + 1.0) / s.temperature_floor)) * s.query_temperature + 1.0
        return (q * t[:, None, :, None]).to(q.dtype)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:  # (B, T, D)
        B, T, _ = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.spec.clip_qkv is not None:
            c = self.spec.clip_qkv
            q, k, v = q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)
        # heads as -1: under tensor parallelism (llmzoo.parallel) q, k, v hold this rank's heads only
        q = self.q_norm(q.view(B, T, -1, self.q_width)).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k_norm(k.view(B, T, -1, self.k_width)).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, KV, T, Dh)
        v = v.view(B, T, -1, self.head_dim).transpose(1, 2)
        rope = ctx.rotary(self.layer)
        if rope is not None:
            q, k = apply_rope(q, *rope, ctx.rope_layout), apply_rope(k, *rope, ctx.rope_layout)
        q, k = self.temper(self.q_rot_norm(q), ctx), self.k_rot_norm(k)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer, k, v)
        sinks = self.sinks.to_local() if hasattr(self.sinks, "to_local") else self.sinks  # this rank's heads
        y = self.attend(q, k, v, ctx.mask(self.window, self.chunk), self.scale, sinks)  # (B, H, T, Dh)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))

    def tp_plan(self, tp: int, ep: bool = False) -> dict:
        """Tensor-parallel plan (llmzoo.parallel): heads split across ranks, q/k/v column-parallel and o
        row-parallel; with fewer KV heads than ranks (MQA) each rank keeps the KV head it needs."""
        where = f"blocks.{self.layer}.attn"
        if self.spec.qk_norm is not None and self.spec.qk_norm_scope == "projection" and tp > 1:
            raise UnsupportedError(f"{where}: qk_norm_scope 'projection' normalises across heads; "
                                   "tensor parallelism would split it (use tp=1)")
        self.spec.tp_local(tp, where)  # checks divisibility
        kv = plan.ColwiseParallel if self.n_kv % tp == 0 else lambda: plan.ReplicatedHeads(self.n_kv, self.head_dim)
        styles = {"q": plan.ColwiseParallel(), "k": kv(), "v": kv(), "o": plan.RowwiseParallel()}
        if self.sinks is not None:  # one sink per query head: split with the heads
            styles[""] = plan.ShardParams({"sinks": 0})
        return styles

    def beta_scaled(self) -> list[nn.Module]:
        return [self.v, self.o]


for _name in ("mha", "gqa", "mqa"):
    register("attention", _name, AttentionSpec)(Attention)


# ------------------------------------------------------------- Transformer-XL relative


class RelativeXLSpec(AttentionSpecBase):
    """Transformer-XL relative attention (Dai et al., arXiv:1901.02860, §3.3); Gopher/Chinchilla."""

    type: Literal["relative_xl"] = "relative_xl"
    takes_score_bias: ClassVar[bool] = False  # it adds its own position terms; no bias on top
    own_positions: ClassVar[str | None] = "XL relative"
    n_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    base: float = Field(10000.0, gt=0, description="sinusoid base of the relative encodings R")

    def n_params(self, d_model: int) -> int:
        inner = self.n_heads * self.head_dim
        # W_q, W_k,E, W_v, W_o, plus W_k,R (R is d_model wide) and the global biases u, v (per layer)
        return 4 * d_model * inner + d_model * inner + 2 * inner

    def kv_layout(self, latent: bool = True) -> KVLayout:
        return KVLayout(self.n_heads, self.head_dim, self.head_dim)  # content keys and values; R is recomputed

    def scaled(self, s) -> "RelativeXLSpec":
        h, _ = s.heads(self.n_heads, self.n_heads)
        return self.updated(n_heads=h, head_dim=s.head_dim)


@register("attention", "relative_xl", RelativeXLSpec)
class RelativeXLAttention(AttentionModule):
    """Transformer-XL relative attention (Dai et al., arXiv:1901.02860, §3.3, eq. after (2)):

        A_ij = q_iᵀ k_j (a) + q_iᵀ W_k,R R_{i-j} (b) + uᵀ k_j (c) + vᵀ W_k,R R_{i-j} (d),
        q = W_q x, k = W_k,E x, R_d = [sin(d·f), cos(d·f)] (d_model wide, f = base^(-2m/d_model)),

    scores scaled by 1/sqrt(head_dim), then softmax and W_o as usual. u, v: per-layer (H, Dh) biases
    (content_u, position_v; XLNet's r_w_bias, r_r_bias). The paper's "relative shift" turns the
    per-distance terms (b)+(d) into the (i, j) grid; here the grid is gathered at the distance of the
    two tokens' position ids, i - j, so left padding and the KV cache (keys of earlier steps) use the
    same rule. R is tabulated for distances 0 … S-1 (S keys): the default position ids never exceed it."""

    def __init__(self, spec: RelativeXLSpec, d_model: int, layer: int = 0, scale_mult: float = 1.0):
        super().__init__()
        self.spec, self.layer, self.d_model = spec, layer, d_model
        self.n_heads, self.head_dim = spec.n_heads, spec.head_dim
        inner = spec.n_heads * spec.head_dim
        self.q = Linear(d_model, inner, bias=False)
        self.k = Linear(d_model, inner, bias=False)
        self.v = Linear(d_model, inner, bias=False)
        self.r = Linear(d_model, inner, bias=False)  # W_k,R: relative encodings -> position keys
        self.o = Linear(inner, d_model, bias=False)
        self.content_u = nn.Parameter(torch.empty(spec.n_heads, spec.head_dim))
        self.position_v = nn.Parameter(torch.empty(spec.n_heads, spec.head_dim))
        self.scale = spec.head_dim**-0.5 * scale_mult

    def forward(self, x: Tensor, ctx: Context) -> Tensor:  # (B, T, D)
        B, T, _ = x.shape
        Dh = self.head_dim
        q = self.q(x).view(B, T, -1, Dh)  # (B, T, H, Dh)
        k = self.k(x).view(B, T, -1, Dh).transpose(1, 2)  # (B, H, T, Dh)
        v = self.v(x).view(B, T, -1, Dh).transpose(1, 2)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer, k, v)  # (B, H, S, Dh)
        S = k.shape[2]
        dist = ctx.positions[:, :, None] - ctx.key_positions(None)[:, None, :]  # (B, T, S): i - j
        dist = dist.clamp(0, S - 1)  # future keys (negative) are masked below
        R = sinusoid_table(torch.arange(S, device=x.device), self.d_model, self.spec.base, "concat")
        r = self.r(R.to(x.dtype)).view(S, -1, Dh)  # (S distances, H, Dh)
        ac = torch.einsum("bthd,bhsd->bhts", q + self.content_u, k)  # (a) + (c)
        bd = torch.einsum("bthd,lhd->bhtl", q + self.position_v, r)  # (b) + (d) per distance l
        bd = bd.gather(-1, dist[:, None].expand(-1, bd.shape[1], -1, -1))  # (B, H, T, S): l = i - j
        y = masked_softmax((ac + bd).float() * self.scale, ctx.mask(None), v)  # (B, H, T, Dh)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))

    def beta_scaled(self) -> list[nn.Module]:
        return [self.v, self.o]


# ------------------------------------------------------------------- DeBERTa disentangled


class DisentangledSpec(AttentionSpecBase):
    """DeBERTa's disentangled attention (He et al., arXiv:2006.03654, §3.1, eq. 2-4; v2/v3)."""

    type: Literal["disentangled"] = "disentangled"
    takes_score_bias: ClassVar[bool] = False  # its position terms come from the relative table
    reads_relative_table: ClassVar[bool] = True
    n_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    bias: bool = Field(True, description="biases on q, k, v, o and the position projections (DeBERTa: all)")
    pos_att_type: list[Literal["c2p", "p2c"]] = Field(
        min_length=1, max_length=2, description="position terms: c2p content→position, p2c position→content")
    share_att_key: bool = Field(
        description="position keys / queries from the content k / q projections (v2/v3), else own ones")

    @model_validator(mode="after")
    def _check(self) -> "DisentangledSpec":
        if len(set(self.pos_att_type)) != len(self.pos_att_type):
            raise ValueError(f"pos_att_type: {self.pos_att_type} names a term twice")
        return self

    @property
    def scale_factor(self) -> int:
        """1 + number of position terms: scores are divided by sqrt(head_dim · scale_factor) (§3.1)."""
        return 1 + len(self.pos_att_type)

    def n_params(self, d_model: int) -> int:
        inner = self.n_heads * self.head_dim
        own = 0 if self.share_att_key else len(self.pos_att_type)  # pos_key_proj (c2p), pos_query_proj (p2c)
        b = 1 if self.bias else 0
        return (3 + own) * (d_model + b) * inner + inner * d_model + b * d_model

    def kv_layout(self, latent: bool = True) -> KVLayout:
        return KVLayout(self.n_heads, self.head_dim, self.head_dim)  # content keys and values

    def scaled(self, s) -> "DisentangledSpec":
        h, _ = s.heads(self.n_heads, self.n_heads)
        return self.updated(n_heads=h, head_dim=s.head_dim)


@register("attention", "disentangled", DisentangledSpec)
class DisentangledAttention(AttentionModule):
    """DeBERTa disentangled attention (He et al., arXiv:2006.03654, eq. 2-4) over the model's shared
    relative table P (position `relative_embedding`, which gives each query/key pair its row δ(i, j)):

        Ã_ij = q_iᵀ k_j (c2c) + q_iᵀ K^r_δ(i,j) (c2p) + k_jᵀ Q^r_δ(i,j) (p2c),  scaled 1/sqrt(Dh · (1 + terms)),
        K^r = P W_k,r, Q^r = P W_q,r (share_att_key: the content k / q projections, biases included).

    The p2c row is δ(i, j) as transformers' deberta_v2 (and the authors' code) index it: bucket(i - j) + k,
    the same row as c2p, since the log buckets are odd in i - j. Rows come from position ids, so the KV
    cache (keys of earlier steps) and left padding use the same rule; the mask is the model's."""

    def __init__(self, spec: DisentangledSpec, d_model: int, layer: int = 0, scale_mult: float = 1.0):
        super().__init__()
        self.spec, self.layer, self.head_dim = spec, layer, spec.head_dim
        inner = spec.n_heads * spec.head_dim
        self.q = Linear(d_model, inner, bias=spec.bias)
        self.k = Linear(d_model, inner, bias=spec.bias)
        self.v = Linear(d_model, inner, bias=spec.bias)
        self.o = Linear(inner, d_model, bias=spec.bias)
        terms = spec.pos_att_type
        if not spec.share_att_key and "c2p" in terms:
            self.pos_k = Linear(d_model, inner, bias=spec.bias)
        if not spec.share_att_key and "p2c" in terms:
            self.pos_q = Linear(d_model, inner, bias=spec.bias)
        # names, not modules: a shared projection must not appear twice in the state dict
        self.c2p = ("k" if spec.share_att_key else "pos_k") if "c2p" in terms else None
        self.p2c = ("q" if spec.share_att_key else "pos_q") if "p2c" in terms else None
        self.scale = (spec.head_dim * spec.scale_factor) ** -0.5 * scale_mult

    def forward(self, x: Tensor, ctx: Context) -> Tensor:  # (B, T, D)
        B, T, _ = x.shape
        Dh = self.head_dim
        q = self.q(x).view(B, T, -1, Dh).transpose(1, 2)  # (B, H, T, Dh); -1: this rank's heads under TP
        k = self.k(x).view(B, T, -1, Dh).transpose(1, 2)
        v = self.v(x).view(B, T, -1, Dh).transpose(1, 2)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer, k, v)  # (B, H, S, Dh)
        rel = ctx.relative_embeddings(None)
        if rel is None:
            raise UnsupportedError(f"blocks.{self.layer}.attn: 'disentangled' attention needs the model's "
                                   "position type 'relative_embedding'")
        table, row = rel  # (R, D), (B, T, S)
        table = table.to(x.dtype)
        row = row[:, None].expand(-1, q.shape[1], -1, -1)  # (B, H, T, S)
        scores = torch.matmul(q, k.transpose(-1, -2))  # c2c (B, H, T, S)
        if self.c2p is not None:  # c2p: q_i · K^r[δ(i, j)]
            pk = getattr(self, self.c2p)(table).view(table.shape[0], -1, Dh)  # (R, H, Dh)
            scores = scores + torch.einsum("bhtd,rhd->bhtr", q, pk).gather(-1, row)
        if self.p2c is not None:  # p2c: k_j · Q^r[δ(i, j)]
            pq = getattr(self, self.p2c)(table).view(table.shape[0], -1, Dh)
            scores = scores + torch.einsum("bhsd,rhd->bhrs", k, pq).gather(-2, row)
        y = masked_softmax(scores.float() * self.scale, ctx.mask(None), v)  # (B, H, T, Dh)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))

    def beta_scaled(self) -> list[nn.Module]:
        return [self.v, self.o]


# --------------------------------------------------------------------------------- MLA


class IndexerSpec(BaseModel):
    """DeepSeek Sparse Attention's lightning indexer (DeepSeek-V3.2-Exp tech report, §2.1).

    n_heads, head_dim: the indexer's own query heads and their (shared, one-head) key width.
    topk: keys each query keeps (V3.2: 2048). rope_layout: how the first qk_rope_head_dim dims of
    its query and key rotate (V3.2: halves, unlike MLA's interleaved pairs). key_norm: on its key."""

    model_config = {"extra": "forbid"}
    n_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    topk: int = Field(gt=0)
    rope_layout: Literal["halves", "interleaved"] = "halves"
    key_norm: Component("norm") = Field(default_factory=lambda: LayerNormSpec(eps=1e-6))  # type: ignore[valid-type]

    def n_params(self, d_model: int, q_lora_rank: int) -> int:
        h, d = self.n_heads, self.head_dim
        return q_lora_rank * h * d + d_model * d + self.key_norm.n_params(d) + d_model * h


class MLASpec(AttentionSpecBase):
    """Multi-head Latent Attention (DeepSeek-V2, arXiv:2405.04434, §2.1).

    indexer: DeepSeek Sparse Attention (V3.2) on top: each query attends only to the `topk` keys its
    lightning indexer scores highest; the indexer's key (head_dim per token) is cached with MLA's."""

    type: Literal["mla"] = "mla"
    n_heads: int = Field(gt=0)
    q_lora_rank: int | None = Field(None, gt=0, description="None: full-rank query (V2-Lite)")
    kv_lora_rank: int = Field(gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    qk_rope_head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)
    latent_norm: Component("norm") = Field(default_factory=lambda: RMSNormSpec(eps=1e-6))  # type: ignore[valid-type]
    bias: bool = Field(False, description="biases on q_a, kv_a and o (HF attention_bias); q, q_b, kv_b have none")
    window: int | None = Field(None, gt=0, le=MAX_SEQ_LEN)
    prefix_lm: bool = False
    indexer: IndexerSpec | None = Field(None, description="DeepSeek Sparse Attention's lightning indexer")

    @model_validator(mode="after")
    def _check(self) -> "MLASpec":
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim ({self.qk_rope_head_dim}) must be even for rotary pairs")
        if self.indexer is not None:
            if self.q_lora_rank is None:
                raise ValueError("indexer: its queries read the q latent, so q_lora_rank must be set")
            if self.indexer.head_dim < self.qk_rope_head_dim:
                raise ValueError(f"indexer.head_dim ({self.indexer.head_dim}) is below qk_rope_head_dim "
                                 f"({self.qk_rope_head_dim}), the dims it rotates")
        return self

    takes_score_bias: ClassVar[bool] = False  # the absorbed path attends over a latent, not per-head keys

    @property
    def rotary_head_dim(self) -> int:
        return self.qk_rope_head_dim

    def kv_layout(self, latent: bool = True) -> KVLayout:
        """latent (absorbed): c_kv as a 1-head "key", the rope key as its "value"; else per-head k, v."""
        ix = self.indexer.head_dim if self.indexer is not None else 0  # the indexer key rides with the value
        if latent:
            return KVLayout(1, self.kv_lora_rank, self.qk_rope_head_dim + ix)
        return KVLayout(self.n_heads, self.qk_nope_head_dim + self.qk_rope_head_dim, self.v_head_dim + ix)

    def kv_window(self) -> int | None:
        return self.window

    def sees_prefix(self) -> bool:
        return self.prefix_lm

    def tp_local(self, tp: int, where: str) -> "MLASpec":
        if self.n_heads % tp:
            raise ValueError(f"{where}: n_heads ({self.n_heads}) is not divisible by tp ({tp})")
        return self.model_copy(update={"n_heads": self.n_heads // tp})  # the latent stays whole

    def scaled_d_model(self, s) -> int:
        return 64  # 4 heads of 16 whatever the preset: the ranks below are fixed too

    def scaled(self, s) -> "MLASpec":
        return self.updated(
            n_heads=s.heads(self.n_heads, self.n_heads)[0], window=s.window(self.window),
            qk_nope_head_dim=16, qk_rope_head_dim=8, kv_lora_rank=24,
            q_lora_rank=None if self.q_lora_rank is None else 32,
            v_head_dim=16 if self.v_head_dim == self.qk_nope_head_dim else 12,  # keep v ≠ nope where it was
            # top-8 of the keys: below any test sequence (≥ 12 tokens), so selection really drops keys
            indexer=None if self.indexer is None else self.indexer.model_copy(
                update={"n_heads": 4, "head_dim": 16, "topk": min(self.indexer.topk, 8)}).model_dump(),
        )

    def n_params(self, d_model: int) -> int:
        h, qk = self.n_heads, self.qk_nope_head_dim + self.qk_rope_head_dim
        b = 1 if self.bias else 0  # biases on the projections out of d_model and on o (HF attention_bias)
        if self.q_lora_rank is None:
            q = d_model * h * qk
        else:
            r = self.q_lora_rank
            q = d_model * r + b * r + self.latent_norm.n_params(r) + r * h * qk
        kv_a = (d_model + b) * (self.kv_lora_rank + self.qk_rope_head_dim)
        kv_norm = self.latent_norm.n_params(self.kv_lora_rank)
        kv_b = self.kv_lora_rank * h * (self.qk_nope_head_dim + self.v_head_dim)
        o = h * self.v_head_dim * d_model + b * d_model
        ix = self.indexer.n_params(d_model, self.q_lora_rank) if self.indexer is not None else 0
        return q + kv_a + kv_norm + kv_b + o + ix


class LightningIndexer(Module):
    """DSA's lightning indexer (DeepSeek-V3.2-Exp report, eq. 1): I(t, s) = Σ_j w_j(t) ReLU(q_j(t)·k(s)).

    q_j from the MLA query latent (c_q), k one shared key per token (normed), w_j from the hidden
    state; scores scaled by head_dim^-1/2 and the weights by n_heads^-1/2. `select` turns the scores
    into a mask keeping each query's `topk` best allowed keys."""

    def __init__(self, spec: IndexerSpec, d_model: int, q_lora_rank: int, rope_dims: int):
        super().__init__()
        self.spec, self.rope_dims = spec, rope_dims
        self.q = Linear(q_lora_rank, spec.n_heads * spec.head_dim, bias=False)
        self.k = Linear(d_model, spec.head_dim, bias=False)
        self.k_norm = build("norm", spec.key_norm, spec.head_dim)
        self.weights = Linear(d_model, spec.n_heads, bias=False)

    def _rotate(self, x: Tensor, ctx: Context, layer: int) -> Tensor:
        rope = ctx.rotary(layer)
        if rope is None:
            return x
        cos, sin = (relayout_rope(t, ctx.rope_layout, self.spec.rope_layout) for t in rope)
        return apply_rope(x, cos, sin, self.spec.rope_layout)

    def key(self, x: Tensor, ctx: Context, layer: int) -> Tensor:
        """(B, 1, T, head_dim): the rotated, normed indexer key of each token (what a cache keeps)."""
        return self._rotate(self.k_norm(self.k(x))[:, None], ctx, layer)

    def forward(self, x: Tensor, q_latent: Tensor, keys: Tensor, allowed: Tensor, ctx: Context, layer: int) -> Tensor:
        """(B, T, S) index scores I(t, s) in float32; -inf where `allowed` (B or 1, 1, T, S) is False."""
        B, T, _ = x.shape
        s = self.spec
        q = self.q(q_latent).view(B, T, s.n_heads, s.head_dim).transpose(1, 2)  # (B, Hi, T, Di)
        q = self._rotate(q, ctx, layer)
        scores = torch.relu(torch.matmul(q.float(), keys.float().transpose(-1, -2)) * s.head_dim**-0.5)  # (B, Hi, T, S)
        w = self.weights(x).float() * s.n_heads**-0.5  # (B, T, Hi)
        index = torch.einsum("bth,bhts->bts", w, scores)  # (B, T, S)
        return index.masked_fill(~allowed[:, 0], float("-inf"))

    def select(self, x: Tensor, q_latent: Tensor, keys: Tensor, allowed: Tensor, ctx: Context, layer: int) -> Tensor:
        """allowed (B or 1, 1, T, S) bool → the same restricted to each query's top-k keys by index score.

        A key whose every head is ReLU'd to 0 scores exactly 0, so keys can tie at the top-k boundary;
        torch.topk (as transformers' DeepseekV32Indexer) then picks among them in an order that depends
        on the row's length, so a cached decode and a full forward may keep different keys there."""
        index = self(x, q_latent, keys, allowed, ctx, layer)  # (B, T, S)
        top = index.topk(min(self.spec.topk, index.shape[-1]), dim=-1).indices
        keep = torch.zeros_like(index, dtype=torch.bool).scatter(-1, top, True)
        return allowed & keep[:, None]  # (B, 1, T, S)


def relayout_rope(t: Tensor, src: str, dst: str) -> Tensor:
    """A cos or sin table (…, R) built for rotary layout `src`, rewritten for layout `dst`."""
    if src == dst:
        return t
    half = t[..., 0::2] if src == "interleaved" else t[..., : t.shape[-1] // 2]  # one entry per frequency
    return torch.cat([half, half], dim=-1) if dst == "halves" else half.repeat_interleave(2, dim=-1)


def allowed_slots(mask: Tensor | None, T: int, S: int, device) -> Tensor:
    """An SDPA attn_mask (None: plain causal) as a bool (·, 1, T, S) of the slots a query may see."""
    if mask is None:
        return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)[None, None]
    return mask if mask.dtype == torch.bool else mask > float("-inf")


@register("attention", "mla", MLASpec)
class MLAttention(AttentionModule):
    """MLA: queries from a low-rank latent, keys/values decompressed from one shared latent c_kv.

    k_i = [W_UK c_kv ; RoPE(W_KR x)] with the rope key shared across heads (eq. 14-19).
    q_lora_rank: None gives a full-rank query projection. Softmax scale 1/sqrt(nope + rope) times
    the rotary scaling's temperature (YaRN mscale_all_dim)."""

    def __init__(self, spec: MLASpec, d_model: int, layer: int = 0, scale_mult: float = 1.0):
        super().__init__()
        self.spec, self.layer = spec, layer
        h, qk = spec.n_heads, spec.qk_nope_head_dim + spec.qk_rope_head_dim
        self.n_heads, self.qk_dim = h, qk
        if spec.q_lora_rank is None:
            self.q = Linear(d_model, h * qk, bias=False)  # HF DeepSeek: q_proj never has a bias
        else:
            self.q_a = Linear(d_model, spec.q_lora_rank, bias=spec.bias)
            self.q_norm = build("norm", spec.latent_norm, spec.q_lora_rank)
            self.q_b = Linear(spec.q_lora_rank, h * qk, bias=False)
        self.kv_a = Linear(d_model, spec.kv_lora_rank + spec.qk_rope_head_dim, bias=spec.bias)
        self.kv_norm = build("norm", spec.latent_norm, spec.kv_lora_rank)
        # no bias: the absorbed path folds kv_b into the query and the output (see `absorbed`)
        self.kv_b = Linear(spec.kv_lora_rank, h * (spec.qk_nope_head_dim + spec.v_head_dim), bias=False)
        self.o = Linear(h * spec.v_head_dim, d_model, bias=spec.bias)
        self.scale = qk**-0.5 * scale_mult
        self.window = spec.window
        self.indexer = None if spec.indexer is None else LightningIndexer(
            spec.indexer, d_model, spec.q_lora_rank, spec.qk_rope_head_dim)

    def query_latent(self, x: Tensor) -> Tensor:
        return self.q_norm(self.q_a(x))

    def query(self, x: Tensor, latent: Tensor | None = None) -> Tensor:
        if self.spec.q_lora_rank is None:
            return self.q(x)
        return self.q_b(self.query_latent(x) if latent is None else latent)

    def _cache(self, ctx: Context, k: Tensor, v: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Append this step's (k, v) and, with an indexer, its key (stored after v's dims) to the cache;
        returns k, v and the indexer keys (B, 1, S, head_dim) of every key slot."""
        ik = self.indexer.key(x, ctx, self.layer) if self.indexer is not None else None
        if ik is not None:
            v = torch.cat([v, ik.expand(-1, v.shape[1], -1, -1)], dim=-1)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer, k, v)
        if ik is not None:
            v, ik = v[..., : -ik.shape[-1]], v[:, :1, :, -ik.shape[-1]:]
        return k, v, ik

    def _mask(self, x: Tensor, ctx: Context, q_latent: Tensor | None, ik: Tensor | None, S: int) -> Tensor | None:
        mask = ctx.mask(self.window)
        if self.indexer is None:
            return mask
        allowed = allowed_slots(mask, x.shape[1], S, x.device)
        return self.indexer.select(x, q_latent, ik, allowed, ctx, self.layer)

    def tp_plan(self, tp: int, ep: bool = False) -> dict:
        """Tensor-parallel plan (llmzoo.parallel): the per-head up-projections (q or q_b, kv_b) column-
        parallel and o row-parallel; the latents (q_a, kv_a) and their norms stay whole on every rank.
        The absorbed decode path is not split (it reads kv_b's weight directly)."""
        self.spec.tp_local(tp, f"blocks.{self.layer}.attn")  # checks divisibility
        q = "q" if self.spec.q_lora_rank is None else "q_b"
        r = self.spec.kv_lora_rank  # kv_a's rope-key columns reach every rank's heads directly
        return {q: plan.ColwiseParallel(), "kv_a": plan.SumGradColumns(r, r + self.spec.qk_rope_head_dim),
                "kv_b": plan.ColwiseParallel(), "o": plan.RowwiseParallel()}

    def beta_scaled(self) -> list[nn.Module]:
        return [self.o]

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        if ctx.latent_kv:  # a latent cache (llmzoo.cache.StaticCache, mla="absorbed")
            return self.absorbed(x, ctx)
        s = self.spec
        B, T, _ = x.shape
        q_latent = self.query_latent(x) if s.q_lora_rank is not None else None
        q = self.query(x, q_latent).view(B, T, -1, self.qk_dim).transpose(1, 2)  # (B, H, T, nope+rope)
        q_nope, q_pe = q.split([s.qk_nope_head_dim, s.qk_rope_head_dim], dim=-1)
        c_kv, k_pe = self.kv_a(x).split([s.kv_lora_rank, s.qk_rope_head_dim], dim=-1)
        k_pe = k_pe[:, None]  # (B, 1, T, rope): one rotary key shared by all heads
        if ctx.rotary(self.layer) is not None:
            q_pe, k_pe = ctx.rope_apply(q_pe, self.layer), ctx.rope_apply(k_pe, self.layer)
        kv = self.kv_b(self.kv_norm(c_kv)).view(B, T, -1, s.qk_nope_head_dim + s.v_head_dim).transpose(1, 2)
        k_nope, v = kv.split([s.qk_nope_head_dim, s.v_head_dim], dim=-1)  # (B, H, T, ·)
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, k_pe.expand(-1, q.shape[1], -1, -1)], dim=-1)
        k, v, ik = self._cache(ctx, k, v, x)
        y = sdpa(q, k, v, self._mask(x, ctx, q_latent, ik, k.shape[2]), self.scale)  # (B, H, T, v_head_dim)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))

    def compress(self, x: Tensor, ctx: Context) -> tuple[Tensor, Tensor]:
        """What the absorbed cache holds per token: normed latent c_kv (B, 1, T, kv_lora_rank) and the
        rotated shared key k_pe (B, 1, T, qk_rope_head_dim), as one-head tensors so any (B, H, S, D)
        KV cache stores them unchanged."""
        c_kv, k_pe = self.kv_a(x).split([self.spec.kv_lora_rank, self.spec.qk_rope_head_dim], dim=-1)
        c_kv, k_pe = self.kv_norm(c_kv)[:, None], k_pe[:, None]
        if ctx.rotary(self.layer) is not None:
            k_pe = ctx.rope_apply(k_pe, self.layer)
        return c_kv, k_pe

    def absorbed(self, x: Tensor, ctx: Context, latent: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """MLA with W_UK folded into the query and W_UV into the output (DeepSeek-V2 §2.1.2): attention
        runs over the latent itself, so a cache stores kv_lora_rank + qk_rope_head_dim per token and layer.

        q_nope·k_nope = (W_UKᵀ q_nope)·c_kv, and Σ p·v = W_UV (Σ p·c_kv); same result as `forward`.
        latent: (c_kv, k_pe) of every key slot (cached + current, as `compress` gives them); when None
        it is computed from x and, if ctx.cache is set, appended to the cache via cache.update."""
        s = self.spec
        B, T, _ = x.shape
        q_latent = self.query_latent(x) if s.q_lora_rank is not None else None
        q = self.query(x, q_latent).view(B, T, self.n_heads, self.qk_dim).transpose(1, 2)  # (B, H, T, nope+rope)
        q_nope, q_pe = q.split([s.qk_nope_head_dim, s.qk_rope_head_dim], dim=-1)
        if ctx.rotary(self.layer) is not None:
            q_pe = ctx.rope_apply(q_pe, self.layer)
        if latent is None:
            c_kv, k_pe, ik = self._cache(ctx, *self.compress(x, ctx), x)
        else:
            c_kv, k_pe = latent
            ik = self.indexer.key(x, ctx, self.layer) if self.indexer is not None else None
            if ik is not None and ik.shape[2] != c_kv.shape[2]:
                raise UnsupportedError(f"blocks.{self.layer}.attn.indexer: latent= of {c_kv.shape[2]} key slots "
                                       f"lacks their indexer keys (pass it through ctx.cache instead)")
        # (B, 1, S, r), (B, 1, S, rope)
        w = self.kv_b.weight.view(self.n_heads, s.qk_nope_head_dim + s.v_head_dim, s.kv_lora_rank)
        w_uk, w_uv = w.split([s.qk_nope_head_dim, s.v_head_dim], dim=1)  # (H, nope, r), (H, v, r)
        q_lat = torch.einsum("bhtd,hdr->bhtr", q_nope, w_uk)  # (B, H, T, r)
        y_lat = sdpa(  # one shared "head" of keys [c_kv ; k_pe] and values c_kv
            torch.cat([q_lat, q_pe], dim=-1), torch.cat([c_kv, k_pe], dim=-1), c_kv,
            self._mask(x, ctx, q_latent, ik, c_kv.shape[2]), self.scale,
        )  # (B, H, T, r)
        y = torch.einsum("bhtr,hvr->bthv", y_lat, w_uv)  # (B, T, H, v_head_dim)
        return self.o(y.reshape(B, T, self.n_heads * s.v_head_dim))
