"""Falcon (`model_type: falcon`; the early hub names `RefinedWebModel` / `RefinedWeb`).

Three block layouts share one table:
- Falcon-7B: parallel attention + MLP on one shared LayerNorm (`input_layernorm`), multi-query
  attention (`multi_query`), no biases;
- Falcon-40B / 180B ("new decoder architecture"): parallel with two LayerNorms (`ln_attn`,
  `ln_mlp`), grouped-query attention with `num_kv_heads` groups;
- Falcon-RW: sequential pre-LN blocks, MHA, biases, ALiBi (`alibi: true`), which Falcon adds
  before its 1/sqrt(head_dim) scaling and rounds to bfloat16.
`query_key_value` is fused per KV group as [q × (n_heads / n_kv_heads), k, v] (MQA: one group;
MHA: one group per head), exact GELU MLP of `ffn_hidden_size`, RoPE on the full head, tied head.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import HF_ACTIVATION, HF_DIMS, Adapter, activation_name, attention_kind, config_base, config_json_base, require, rope_from_hf, rope_to_hf
from .rules import IGNORE, Rule, SplitInterleavedQKV, weight_bias

# config.json keys of the RefinedWeb(Model) remote-code era → today's names
LEGACY_KEYS = {"n_head": "num_attention_heads", "n_head_kv": "num_kv_heads", "n_layer": "num_hidden_layers",
               "n_embed": "hidden_size"}


@register_adapter
class FalconAdapter(Adapter):
    model_type = "falcon"
    aliases = ("RefinedWebModel", "RefinedWeb")
    families = ("falcon",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        hf = {LEGACY_KEYS.get(k, k): v for k, v in hf.items()}
        if hf.get("apply_residual_connection_post_layernorm"):
            raise ValueError("apply_residual_connection_post_layernorm: true is not supported (transformers' "
                             "Falcon ignores it; every published Falcon has false)")
        if hf.get("model_type") == "RefinedWeb":  # the 40B remote code: always the new architecture
            hf.setdefault("new_decoder_architecture", True)
        d, n_heads = int(require(hf, "hidden_size")), int(require(hf, "num_attention_heads"))
        head_dim = d // n_heads
        new_arch = bool(hf.get("new_decoder_architecture", False))
        if new_arch:
            n_kv = int(hf.get("num_kv_heads") or n_heads)
        else:
            n_kv = 1 if hf.get("multi_query", True) else n_heads
        parallel = "none"
        if new_arch:
            n_ln = hf.get("num_ln_in_parallel_attn") or 2
            parallel = "two_norms" if n_ln == 2 else "shared_norm"
        elif hf.get("parallel_attn", True):
            parallel = "shared_norm"
        bias = bool(hf.get("bias", False))
        norm = {"type": "layernorm", "eps": float(hf.get("layer_norm_epsilon", 1e-5)), "bias": True}
        if hf.get("alibi", False):
            position = {"type": "alibi", "max_bias": 8.0, "scale": head_dim**-0.5, "table_dtype": "bfloat16"}
        else:
            position = rope_from_hf(hf)
        return ModelConfig.model_validate({
            **config_base(hf, "falcon"),
            "d_model": d,
            "n_layers": int(require(hf, "num_hidden_layers")),
            "max_seq_len": int(hf.get("max_position_embeddings", 2048)),
            "position": position,
            "block": {
                "placement": "pre",
                "parallel": parallel,
                "norm": norm,
                "attention": {"type": attention_kind(n_heads, n_kv), "n_heads": n_heads, "n_kv_heads": n_kv,
                              "head_dim": head_dim, "qkv_bias": bias, "o_bias": bias},
                "mlp": {"type": "mlp", "d_ff": int(hf.get("ffn_hidden_size") or 4 * d), "bias": bias,
                        "activation": activation_name(hf.get("activation", "gelu"), "activation")},
            },
            "final_norm": norm,
        })

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        b, a, pos = config.block, config.block.attention, config.position
        # the old layout holds MHA (per-head [q, k, v]) or MQA; anything else, or two norms, needs the new one
        new_arch = b.parallel == "two_norms" or a.type == "gqa"
        return {
            **config_json_base(config, "FalconForCausalLM", HF_DIMS),
            "num_kv_heads": a.n_kv_heads,
            "new_decoder_architecture": new_arch,
            "multi_query": a.type == "mqa",
            "parallel_attn": b.parallel != "none",
            "num_ln_in_parallel_attn": (2 if b.parallel == "two_norms" else 1) if new_arch else None,
            "bias": a.qkv_bias,
            "alibi": pos.type == "alibi",
            "ffn_hidden_size": b.mlp.d_ff,
            "activation": HF_ACTIVATION[b.mlp.activation],
            "layer_norm_epsilon": b.norm.eps,
            "max_position_embeddings": config.max_seq_len,
            **rope_to_hf(pos),  # {} for ALiBi
        }

    def rules(self, config: ModelConfig) -> list[Rule]:
        b, a = config.block, config.block.attention
        qkv = SplitInterleavedQKV(a.n_heads, a.n_kv_heads, a.head_dim)
        L, B = "transformer.h.{i}.", "blocks.{i}."
        if b.parallel == "shared_norm":
            norms = weight_bias(L + "input_layernorm", B + "attn_norm")
        elif b.parallel == "two_norms":
            norms = weight_bias(L + "ln_attn", B + "attn_norm") + weight_bias(L + "ln_mlp", B + "mlp_norm")
        else:
            norms = weight_bias(L + "input_layernorm", B + "attn_norm") + weight_bias(
                L + "post_attention_layernorm", B + "mlp_norm")
        return [  # hf tensor                                   llmzoo tensor                   transforms
            Rule("transformer.word_embeddings.weight",          "embed.weight"),
            *norms,
            *weight_bias(L + "self_attention.query_key_value",  B + "attn.{q,k,v}",             qkv),
            *weight_bias(L + "self_attention.dense",            B + "attn.o"),
            *weight_bias(L + "mlp.dense_h_to_4h",               B + "mlp.up"),
            *weight_bias(L + "mlp.dense_4h_to_h",               B + "mlp.down"),
            *weight_bias("transformer.ln_f",                    "final_norm"),
            Rule("lm_head.weight",                              IGNORE if config.head.tied else "head.weight"),
        ]

    # transformers' eager Falcon adds ALiBi twice (once in the scores, once through the mask it
    # folds it into); its default and only consistent path is sdpa, which is the reference here
    reference_attention = "sdpa"

    def tiny_hf_config(self) -> dict[str, Any]:
        # Falcon-40B/180B's layout: new decoder architecture, GQA (8 heads in 2 groups), two norms
        return {"model_type": "falcon", "vocab_size": 96, "hidden_size": 64, "num_hidden_layers": 3,
                "num_attention_heads": 8, "num_kv_heads": 2, "new_decoder_architecture": True,
                "parallel_attn": True, "bias": False, "alibi": False, "max_position_embeddings": 64,
                "layer_norm_epsilon": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True}

