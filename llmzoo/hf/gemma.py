"""Gemma (`model_type: gemma`, arXiv:2403.08295): head_dim 256 independent of d_model, GeGLU with
tanh GELU, RMSNorm storing g - 1 (scale by 1 + g), embeddings scaled by sqrt(d_model), tied head;
Gemma-2B uses MQA (num_key_value_heads: 1)."""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import Adapter, activation_name
from .llama import LLAMA, llama_like_config, llama_like_hf
from .rules import IGNORE, Rule


@register_adapter
class GemmaAdapter(Adapter):
    model_type = "gemma"
    families = ("gemma",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        if hf.get("use_bidirectional_attention"):  # an encoder switch; no released `gemma` checkpoint sets it
            raise ValueError("use_bidirectional_attention: true is not supported (GemmaForCausalLM is causal)")
        # the official config.json says hidden_act "gelu" but means the tanh form (transformers #29402)
        act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
        act = "gelu_tanh" if act == "gelu" else activation_name(act)
        bias = bool(hf.get("attention_bias", False))
        return llama_like_config(hf, family="gemma", qkv_bias=bias, o_bias=bias, activation=act,
                                 unit_offset=True, embed_scale="sqrt_d_model", tied_default=True)

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        return {"architectures": ["GemmaForCausalLM"], **llama_like_hf(config),
                "attention_bias": config.block.attention.qkv_bias}

    def rules(self, config: ModelConfig) -> list[Rule]:
        head = [Rule("lm_head.weight", IGNORE if config.head.tied else "head.weight")]
        return LLAMA + head

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "gemma", "vocab_size": 96, "hidden_size": 48, "intermediate_size": 96,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 1,  # MQA as 2B
            "head_dim": 32,  # wider than hidden_size / heads, as 256 vs 3072 / 16
            "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "hidden_act": "gelu_pytorch_tanh", "tie_word_embeddings": True,
        }
