"""GPT-Neo (`model_type: gpt_neo`): EleutherAI's open replication of GPT-3's alternating attention.

GPT-2's block with separate q/k/v projections (no bias; the output projection has one), learned
positions, and `attention_types` alternating global and local layers; a local layer sees the last
`window_size` tokens, itself included. GPT-Neo never scales its attention scores by 1/sqrt(head_dim)
(softmax_scale 1.0). Published checkpoints keep the causal-mask buffers `attn.attention.bias` /
`masked_bias`.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import NO_TOKEN_IDS, Adapter, activation_name, config_base, config_json_base, require
from .gpt2 import HF_ACT
from .rules import IGNORE, Rule, weight_bias

GPT_NEO = [  # hf tensor                                         llmzoo tensor
    Rule("transformer.wte.weight",                               "embed.weight"),
    Rule("transformer.wpe.weight",                               "positions.weight"),
    *weight_bias("transformer.h.{i}.ln_1",                       "blocks.{i}.attn_norm"),
    Rule("transformer.h.{i}.attn.attention.q_proj.weight",       "blocks.{i}.attn.q.weight"),
    Rule("transformer.h.{i}.attn.attention.k_proj.weight",       "blocks.{i}.attn.k.weight"),
    Rule("transformer.h.{i}.attn.attention.v_proj.weight",       "blocks.{i}.attn.v.weight"),
    *weight_bias("transformer.h.{i}.attn.attention.out_proj",    "blocks.{i}.attn.o"),
    Rule("transformer.h.{i}.attn.attention.bias",                IGNORE),  # causal / local mask buffers
    Rule("transformer.h.{i}.attn.attention.masked_bias",         IGNORE),
    *weight_bias("transformer.h.{i}.ln_2",                       "blocks.{i}.mlp_norm"),
    *weight_bias("transformer.h.{i}.mlp.c_fc",                   "blocks.{i}.mlp.up"),
    *weight_bias("transformer.h.{i}.mlp.c_proj",                 "blocks.{i}.mlp.down"),
    *weight_bias("transformer.ln_f",                             "final_norm"),
]


def layer_kinds(hf: dict[str, Any], n_layers: int) -> list[str]:
    """Expand `attention_types` ([[["global", "local"], 12]]) to one kind per layer."""
    kinds: list[str] = []
    for pattern, repeat in hf.get("attention_types") or [[["global", "local"], n_layers // 2]]:
        if len(kinds) + len(list(pattern)) * int(repeat) > n_layers:  # never expand past the layer count
            kinds = kinds + [""] * (n_layers + 1)
            break
        kinds.extend(list(pattern) * int(repeat))
    bad = sorted(set(kinds) - {"global", "local"})
    if bad or len(kinds) != n_layers:
        raise ValueError(
            f"attention_types {hf.get('attention_types')} gives {len(kinds)} layers of kinds {sorted(set(kinds))}; "
            f"expected {n_layers} layers of 'global' / 'local'"
        )
    return kinds


def layer_selection(layers: list[int], n_layers: int) -> str | list[int]:
    """A slice string when the layers form one ('1::2'), else the list."""
    if len(layers) >= 2:
        start, step = layers[0], layers[1] - layers[0]
        if layers == list(range(start, n_layers, step)):
            return f"{start}::{step}"
    if len(layers) == 1 and layers[0] == n_layers - 1:
        return f"{layers[0]}:"
    return layers


@register_adapter
class GPTNeoAdapter(Adapter):
    model_type = "gpt_neo"
    families = ("gpt-neo",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        d, n_heads = int(require(hf, "hidden_size")), int(require(hf, "num_heads"))
        n_layers = int(require(hf, "num_layers"))
        kinds = layer_kinds(hf, n_layers)
        local = [i for i, k in enumerate(kinds) if k == "local"]
        window = int(hf.get("window_size", 256))
        norm = {"type": "layernorm", "eps": float(hf.get("layer_norm_epsilon", 1e-5)), "bias": True}
        max_pos = int(require(hf, "max_position_embeddings"))
        return ModelConfig.model_validate({
            **config_base(hf, "gpt-neo"),
            "d_model": d,
            "n_layers": n_layers,
            "max_seq_len": max_pos,
            "position": {"type": "learned", "max_positions": max_pos, "offset": 0},
            "block": {
                "placement": "pre",
                "norm": norm,
                # GPT-Neo computes q·kᵀ unscaled (mesh-tensorflow heritage): softmax_scale 1
                "attention": {"type": "mha", "n_heads": n_heads, "head_dim": d // n_heads, "qkv_bias": False,
                              "o_bias": True, "softmax_scale": 1.0, "window": None},
                "mlp": {"type": "mlp", "d_ff": int(hf.get("intermediate_size") or 4 * d), "bias": True,
                        "activation": activation_name(hf.get("activation_function", "gelu_new"),
                                                      "activation_function")},
            },
            "overrides": [{"layers": layer_selection(local, n_layers), "block": {"attention": {"window": window}}}]
            if local else [],
            "final_norm": norm,
        })

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        b = config.block
        windows = [blk.attention.window for blk in config.blocks]
        local = sorted({w for w in windows if w is not None})
        if len(local) > 1:
            raise ValueError(f"gpt_neo has one window_size; layers use windows {local}")
        kinds = ["global" if w is None else "local" for w in windows]
        period = next(p for p in range(1, len(kinds) + 1) if len(kinds) % p == 0
                      and kinds == kinds[:p] * (len(kinds) // p))
        return {
            **config_json_base(config, "GPTNeoForCausalLM", ("hidden_size", "num_layers", "num_heads")),
            **NO_TOKEN_IDS,  # the class default 50256 lies outside a scaled-down vocabulary
            "intermediate_size": b.mlp.d_ff,
            "max_position_embeddings": config.position.max_positions
            if config.position.type == "learned" else config.max_seq_len,
            "attention_types": [[kinds[:period], len(kinds) // period]],
            "window_size": local[0] if local else 256,
            "activation_function": HF_ACT.get(b.mlp.activation, b.mlp.activation),
            "layer_norm_epsilon": b.norm.eps,
        }

    def rules(self, config: ModelConfig) -> list[Rule]:
        return GPT_NEO + [Rule("lm_head.weight", IGNORE if config.head.tied else "head.weight")]

    def tiny_hf_config(self) -> dict[str, Any]:
        # window 5 < the 20-token parity sequences; layers global, local, global, local
        return {"model_type": "gpt_neo", "vocab_size": 96, "hidden_size": 48, "num_layers": 4, "num_heads": 4,
                "intermediate_size": 80, "max_position_embeddings": 64, "window_size": 5,
                "attention_types": [[["global", "local"], 2]], "activation_function": "gelu_new",
                "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0}
