"""Qwen2 (`model_type: qwen2`, Qwen-1.5): the LLaMA table with a bias on q, k, v (not o); an
optional sliding window on the layers from `max_window_layers` on (off in Qwen-1.5:
`use_sliding_window: false`)."""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import Adapter, layer_count, one_window
from .llama import LLAMA, head_rules, llama_like_config, llama_like_hf
from .rules import Rule


def qwen2_windows(hf: dict[str, Any]) -> list[int | None] | None:
    """Per-layer windows: `layer_types` (transformers 5) or use_sliding_window + max_window_layers."""
    window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
    if not window:
        return None
    n = layer_count(hf)
    types = hf.get("layer_types")
    if types:
        return [int(window) if t == "sliding_attention" else None for t in types]
    first = int(hf.get("max_window_layers", 0))
    return [int(window) if i >= first else None for i in range(n)]


@register_adapter
class Qwen2Adapter(Adapter):
    model_type = "qwen2"
    families = ("qwen-1.5", "qwen-2.5")

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        return llama_like_config(hf, family="qwen2", qkv_bias=True, o_bias=False, windows=qwen2_windows(hf))

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        windows = [b.attention.window for b in config.blocks]
        window = one_window(config, self.model_type)
        first = next((i for i, w in enumerate(windows) if w is not None), len(windows))
        if any(w is None for w in windows[first:]):
            raise ValueError("qwen2 windows the layers from max_window_layers on, not an arbitrary set")
        out = {"architectures": ["Qwen2ForCausalLM"], **llama_like_hf(config),
               "use_sliding_window": window is not None, "sliding_window": window, "max_window_layers": first}
        if window is not None:
            out["layer_types"] = ["sliding_attention" if w else "full_attention" for w in windows]
        return out

    def rules(self, config: ModelConfig) -> list[Rule]:
        return LLAMA + head_rules(config)

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "qwen2", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "use_sliding_window": False, "sliding_window": 8, "max_window_layers": 2,  # Qwen-1.5: off
            "tie_word_embeddings": False,
        }
