"""Phi-3 / Phi-3.5 / Phi-4-mini / Phi-4 (`model_type: phi3`, arXiv:2404.14219, arXiv:2503.01743,
arXiv:2412.08905): the LLaMA block with q, k, v fused into one `qkv_proj` and gate, up into one
`gate_up_proj` (split by reversible rules), LongRoPE on the long-context models (short / long
factor lists switching at `original_max_position_embeddings`), partial rotary on Phi-4-mini
(`partial_rotary_factor` 0.75), an optional sliding window on every layer (Phi-3-mini-4k: 2047)."""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import NO_TOKEN_IDS, Adapter, one_window, rope_from_hf
from .llama import LLAMA, head_rules, llama_like_dict, llama_like_hf
from .rules import Rule, Split


def phi3_rope(hf: dict[str, Any]) -> dict[str, Any]:
    """RopeSpec mapping; original_max_position_embeddings and partial_rotary_factor sit at the top
    level of the hub files and inside `rope_parameters` in transformers 5."""
    hf = dict(hf)
    params, scaling = dict(hf.get("rope_parameters") or {}), dict(hf.get("rope_scaling") or {})
    orig = hf.get("original_max_position_embeddings")
    for source in (params, scaling):
        if orig and source:
            source.setdefault("original_max_position_embeddings", orig)
    hf["rope_parameters"], hf["rope_scaling"] = params, scaling
    fraction = float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
    return {**rope_from_hf(hf), "fraction": fraction}


@register_adapter
class Phi3Adapter(Adapter):
    model_type = "phi3"
    families = ("phi-3", "phi-4")

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        d = llama_like_dict(hf, family="phi3", qkv_bias=False, o_bias=False, window=hf.get("sliding_window"))
        d["position"] = phi3_rope(hf)
        return ModelConfig.model_validate(d)

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        pos = config.position
        scaling = getattr(pos, "scaling", None)
        out = llama_like_hf(config)
        if getattr(scaling, "type", None) == "longrope" and config.max_seq_len >= scaling.original_max_positions:
            # the context ratio transformers derives when `factor` is absent (and warns about deriving);
            # the attention_factor written beside it is what both sides use
            out["rope_scaling"]["factor"] = config.max_seq_len / scaling.original_max_positions
        return {"architectures": ["Phi3ForCausalLM"], **out,
                "sliding_window": one_window(config, self.model_type, every_layer=True),
                "partial_rotary_factor": getattr(pos, "fraction", 1.0),
                "original_max_position_embeddings": getattr(scaling, "original_max_positions", config.max_seq_len),
                **NO_TOKEN_IDS}

    def rules(self, config: ModelConfig) -> list[Rule]:
        a = config.block.attention
        q, kv = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
        fused = [  # hf tensor                                 llmzoo tensor                        transforms
            Rule("model.layers.{i}.self_attn.qkv_proj.weight",   "blocks.{i}.attn.{q,k,v}.weight",    Split(0, sizes=[q, kv, kv])),
            Rule("model.layers.{i}.mlp.gate_up_proj.weight",     "blocks.{i}.mlp.{gate,up}.weight",   Split(0, parts=2)),
        ]
        plain = [r for r in LLAMA if not any(k in r.hf.text for k in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"))]
        return plain + fused + head_rules(config)

    def tiny_hf_config(self) -> dict[str, Any]:
        rot = 6  # rotary pairs: head_dim 16 × partial_rotary_factor 0.75 / 2
        return {
            "model_type": "phi3", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "partial_rotary_factor": 0.75,  # Phi-4-mini
            "max_position_embeddings": 64, "original_max_position_embeddings": 16,  # the parity batch crosses 16
            "rope_scaling": {"type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(rot)],
                             "long_factor": [2.0 + 1.5 * i for i in range(rot)],
                             "factor": 4.0},  # max / original, stated as transformers asks (its default)
            "sliding_window": 8, "tie_word_embeddings": False,
            "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,  # inside the tiny vocabulary
        }
