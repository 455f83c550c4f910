"""Analytic sizes: parameter counts (total and activated per token) and KV-cache bytes, no instantiation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .config import ModelConfig
from .errors import ConfigError
from .zoo import get_config


DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
                 "float": "float32", "fp8": "float8_e4m3fn"}
# storage bits of dtypes whose element_size() rounds up to a whole byte (sub-byte integer types)
_SUB_BYTE_BITS = {"int1": 1, "int2": 2, "int3": 3, "int4": 4, "int5": 5, "int6": 6, "int7": 7,
                  "uint1": 1, "uint2": 2, "uint3": 3, "uint4": 4, "uint5": 5, "uint6": 6, "uint7": 7}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A torch dtype from a dtype, its name ("bfloat16", "torch.bfloat16") or an alias (bf16, fp16, fp32, fp8)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    value = getattr(torch, DTYPE_ALIASES.get(name, name), None)
    if not isinstance(value, torch.dtype):
        raise ConfigError(f"dtype {dtype!r} is not a torch dtype (e.g. float32, bfloat16 or bf16, float16 or fp16)")
    return value


def dtype_bytes(dtype: str | torch.dtype) -> float:
    """Bytes per element as stored: 2 for bfloat16, 0.5 for int4 (two per byte; element_size() says 1)."""
    dt = resolve_dtype(dtype)
    bits = _SUB_BYTE_BITS.get(str(dt).removeprefix("torch."))
    return bits / 8 if bits else float(torch.empty((), dtype=dt).element_size())


@dataclass
class ParamCount:
    """Parameter count by part. `active` counts what one token uses (MoE: top_k routed experts)."""

    parts: dict[str, int] = field(default_factory=dict)
    active: int = 0

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def add(self, part: str, n: int, active: bool | int = True) -> None:
        """active: True (all n), False (none) or how many of the n one token uses."""
        self.parts[part] = self.parts.get(part, 0) + n
        self.active += n if active is True else int(active)


def count_params(source: str | dict | ModelConfig) -> ParamCount:
    """Count parameters from the config alone; equals sum(p.numel()) of the built model.

    Parts: embedding (tokens, project in/out), positions, attention, mlp (dense FFNs and shared
    experts), moe_router, moe_experts (routed; only top_k of them active), norms, conv (layer_conv), head."""
    c = get_config(source) if not isinstance(source, ModelConfig) else source
    n = ParamCount()
    d, e = c.d_model, c.d_embed
    n.add("embedding", c.vocab_size * e + (2 * e * d if e != d else 0))
    n.add("positions", c.position.n_params(d, c.n_heads))
    if c.embedding.norm is not None:
        n.add("norms", c.embedding.norm.n_params(d))
    encoder_blocks = [c.encoder.block] * c.encoder.n_layers if c.encoder is not None else []
    for b in [*c.blocks, *encoder_blocks]:  # an encoder-decoder's encoder blocks count the same way
        n.add("attention", b.attention.n_params(d))
        if b.cross_attention is not None:  # decoder attention over the encoder output (T5)
            n.add("attention", b.cross_attention.n_params(d))
        for part, (total, active) in b.mlp.param_parts(d).items():  # MoE: router, shared, routed experts
            n.add(part, total, active)
        n.add("norms", b.n_norms * b.norm.n_params(d))
    if c.final_norm is not None:
        n.add("norms", c.final_norm.n_params(d))
    if c.encoder is not None:  # the encoder's own position table, embedding norm and final norm
        n.add("positions", c.encoder.position.n_params(d, c.encoder.block.attention.n_heads))
        if c.embedding.norm is not None:
            n.add("norms", c.embedding.norm.n_params(d))
        if c.encoder.final_norm is not None:
            n.add("norms", c.encoder.final_norm.n_params(d))
    if c.layer_conv is not None:  # DeBERTa-v2 xlarge's convolution: kernel, bias, its norm
        n.add("conv", c.layer_conv.n_params(d))
    if c.head.transform is not None:  # masked-LM prediction transform (dense, norm)
        n.add("head", c.head.transform.n_params(d))
    if not c.head.tied:
        n.add("head", c.vocab_size * e + (c.vocab_size if c.head.bias else 0))
    elif c.head.bias:
        n.add("head", c.vocab_size)
    return n


def kv_cache_bytes(
    source: str | dict | ModelConfig, seq_len: int, batch: int = 1, dtype: str | torch.dtype = "bfloat16"
) -> int:
    """Bytes of the KV cache for `batch` sequences of `seq_len` tokens.

    Per layer: attention.kv_cache_dims elements per cached token (its kv_layout: 2·n_kv_heads·head_dim;
    MLA caches kv_lora_rank + qk_rope_head_dim) for attention.cached_tokens(seq_len) tokens (a window: fewer).
    Encoder-decoder (T5): each decoder layer also caches its cross-attention K/V of a `seq_len`-token source."""
    c = get_config(source) if not isinstance(source, ModelConfig) else source
    itemsize = dtype_bytes(dtype)
    total = 0
    for b in c.blocks:
        total += b.attention.kv_cache_dims * b.attention.cached_tokens(seq_len)
        if b.cross_attention is not None:
            total += b.cross_attention.kv_cache_dims * seq_len
    return math.ceil(total * batch * itemsize)
