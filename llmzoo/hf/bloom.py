"""BLOOM (`model_type: bloom`, BigScience, arXiv:2211.05100).

ALiBi instead of position embeddings (slopes for non-power-of-two head counts as in the paper),
LayerNorm right after the word embedding, pre-LN blocks, tanh-GELU MLP of 4·d_model, biases
everywhere, tied head. `query_key_value` is fused per head: rows are [q_h; k_h; v_h] for each head h
in turn. The published checkpoints were saved from BloomModel (no `transformer.` prefix); a fresh
`save_pretrained` of BloomForCausalLM writes it: both load, export writes the prefixed one.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import Adapter, config_base, config_json_base, require
from .rules import IGNORE, Rule, SplitInterleavedQKV, spellings, weight_bias


def bloom_rules(qkv: SplitInterleavedQKV) -> list[Rule]:
    """The table after the `transformer.` prefix."""
    return [  # hf tensor (after the prefix)                      llmzoo tensor                      transforms
        Rule("word_embeddings.weight",                           "embed.weight"),
        *weight_bias("word_embeddings_layernorm",                "embed_norm"),
        *weight_bias("h.{i}.input_layernorm",                    "blocks.{i}.attn_norm"),
        *weight_bias("h.{i}.self_attention.query_key_value",     "blocks.{i}.attn.{q,k,v}",         qkv),
        *weight_bias("h.{i}.self_attention.dense",               "blocks.{i}.attn.o"),
        *weight_bias("h.{i}.post_attention_layernorm",           "blocks.{i}.mlp_norm"),
        *weight_bias("h.{i}.mlp.dense_h_to_4h",                  "blocks.{i}.mlp.up"),
        *weight_bias("h.{i}.mlp.dense_4h_to_h",                  "blocks.{i}.mlp.down"),
        *weight_bias("ln_f",                                     "final_norm"),
    ]


@register_adapter
class BloomAdapter(Adapter):
    model_type = "bloom"
    families = ("bloom",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        if hf.get("apply_residual_connection_post_layernorm"):
            raise ValueError("apply_residual_connection_post_layernorm: true (residual taken after the norm) "
                             "is not supported; every published BLOOM has false")
        if int(hf.get("pretraining_tp", 1)) > 1 and hf.get("slow_but_exact"):
            # transformers' slow_but_exact path sums F.linear slices without the dense / dense_4h_to_h
            # biases; no published BLOOM sets it (bloom-176b: pretraining_tp 4, slow_but_exact false)
            raise ValueError("slow_but_exact: true with pretraining_tp > 1 is not supported (transformers "
                             "then drops the output biases; every published BLOOM has false)")
        d = int(hf.get("hidden_size") or require(hf, "n_embed"))
        n_heads = int(hf.get("n_head") or require(hf, "num_attention_heads"))
        norm = {"type": "layernorm", "eps": float(hf.get("layer_norm_epsilon", 1e-5)), "bias": True}
        return ModelConfig.model_validate({
            **config_base(hf, "bloom"),
            "d_model": d,
            "n_layers": int(hf.get("n_layer") or require(hf, "num_hidden_layers")),
            # ALiBi has no position table; BLOOM trained at 2048 tokens (config.json's seq_length)
            "max_seq_len": int(hf.get("seq_length") or 2048),
            "position": {"type": "alibi", "max_bias": 8.0},
            "embedding": {"norm": norm},
            "block": {
                "placement": "pre",
                "norm": norm,
                "attention": {"type": "mha", "n_heads": n_heads, "head_dim": d // n_heads, "qkv_bias": True,
                              "o_bias": True},
                "mlp": {"type": "mlp", "d_ff": 4 * d, "activation": "gelu_tanh", "bias": True},
            },
            "final_norm": norm,
        })

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        return {
            **config_json_base(config, "BloomForCausalLM", ("hidden_size", "n_layer", "n_head")),
            "layer_norm_epsilon": config.block.norm.eps,
            "seq_length": config.max_seq_len,
            "apply_residual_connection_post_layernorm": False,
        }

    def rules(self, config: ModelConfig) -> list[Rule]:
        a = config.block.attention
        qkv = SplitInterleavedQKV(a.n_heads, a.n_heads, a.head_dim)  # per head [q, k, v]
        head = [Rule("lm_head.weight", IGNORE if config.head.tied else "head.weight")]
        return spellings(bloom_rules(qkv), "transformer.", "") + head

    def tiny_hf_config(self) -> dict[str, Any]:
        # 6 heads: not a power of two, so the interleaved ALiBi slopes are exercised
        return {"model_type": "bloom", "vocab_size": 96, "hidden_size": 48, "n_layer": 3, "n_head": 6,
                "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}
