"""LLaMA (`model_type: llama`): LLaMA-2, Llama-3.1 (rope scaling), Yi, DeepSeek-67B, and the table
the other LLaMA-shaped types (mistral, qwen2, gemma) share.

Pre-norm RMSNorm blocks, rotary positions on the halves layout, SwiGLU MLP, untied head.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from .adapter import (
    HF_ACTIVATION,
    Adapter,
    activation_name,
    attention_kind,
    config_base,
    require,
    rope_from_hf,
    rope_to_hf,
)
from . import register_adapter
from .rules import IGNORE, Rule, weight_bias

LLAMA = [  # hf tensor                                          llmzoo tensor
    Rule("model.embed_tokens.weight",                           "embed.weight"),
    Rule("model.layers.{i}.input_layernorm.weight",             "blocks.{i}.attn_norm.weight"),
    *weight_bias("model.layers.{i}.self_attn.q_proj",           "blocks.{i}.attn.q"),
    *weight_bias("model.layers.{i}.self_attn.k_proj",           "blocks.{i}.attn.k"),
    *weight_bias("model.layers.{i}.self_attn.v_proj",           "blocks.{i}.attn.v"),
    *weight_bias("model.layers.{i}.self_attn.o_proj",           "blocks.{i}.attn.o"),
    Rule("model.layers.{i}.post_attention_layernorm.weight",    "blocks.{i}.mlp_norm.weight"),
    *weight_bias("model.layers.{i}.mlp.gate_proj",              "blocks.{i}.mlp.gate"),
    *weight_bias("model.layers.{i}.mlp.up_proj",                "blocks.{i}.mlp.up"),
    *weight_bias("model.layers.{i}.mlp.down_proj",              "blocks.{i}.mlp.down"),
    Rule("model.layers.{i}.self_attn.rotary_emb.inv_freq",      IGNORE),  # older saves keep the rope table
    Rule("model.norm.weight",                                   "final_norm.weight"),
]
# the table of a LLaMA-shaped type whose MLP is its own (mixtures of experts)
ATTENTION_AND_NORMS = [r for r in LLAMA if ".mlp." not in r.hf.text]


def head_rules(config: ModelConfig) -> list[Rule]:
    # a tied checkpoint sometimes stores lm_head.weight anyway: a copy of the embedding
    return [Rule("lm_head.weight", IGNORE if config.head.tied else "head.weight")]


def llama_like_config(hf: dict[str, Any], **quirks: Any) -> ModelConfig:
    """ModelConfig of a LLaMA-shaped config.json (quirks: see llama_like_dict)."""
    return ModelConfig.model_validate(llama_like_dict(hf, **quirks))


def llama_like_dict(
    hf: dict[str, Any],
    *,
    family: str,
    qkv_bias: bool,
    o_bias: bool,
    mlp_bias: bool = False,
    activation: str | None = None,
    unit_offset: bool = False,
    embed_scale: str = "none",
    windows: list[int | None] | None = None,
    window: int | None = None,
    tied_default: bool = False,
    qk_norm: str | None = None,
) -> dict[str, Any]:
    """The ModelConfig mapping of a LLaMA-shaped config.json; the keyword arguments are the type's quirks
    (windows: one per layer; window: the same on every layer; qk_norm: 'head' or 'projection', the
    scope of an RMSNorm on q and k with the model's eps)."""
    d = int(require(hf, "hidden_size"))
    n_heads = int(require(hf, "num_attention_heads"))
    n_kv = int(hf.get("num_key_value_heads") or n_heads)
    head_dim = int(hf.get("head_dim") or d // n_heads)
    n_layers = int(require(hf, "num_hidden_layers"))
    eps = float(hf.get("rms_norm_eps", 1e-6))
    norm = {"type": "rmsnorm", "eps": eps, "unit_offset": unit_offset}
    attention = {"type": attention_kind(n_heads, n_kv), "n_heads": n_heads, "n_kv_heads": n_kv,
                 "head_dim": head_dim, "qkv_bias": qkv_bias, "o_bias": o_bias,
                 "window": int(window) if window else None}
    if qk_norm is not None:
        attention.update(qk_norm=norm, qk_norm_scope=qk_norm)
    act = activation or activation_name(hf.get("hidden_act", "silu"))
    overrides = []
    if windows is not None and any(w is not None for w in windows):
        for w in sorted(set(windows), key=lambda w: (w is None, w)):
            layers = [i for i, x in enumerate(windows) if x == w]
            if w is not None:
                overrides.append({"layers": layers, "block": {"attention": {"window": w}}})
    config = {
        **config_base(hf, family, tied=tied_default),
        "d_model": d,
        "n_layers": n_layers,
        "max_seq_len": int(hf.get("max_position_embeddings", 2048)),
        "position": rope_from_hf(hf),
        "embedding": {"scale": embed_scale},
        "block": {
            "placement": "pre",
            "norm": norm,
            "attention": attention,
            "mlp": {"type": "glu", "activation": act, "d_ff": int(require(hf, "intermediate_size")),
                    "bias": mlp_bias},
        },
        "overrides": overrides,
        "final_norm": norm,
    }
    # a window applied to every layer reads better on the base block
    if windows and len(set(windows)) == 1 and windows[0] is not None:
        config["overrides"] = []
        attention["window"] = windows[0]
    return config


def llama_like_hf(config: ModelConfig) -> dict[str, Any]:
    """The config.json keys every LLaMA-shaped type shares."""
    b, a = config.block, config.block.attention
    out = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": b.mlp.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": a.n_heads,
        "num_key_value_heads": a.n_kv_heads,
        "head_dim": a.head_dim,
        "hidden_act": HF_ACTIVATION[b.mlp.activation],
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": b.norm.eps,
        "tie_word_embeddings": config.head.tied,
        **rope_to_hf(config.position),
    }
    return out


def dense_stand_in(config: ModelConfig, d_ff: int | None = None) -> ModelConfig:
    """`config` with a dense MLP in every layer (its first dense layer's, else a SwiGLU of `d_ff`,
    default the expert size, with the experts' activation) and no MLP overrides: what the LLaMA keys
    of a mixture-of-experts type are read from."""
    moe = next((b.mlp for b in config.blocks if b.mlp.type == "moe"), None)
    dense = next((b.mlp for b in config.blocks if b.mlp.type != "moe"), None)
    data = config.to_dict()
    data["block"]["mlp"] = dense.model_dump() if dense is not None else {
        "type": "glu", "d_ff": d_ff or moe.d_expert, "activation": moe.activation}
    data["overrides"] = [ov for ov in data["overrides"] if "mlp" not in ov["block"]]
    return ModelConfig.model_validate(data)


@register_adapter
class LlamaAdapter(Adapter):
    model_type = "llama"
    families = ("llama-2", "llama-3.1", "llama-3.2", "llama-3.3", "yi", "deepseek")

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        bias = bool(hf.get("attention_bias", False))
        return llama_like_config(hf, family="llama", qkv_bias=bias, o_bias=bias,
                                 mlp_bias=bool(hf.get("mlp_bias", False)))

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        return {
            "architectures": ["LlamaForCausalLM"],
            **llama_like_hf(config),
            "attention_bias": config.block.attention.qkv_bias,
            "mlp_bias": config.block.mlp.bias,
        }

    def rules(self, config: ModelConfig) -> list[Rule]:
        return LLAMA + head_rules(config)

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "llama", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
            # Llama-3.1's frequency-dependent scaling, so the tiny model exercises it
            "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        }
