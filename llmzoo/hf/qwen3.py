"""Qwen3 (`model_type: qwen3`, arXiv:2505.09388): the Qwen2 layout without the q/k/v bias and with
QK-norm, an RMSNorm over each head's queries and keys before rotary (§2); head_dim set on its own
(128 for every size); the small sizes tie the head."""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import Adapter
from .llama import LLAMA, head_rules, llama_like_config
from .qwen2 import Qwen2Adapter, qwen2_windows
from .rules import Rule

QK_NORM = [  # hf tensor                                llmzoo tensor
    Rule("model.layers.{i}.self_attn.q_norm.weight",     "blocks.{i}.attn.q_norm.weight"),
    Rule("model.layers.{i}.self_attn.k_norm.weight",     "blocks.{i}.attn.k_norm.weight"),
]


@register_adapter
class Qwen3Adapter(Adapter):
    model_type = "qwen3"
    families = ("qwen-3",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        bias = bool(hf.get("attention_bias", False))
        return llama_like_config(hf, family="qwen3", qkv_bias=bias, o_bias=bias, windows=qwen2_windows(hf),
                                 qk_norm="head")

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        out = Qwen2Adapter.from_config(self, config)  # the same window keys
        return {**out, "architectures": ["Qwen3ForCausalLM"], "attention_bias": config.block.attention.qkv_bias}

    def rules(self, config: ModelConfig) -> list[Rule]:
        return LLAMA + QK_NORM + head_rules(config)

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "qwen3", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 24,  # ≠ hidden_size / heads, as Qwen3's 128 vs 1024 / 16
            "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "use_sliding_window": False, "sliding_window": 8, "max_window_layers": 2,
            "tie_word_embeddings": True, "attention_bias": False,
        }
