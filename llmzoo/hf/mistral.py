"""Mistral (`model_type: mistral`): the LLaMA table plus a sliding attention window on every layer
(Jiang et al., arXiv:2310.06825, §2: a token sees `sliding_window` keys, itself included)."""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import Adapter, one_window
from .llama import LLAMA, head_rules, llama_like_config, llama_like_hf
from .rules import Rule


@register_adapter
class MistralAdapter(Adapter):
    model_type = "mistral"
    families = ("mistral",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        return llama_like_config(hf, family="mistral", qkv_bias=False, o_bias=False, window=hf.get("sliding_window"))

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        return {"architectures": ["MistralForCausalLM"], **llama_like_hf(config),
                "sliding_window": one_window(config, self.model_type, every_layer=True)}

    def rules(self, config: ModelConfig) -> list[Rule]:
        return LLAMA + head_rules(config)

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "mistral", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "sliding_window": 8,  # shorter than the parity batch, so the window is exercised
            "tie_word_embeddings": False,
        }
