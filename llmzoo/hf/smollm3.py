"""SmolLM3 (`model_type: smollm3`, HuggingFaceTB SmolLM3 blog 2025): the LLaMA layout (GQA, tied
head) with NoPE layers: `no_rope_layers[i] == 0` (every 4th layer in the release,
no_rope_layer_interval 4) skips rotary; an optional sliding window applies to those layers only."""

from __future__ import annotations

import json
from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import NO_TOKEN_IDS, Adapter, layer_count, one_window
from .gemma2 import selector
from .llama import LLAMA, head_rules, llama_like_dict, llama_like_hf
from .rules import Rule


def grouped_overrides(patches: list[dict], n: int) -> list[dict]:
    """One override per distinct non-empty per-layer patch."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(patches):
        if p:
            groups.setdefault(json.dumps(p, sort_keys=True), []).append(i)
    return [{"layers": selector(ls, n), "block": json.loads(k)} for k, ls in groups.items()]


@register_adapter
class SmolLM3Adapter(Adapter):
    model_type = "smollm3"
    families = ("smollm3",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        n = layer_count(hf)
        interval = int(hf.get("no_rope_layer_interval", 4))
        rope = hf.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
        window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
        types = hf.get("layer_types") or [
            "sliding_attention" if window and not rope[i] else "full_attention" for i in range(n)
        ]
        bias = bool(hf.get("attention_bias", False))
        d = llama_like_dict(hf, family="smollm3", qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)),
                            tied_default=True)
        patches = [{**({} if rope[i] else {"position": {"type": "none"}}),
                    **({"attention": {"window": int(window)}} if types[i] == "sliding_attention" and window else {})}
                   for i in range(n)]
        d["overrides"] = grouped_overrides(patches, n)
        return ModelConfig.model_validate(d)

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        blocks = config.blocks
        if any(b.position is not None and b.position.type != "none" for b in blocks):
            raise ValueError("smollm3 layers either use the model's rope or none (no_rope_layers)")
        window = one_window(config, self.model_type)
        return {
            "architectures": ["SmolLM3ForCausalLM"], **llama_like_hf(config),
            "attention_bias": config.block.attention.qkv_bias, "mlp_bias": config.block.mlp.bias,
            "no_rope_layers": [int(b.position is None) for b in blocks],
            "use_sliding_window": window is not None, "sliding_window": window,
            "layer_types": ["sliding_attention" if b.attention.window else "full_attention" for b in blocks],
            **NO_TOKEN_IDS,
        }

    def rules(self, config: ModelConfig) -> list[Rule]:
        return LLAMA + head_rules(config)

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "smollm3", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 5000000.0,
            "no_rope_layer_interval": 2,  # layers 1 and 3 without rotary (the release: every 4th)
            "tie_word_embeddings": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,  # in the vocab
        }
