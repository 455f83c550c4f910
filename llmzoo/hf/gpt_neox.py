"""GPT-NeoX and Pythia (`model_type: gpt_neox`, Black et al., arXiv:2204.06745; arXiv:2304.01373).

Parallel attention and MLP with two LayerNorms (`use_parallel_residual`; sequential pre-LN when
false), rotary positions on the first `rotary_pct` (Pythia: 25 %) of each head in the 'halves'
pairing, exact GELU, biases everywhere, untied head. `query_key_value` is fused per head:
[q_h; k_h; v_h] for each head h. The published Pythia checkpoints name the head `embed_out` and
keep `attention.bias` / `masked_bias` / `rotary_emb.inv_freq` buffers. transformers 5 calls the
module `lm_head` but still saves `embed_out`: both names load, export writes `embed_out`.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import HF_ACTIVATION, HF_DIMS, Adapter, activation_name, config_base, config_json_base, require, rope_from_hf, rope_to_hf
from .rules import IGNORE, Rule, SplitInterleavedQKV, weight_bias


def neox_rules(qkv: SplitInterleavedQKV) -> list[Rule]:
    L, B = "gpt_neox.layers.{i}.", "blocks.{i}."
    return [  # hf tensor                                       llmzoo tensor                     transforms
        Rule("gpt_neox.embed_in.weight",                        "embed.weight"),
        *weight_bias(L + "input_layernorm",                     B + "attn_norm"),
        *weight_bias(L + "attention.query_key_value",           B + "attn.{q,k,v}",               qkv),
        *weight_bias(L + "attention.dense",                     B + "attn.o"),
        Rule(L + "attention.bias",                              IGNORE),  # buffers of older saves
        Rule(L + "attention.masked_bias",                       IGNORE),
        Rule(L + "attention.rotary_emb.inv_freq",               IGNORE),
        *weight_bias(L + "post_attention_layernorm",            B + "mlp_norm"),
        *weight_bias(L + "mlp.dense_h_to_4h",                   B + "mlp.up"),
        *weight_bias(L + "mlp.dense_4h_to_h",                   B + "mlp.down"),
        *weight_bias("gpt_neox.final_layer_norm",               "final_norm"),
    ]


@register_adapter
class GPTNeoXAdapter(Adapter):
    model_type = "gpt_neox"
    families = ("pythia", "gpt-neox")

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        d, n_heads = int(require(hf, "hidden_size")), int(require(hf, "num_attention_heads"))
        params = hf.get("rope_parameters") or {}
        fraction = float(params.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)))
        theta = float(params.get("rope_theta", hf.get("rotary_emb_base", hf.get("rope_theta", 10000.0))))
        position = {**rope_from_hf({**hf, "rope_theta": theta}), "fraction": fraction, "layout": "halves"}
        bias = bool(hf.get("attention_bias", True))
        norm = {"type": "layernorm", "eps": float(hf.get("layer_norm_eps", 1e-5)), "bias": True}
        return ModelConfig.model_validate({
            **config_base(hf, "gpt-neox", tied=False),
            "d_model": d,
            "n_layers": int(require(hf, "num_hidden_layers")),
            "max_seq_len": int(hf.get("max_position_embeddings", 2048)),
            "position": position,
            "block": {
                "placement": "pre",
                "parallel": "two_norms" if hf.get("use_parallel_residual", True) else "none",
                "norm": norm,
                "attention": {"type": "mha", "n_heads": n_heads, "head_dim": d // n_heads, "qkv_bias": bias,
                              "o_bias": bias},
                "mlp": {"type": "mlp", "d_ff": int(require(hf, "intermediate_size")), "bias": True,
                        "activation": activation_name(hf.get("hidden_act", "gelu"))},
            },
            "final_norm": norm,
        })

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        b, a, pos = config.block, config.block.attention, config.position
        rope = rope_to_hf(pos)  # {} for another position type
        return {
            **config_json_base(config, "GPTNeoXForCausalLM", HF_DIMS),
            "intermediate_size": b.mlp.d_ff,
            "hidden_act": HF_ACTIVATION[b.mlp.activation],
            "max_position_embeddings": config.max_seq_len,
            "rotary_pct": getattr(pos, "fraction", 1.0),
            "rotary_emb_base": rope.pop("rope_theta", 10000.0),
            **rope,
            "layer_norm_eps": b.norm.eps,
            "use_parallel_residual": b.parallel == "two_norms",
            "attention_bias": a.qkv_bias,
        }

    def rules(self, config: ModelConfig) -> list[Rule]:
        a = config.block.attention
        head = "head.weight" if not config.head.tied else IGNORE
        return neox_rules(SplitInterleavedQKV(a.n_heads, a.n_heads, a.head_dim)) + [
            Rule("embed_out.weight", head),  # Pythia's name, which transformers also saves
            Rule("lm_head.weight", head, variant=True),  # the name of transformers' module
        ]

    def tiny_hf_config(self) -> dict[str, Any]:
        # Pythia's quirks: 25 % rotary (head_dim 16 -> 4 dims), parallel residual, untied head
        return {"model_type": "gpt_neox", "vocab_size": 96, "hidden_size": 64, "num_hidden_layers": 3,
                "num_attention_heads": 4, "intermediate_size": 96, "hidden_act": "gelu",
                "max_position_embeddings": 64, "rotary_pct": 0.25, "rotary_emb_base": 10000,
                "layer_norm_eps": 1e-5, "use_parallel_residual": True, "tie_word_embeddings": False}
