"""GPT-J (`model_type: gptj`, Wang & Komatsuzaki 2021): the parallel block PaLM later adopted.

Attention and MLP read one shared LayerNorm and add to the residual together; rotary positions on
the first `rotary_dim` dims of each head in the interleaved pairing (2i, 2i+1); q/k/v/out without
bias, MLP with bias, tanh-GELU; an untied head with a bias. The published checkpoint keeps the
causal-mask buffers `attn.bias` / `attn.masked_bias`.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import NO_TOKEN_IDS, Adapter, activation_name, config_base, config_json_base, require
from .gpt2 import HF_ACT
from .rules import IGNORE, Rule, weight_bias

GPTJ = [  # hf tensor                                       llmzoo tensor
    Rule("transformer.wte.weight",                          "embed.weight"),
    *weight_bias("transformer.h.{i}.ln_1",                  "blocks.{i}.attn_norm"),
    Rule("transformer.h.{i}.attn.{q,k,v}_proj.weight",      "blocks.{i}.attn.{q,k,v}.weight"),
    Rule("transformer.h.{i}.attn.out_proj.weight",          "blocks.{i}.attn.o.weight"),
    Rule("transformer.h.{i}.attn.bias",                     IGNORE),  # causal-mask buffers of the release
    Rule("transformer.h.{i}.attn.masked_bias",              IGNORE),
    *weight_bias("transformer.h.{i}.mlp.fc_in",             "blocks.{i}.mlp.up"),
    *weight_bias("transformer.h.{i}.mlp.fc_out",            "blocks.{i}.mlp.down"),
    *weight_bias("transformer.ln_f",                        "final_norm"),
]


@register_adapter
class GPTJAdapter(Adapter):
    model_type = "gptj"
    families = ("gpt-j",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        d, n_heads = int(require(hf, "n_embd")), int(require(hf, "n_head"))
        head_dim = d // n_heads
        rotary = int(hf.get("rotary_dim") or head_dim)
        norm = {"type": "layernorm", "eps": float(hf.get("layer_norm_epsilon", 1e-5)), "bias": True}
        return ModelConfig.model_validate({
            **config_base(hf, "gpt-j"),
            "d_model": d,
            "n_layers": int(require(hf, "n_layer")),
            "max_seq_len": int(hf.get("n_positions", 2048)),
            "position": {"type": "rope", "theta": 10000.0, "fraction": rotary / head_dim, "layout": "interleaved"},
            "block": {
                "placement": "pre",
                "parallel": "shared_norm",
                "norm": norm,
                "attention": {"type": "mha", "n_heads": n_heads, "head_dim": head_dim, "qkv_bias": False,
                              "o_bias": False},
                "mlp": {"type": "mlp", "d_ff": int(hf.get("n_inner") or 4 * d), "bias": True,
                        "activation": activation_name(hf.get("activation_function", "gelu_new"),
                                                      "activation_function")},
            },
            "final_norm": norm,
            "head": {"tied": bool(hf.get("tie_word_embeddings", False)), "bias": True},
        })

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        b = config.block
        return {
            **config_json_base(config, "GPTJForCausalLM", ("n_embd", "n_layer", "n_head")),
            **NO_TOKEN_IDS,  # the class default 50256 lies outside a scaled-down vocabulary
            "n_positions": config.max_seq_len,
            "rotary_dim": config.rotary_dim,
            "n_inner": b.mlp.d_ff,
            "activation_function": HF_ACT.get(b.mlp.activation, b.mlp.activation),
            "layer_norm_epsilon": b.norm.eps,
        }

    def rules(self, config: ModelConfig) -> list[Rule]:
        tied = config.head.tied
        return GPTJ + [
            Rule("lm_head.weight", IGNORE if tied else "head.weight"),
            Rule("lm_head.bias", "head_bias" if tied else "head.bias"),
        ]

    def tiny_hf_config(self) -> dict[str, Any]:
        # rotary on 4 of 16 dims per head (GPT-J-6B: 64 of 256), untied head with bias
        return {"model_type": "gptj", "vocab_size": 96, "n_embd": 64, "n_layer": 3, "n_head": 4,
                "rotary_dim": 4, "n_positions": 64, "n_inner": 96, "activation_function": "gelu_new",
                "layer_norm_epsilon": 1e-5, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0}
