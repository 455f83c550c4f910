"""OLMo-2 (`model_type: olmo2`, arXiv:2501.00656 §3.2): the LLaMA layout with the norms moved onto
the sub-layer outputs, x + RMSNorm(F(x)) and no input norm (placement 'output'), and QK-norm over
the whole q and k projections before the head split (qk_norm_scope 'projection')."""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import NO_TOKEN_IDS, Adapter
from .llama import LLAMA, head_rules, llama_like_dict, llama_like_hf
from .qwen3 import QK_NORM
from .rules import Rule

OUTPUT_NORMS = [  # hf tensor                                    llmzoo tensor
    Rule("model.layers.{i}.post_attention_layernorm.weight",     "blocks.{i}.attn_out_norm.weight"),
    Rule("model.layers.{i}.post_feedforward_layernorm.weight",   "blocks.{i}.mlp_out_norm.weight"),
]
OLMO2 = [r for r in LLAMA if "layernorm" not in r.hf.text] + OUTPUT_NORMS + QK_NORM


@register_adapter
class Olmo2Adapter(Adapter):
    model_type = "olmo2"
    families = ("olmo-2",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        bias = bool(hf.get("attention_bias", False))
        d = llama_like_dict(hf, family="olmo2", qkv_bias=bias, o_bias=bias, qk_norm="projection")
        d["block"]["placement"] = "output"
        return ModelConfig.model_validate(d)

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        return {"architectures": ["Olmo2ForCausalLM"], **llama_like_hf(config),
                "attention_bias": config.block.attention.qkv_bias, **NO_TOKEN_IDS}

    def rules(self, config: ModelConfig) -> list[Rule]:
        return OLMO2 + head_rules(config)

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "olmo2", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,  # 32B: GQA
            "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 500000.0,
            "tie_word_embeddings": False, "attention_bias": False,
            "pad_token_id": 1, "eos_token_id": 2,  # inside the tiny vocabulary (the class default eos is 50279)
        }
