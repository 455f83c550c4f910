"""Independent reference forwards for remote-code model types (no transformers class).

Written from the published modeling files' equations (internlm/internlm2-7b modeling_internlm2.py,
baichuan-inc/Baichuan2-{7B,13B}-Base modeling_baichuan.py), with parameter names equal to the
checkpoint's, and deliberately sharing no code with llmzoo's modules: these are what llmzoo is
checked against. Eager attention in fp32 softmax, right padding, positions 0..T-1.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RefRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


def rotate_half_rope(x: Tensor, theta: float, position_scale: float = 1.0) -> Tensor:
    """LLaMA-style rotary on (B, H, T, D): pairs (i, i + D/2), angle (t / position_scale) / theta^(2i/D)."""
    T, D = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D)
    ang = torch.outer(torch.arange(T, dtype=torch.float32) / position_scale, inv)
    emb = torch.cat([ang, ang], dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def eager_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, bias: Tensor | None = None) -> Tensor:
    """softmax(q kᵀ / sqrt(d) + bias, masked) v; q (B, H, T, D), k/v (B, H, T, D), mask (B, 1, T, T) bool."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return F.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def causal_padding_mask(attention_mask: Tensor) -> Tensor:
    T = attention_mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return causal[None, None] & attention_mask.bool()[:, None, None, :]


def _logits_of(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    return input_ids, causal_padding_mask(attention_mask)


class _SwiGLU(nn.Module):
    """down(silu(gate(x)) · up(x)), no biases; `names`: the checkpoint's (gate, up, down)."""

    def __init__(self, c: dict[str, Any], names: tuple[str, str, str]):
        super().__init__()
        d, f = c["hidden_size"], c["intermediate_size"]
        self.names = names
        for name, (n_in, n_out) in zip(names, ((d, f), (d, f), (f, d))):
            self.add_module(name, nn.Linear(n_in, n_out, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        gate, up, down = (getattr(self, n) for n in self.names)
        return down(F.silu(gate(x)) * up(x))


class _PreNormLayer(nn.Module):
    """x + attn(norm₁ x), then + mlp(norm₂ x), RMSNorms; `names`: the checkpoint's (norm₁, attn, norm₂, mlp)."""

    def __init__(self, c: dict[str, Any], names: tuple[str, str, str, str], attention: nn.Module, mlp: nn.Module):
        super().__init__()
        self.names = names
        for name, module in zip(names, (RefRMSNorm(c["hidden_size"], c["rms_norm_eps"]), attention,
                                        RefRMSNorm(c["hidden_size"], c["rms_norm_eps"]), mlp)):
            self.add_module(name, module)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        norm1, attn, norm2, mlp = (getattr(self, n) for n in self.names)
        x = x + attn(norm1(x), mask)
        return x + mlp(norm2(x))


class _Body(nn.Module):
    """The checkpoint's `model.`: token embedding (named `embed`) → layers → RMSNorm `norm`."""

    def __init__(self, c: dict[str, Any], embed: str, layer):
        super().__init__()
        self.embed = embed
        self.add_module(embed, nn.Embedding(c["vocab_size"], c["hidden_size"]))
        self.layers = nn.ModuleList(layer() for _ in range(c["num_hidden_layers"]))
        self.norm = RefRMSNorm(c["hidden_size"], c["rms_norm_eps"])

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        ids, mask = _logits_of(self, input_ids, attention_mask)
        x = getattr(self, self.embed)(ids)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


# ------------------------------------------------------------------------------ InternLM2


class _InternLM2Attention(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        d, self.h, self.kv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
        self.dh = d // self.h
        bias = c.get("bias", True)
        self.wqkv = nn.Linear(d, (self.h + 2 * self.kv) * self.dh, bias=bias)
        self.wo = nn.Linear(self.h * self.dh, d, bias=bias)
        self.theta = c.get("rope_theta", 10000.0)
        s = c.get("rope_scaling") or {}
        self.scaling, self.factor = s.get("type"), float(s.get("factor", 1.0))
        if self.scaling not in (None, "linear", "dynamic"):
            raise ValueError(f"InternLM2Reference: rope_scaling type {self.scaling!r} is not linear or dynamic")
        self.max_pos = c.get("max_position_embeddings", 2048)

    def rope(self, x: Tensor) -> Tensor:
        """InternLM2{Linear,DynamicNTK}ScalingRotaryEmbedding: positions / factor, or for T > max_position_embeddings
        the base theta · (factor · T / max_position_embeddings - (factor - 1))^(D / (D - 2))."""
        T, D = x.shape[-2], x.shape[-1]
        if self.scaling == "linear":
            return rotate_half_rope(x, self.theta, self.factor)
        theta = self.theta
        if self.scaling == "dynamic" and T > self.max_pos:
            theta = theta * ((self.factor * T / self.max_pos) - (self.factor - 1)) ** (D / (D - 2))
        return rotate_half_rope(x, theta)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        B, T, _ = x.shape
        g = self.h // self.kv
        qkv = self.wqkv(x).view(B, T, self.kv, g + 2, self.dh)  # per KV group: g queries, then k, then v
        q = qkv[..., :g, :].reshape(B, T, self.h, self.dh).transpose(1, 2)
        k = qkv[..., -2, :].transpose(1, 2)
        v = qkv[..., -1, :].transpose(1, 2)
        q, k = self.rope(q), self.rope(k)
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        y = eager_attention(q, k, v, mask)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class InternLM2Reference(nn.Module):
    """InternLM2ForCausalLM's forward: tok_embeddings → layers (RMSNorm, fused-wqkv GQA with rotary,
    SwiGLU w2(silu(w1 x) · w3 x)) → norm → output."""

    def __init__(self, hf_config: dict[str, Any]):
        super().__init__()
        self.hf_config = dict(hf_config)
        self.model = _Body(hf_config, "tok_embeddings", lambda: _PreNormLayer(
            hf_config, ("attention_norm", "attention", "ffn_norm", "feed_forward"),
            _InternLM2Attention(hf_config), _SwiGLU(hf_config, ("w1", "w3", "w2"))))
        self.output = nn.Linear(hf_config["hidden_size"], hf_config["vocab_size"], bias=False)
        if hf_config.get("tie_word_embeddings"):  # what transformers' tie_weights does to `output` (_tied_weights_keys)
            self.output.weight = self.model.tok_embeddings.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.output(self.model(input_ids, attention_mask))


# ------------------------------------------------------------------------------ Baichuan


def baichuan_alibi_slopes(n: int) -> Tensor:
    """Baichuan-13B's `_get_interleave`: 2^(-8h/n) for a power of two n, else the closest lower
    power's slopes followed by every other slope of twice that many heads."""
    def power_of_2(m: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(m) - 3)))
        return [start * start**i for i in range(m)]

    if math.log2(n).is_integer():
        return torch.tensor(power_of_2(n))
    p = 2 ** math.floor(math.log2(n))
    return torch.tensor(power_of_2(p) + baichuan_alibi_slopes(2 * p).tolist()[0::2][: n - p])


class _BaichuanAttention(nn.Module):
    def __init__(self, c: dict[str, Any], alibi: bool):
        super().__init__()
        d, self.h = c["hidden_size"], c["num_attention_heads"]
        self.dh, self.d, self.alibi = d // self.h, d, alibi
        self.W_pack = nn.Linear(d, 3 * d, bias=False)  # [q; k; v] along the output dim
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        B, T, _ = x.shape
        q, k, v = (t.view(B, T, self.h, self.dh).transpose(1, 2) for t in self.W_pack(x).split(self.d, dim=-1))
        bias = None
        if self.alibi:  # the published mask adds slope_h · j (key index); per row it equals slope_h · (j - i)
            bias = baichuan_alibi_slopes(self.h)[None, :, None, None] * torch.arange(T, dtype=torch.float32)
        else:
            q, k = rotate_half_rope(q, 10000.0), rotate_half_rope(k, 10000.0)
        y = eager_attention(q, k, v, mask, bias)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.d))


class _NormHead(nn.Module):
    def __init__(self, d: int, vocab: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab, d))
        nn.init.normal_(self.weight, std=d**-0.5)

    def forward(self, x: Tensor) -> Tensor:  # Baichuan 2 NormHead: rows L2-normalised before the product
        return F.linear(x, F.normalize(self.weight))


class BaichuanReference(nn.Module):
    """BaichuanForCausalLM (Baichuan 2): W_pack fused q/k/v, SwiGLU, RMSNorm, NormHead; ALiBi when
    `alibi` (13B), rotary base 10000 otherwise (7B)."""

    def __init__(self, hf_config: dict[str, Any], alibi: bool):
        super().__init__()
        self.hf_config = dict(hf_config)
        self.model = _Body(hf_config, "embed_tokens", lambda: _PreNormLayer(
            hf_config, ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"),
            _BaichuanAttention(hf_config, alibi), _SwiGLU(hf_config, ("gate_proj", "up_proj", "down_proj"))))
        self.lm_head = _NormHead(hf_config["hidden_size"], hf_config["vocab_size"])

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.lm_head(self.model(input_ids, attention_mask))
