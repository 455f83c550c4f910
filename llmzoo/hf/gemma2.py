"""Gemma-2 (`model_type: gemma2`, arXiv:2408.00118) and Gemma-3 text (`model_type: gemma3_text`,
arXiv:2503.19786): the Gemma layout with four norms per layer (input, post-attention,
pre-feedforward, post-feedforward: placement 'sandwich'), local sliding-window layers alternating
with global ones (Gemma-2 1:1, Gemma-3 5:1, `layer_types`), softmax scale query_pre_attn_scalar^-½.
Gemma-2 soft-caps attention scores (50) and final logits (30); Gemma-3 drops the caps for QK-norm
(per head, RMSNorm storing g - 1) and gives its local layers their own rope base (10k; global 1M,
linearly scaled ×8 in the 4B-27B models).

Expressed as: the base block is the local layer (window, and Gemma-3's local `block.position`), an
override restores full attention and the model's rope on the global layers.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import Adapter, activation_name, layer_count, one_window, rope_from_hf
from .llama import LLAMA, llama_like_dict, llama_like_hf
from .qwen3 import QK_NORM
from .rules import IGNORE, Rule

SANDWICH = [  # hf tensor                                       llmzoo tensor
    Rule("model.layers.{i}.post_attention_layernorm.weight",     "blocks.{i}.attn_out_norm.weight"),
    Rule("model.layers.{i}.pre_feedforward_layernorm.weight",    "blocks.{i}.mlp_norm.weight"),
    Rule("model.layers.{i}.post_feedforward_layernorm.weight",   "blocks.{i}.mlp_out_norm.weight"),
    Rule("lm_head.weight",                                       IGNORE),  # tied; some saves store a copy
]
GEMMA2 = [r for r in LLAMA if "post_attention_layernorm" not in r.hf.text] + SANDWICH


def selector(layers: list[int], n: int) -> str | list[int]:
    """A slice string ('5::6') when the layers are one, else the list."""
    if len(layers) > 1:
        start, step = layers[0], layers[1] - layers[0]
        if step > 0 and list(range(n))[start::step] == layers:
            return f"{start}::{step}"
    return layers


def layer_types(hf: dict[str, Any], pattern: int) -> list[str]:
    """`layer_types` (transformers 5 and recent hub files) or every `pattern`-th layer global."""
    n = layer_count(hf)
    pattern = int(hf.get("sliding_window_pattern") or pattern)
    types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)
    ]
    bad = sorted(set(types) - {"sliding_attention", "full_attention"})
    if bad or len(types) != n:
        raise ValueError(f"config.json: layer_types {bad or len(types)} (sliding_attention, full_attention per layer)")
    return types


def gemma_local_global(hf: dict[str, Any], *, family: str, pattern: int, qk_norm: bool,
                       local_rope: dict | None, global_rope: dict, attn_softcap: bool = True) -> ModelConfig:
    if hf.get("use_bidirectional_attention"):
        raise ValueError("config.json: use_bidirectional_attention (EmbeddingGemma) is not a causal LM")
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    bias = bool(hf.get("attention_bias", False))
    d = llama_like_dict(hf, family=family, qkv_bias=bias, o_bias=bias, activation=activation_name(act),
                        unit_offset=True, embed_scale="sqrt_d_model", tied_default=True,
                        qk_norm="head" if qk_norm else None)
    a = d["block"]["attention"]
    scalar = float(hf.get("query_pre_attn_scalar") or a["head_dim"])
    a["softmax_scale"] = None if scalar == a["head_dim"] else scalar**-0.5
    a["softcap"] = hf.get("attn_logit_softcapping") if attn_softcap else None
    d["head"]["softcap"] = hf.get("final_logit_softcapping")
    d["block"]["placement"] = "sandwich"
    d["position"] = global_rope
    types = layer_types(hf, pattern)
    n = len(types)
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    window = hf.get("sliding_window")
    if window and len(full) < n:  # the base block is the local layer
        a["window"] = int(window)
        restore: dict[str, Any] = {"attention": {"window": None}}
        if local_rope is not None and local_rope != global_rope:
            d["block"]["position"] = local_rope
            restore["position"] = None  # the global layers use the model's rope
        if full:
            d["overrides"] = [{"layers": selector(full, n), "block": restore}]
    return ModelConfig.model_validate(d)


def gemma_local_global_hf(config: ModelConfig, model_type: str) -> dict[str, Any]:
    """config.json keys of the local/global layout (hub dialect); errors name what it cannot say."""
    blocks, a = config.blocks, config.block.attention
    window = one_window(config, model_type)
    local = {b.position.model_dump_json() if b.position else None for b in blocks if b.attention.window}
    if any(b.position is not None for b in blocks if not b.attention.window) or len(local) > 1:
        raise ValueError(f"{model_type}: only the sliding layers may have their own rope, all the same")
    head_dim = a.head_dim
    scale = a.softmax_scale
    return {
        **llama_like_hf(config),
        "hidden_activation": llama_like_hf(config)["hidden_act"],
        "attention_bias": a.qkv_bias,
        "query_pre_attn_scalar": head_dim if scale is None else round(scale**-2),
        "attn_logit_softcapping": a.softcap,
        "final_logit_softcapping": config.head.softcap,
        "sliding_window": window,
        "layer_types": ["sliding_attention" if b.attention.window else "full_attention" for b in blocks],
    }


@register_adapter
class Gemma2Adapter(Adapter):
    model_type = "gemma2"
    families = ("gemma-2",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        return gemma_local_global(hf, family="gemma2", pattern=2, qk_norm=False, local_rope=None,
                                  global_rope=rope_from_hf(hf))

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        if any(b.position is not None for b in config.blocks):
            raise ValueError("gemma2 uses one rope for every layer")
        return {"architectures": ["Gemma2ForCausalLM"], **gemma_local_global_hf(config, self.model_type)}

    def rules(self, config: ModelConfig) -> list[Rule]:
        return GEMMA2

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "gemma2", "vocab_size": 96, "hidden_size": 48, "intermediate_size": 96,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True,
            "query_pre_attn_scalar": 24,  # ≠ head_dim, as 27B's 144 vs 128
            "sliding_window": 6, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0,  # caps that bite
        }


def gemma3_ropes(hf: dict[str, Any]) -> tuple[dict, dict]:
    """(global, local) rope specs: transformers 5 `rope_parameters` per layer type, or the hub's
    rope_theta + rope_scaling (global) and rope_local_base_freq (local)."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:
        full = rope_from_hf({"rope_parameters": params.get("full_attention") or {}}, default_theta=1e6)
        local = rope_from_hf({"rope_parameters": params.get("sliding_attention") or {}}, default_theta=1e4)
        return full, local
    full = rope_from_hf({**hf, "rope_theta": hf.get("rope_theta", 1e6)})
    return full, {"type": "rope", "theta": float(hf.get("rope_local_base_freq", 1e4))}


@register_adapter
class Gemma3TextAdapter(Adapter):
    model_type = "gemma3_text"
    families = ("gemma-3",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        full, local = gemma3_ropes(hf)
        # attn_logit_softcapping is read by Gemma3TextConfig but never applied by its attention
        # (transformers 5 modeling_gemma3): the reference ignores it, so do we
        return gemma_local_global(hf, family="gemma3", pattern=6, qk_norm=True, local_rope=local, global_rope=full,
                                  attn_softcap=False)

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        out = gemma_local_global_hf(config, self.model_type)
        local = next((b.position for b in config.blocks if b.attention.window), None) or config.position
        if local.type != "rope" or local.scaling is not None:
            raise ValueError("gemma3_text: the local layers' rope has a base only (rope_local_base_freq)")
        return {"architectures": ["Gemma3ForCausalLM"], **out, "rope_local_base_freq": local.theta}

    def rules(self, config: ModelConfig) -> list[Rule]:
        return GEMMA2 + QK_NORM

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "gemma3_text", "vocab_size": 96, "hidden_size": 48, "intermediate_size": 96,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh",
            "tie_word_embeddings": True, "query_pre_attn_scalar": 24, "sliding_window": 6,
            "sliding_window_pattern": 3,  # layers 0, 1, 3 local, 2 global
            # global 1M linearly scaled, local 10k, as the 4B-27B models
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        }
