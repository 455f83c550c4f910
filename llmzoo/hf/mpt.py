"""MPT (`model_type: mpt`, MosaicML).

ALiBi (no position embeddings), pre-LN LayerNorm without bias, no bias in any linear (`no_bias`),
exact-GELU MLP of 4·d_model, tied head; `attn_config.clip_qkv` clamps the fused q, k, v
activations and `attn_config.softmax_scale` replaces 1/sqrt(head_dim) when set. `Wqkv` stacks
[q; k; v] along its output dim (not per head). transformers implements the published layout only:
ALiBi on with alibi_bias_max 8, no biases, `expansion_ratio` 4, no qk LayerNorm, no logit scale;
anything else is an error that names the key.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import Adapter, config_base, config_json_base, require
from .rules import IGNORE, Rule, Split

MPT = [  # hf tensor                                          llmzoo tensor                        transforms
    Rule("transformer.wte.weight",                            "embed.weight"),
    Rule("transformer.blocks.{i}.norm_1.weight",              "blocks.{i}.attn_norm.weight"),
    Rule("transformer.blocks.{i}.attn.Wqkv.weight",           "blocks.{i}.attn.{q,k,v}.weight",    Split(dim=0, parts=3)),
    Rule("transformer.blocks.{i}.attn.out_proj.weight",       "blocks.{i}.attn.o.weight"),
    Rule("transformer.blocks.{i}.norm_2.weight",              "blocks.{i}.mlp_norm.weight"),
    Rule("transformer.blocks.{i}.ffn.up_proj.weight",         "blocks.{i}.mlp.up.weight"),
    Rule("transformer.blocks.{i}.ffn.down_proj.weight",       "blocks.{i}.mlp.down.weight"),
    Rule("transformer.norm_f.weight",                         "final_norm.weight"),
]

# attn_config values transformers' MptAttention cannot run, with the value it needs
UNSUPPORTED_ATTN = {"qk_ln": False, "prefix_lm": False, "attn_uses_sequence_id": False, "alibi": True}


@register_adapter
class MptAdapter(Adapter):
    model_type = "mpt"
    families = ("mpt",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        attn = dict(hf.get("attn_config") or {})
        for key, need in UNSUPPORTED_ATTN.items():
            if key in attn and bool(attn[key]) != need:
                raise ValueError(f"attn_config.{key}: {attn[key]!r} is not supported (transformers' MPT needs {need})")
        if attn.get("alibi_bias_max", 8) != 8:  # MptModel builds its ALiBi table with the default 8
            raise ValueError(f"attn_config.alibi_bias_max: {attn['alibi_bias_max']!r} is not supported "
                             "(transformers' MPT always uses 8)")
        if attn.get("attn_type", "multihead_attention") != "multihead_attention":
            raise ValueError(f"attn_config.attn_type: {attn['attn_type']!r} is not supported (multihead_attention)")
        for key, need in (("no_bias", True), ("expansion_ratio", 4), ("logit_scale", None)):
            if key in hf and hf[key] != need:
                raise ValueError(f"{key}: {hf[key]!r} is not supported (transformers' MPT needs {need!r})")
        d, n_heads = int(require(hf, "d_model")), int(require(hf, "n_heads"))
        norm = {"type": "layernorm", "eps": float(hf.get("layer_norm_epsilon", 1e-5)), "bias": False}
        return ModelConfig.model_validate({
            **config_base(hf, "mpt"),
            "d_model": d,
            "n_layers": int(require(hf, "n_layers")),
            "max_seq_len": int(require(hf, "max_seq_len")),
            "position": {"type": "alibi", "max_bias": 8.0},
            "block": {
                "placement": "pre",
                "norm": norm,
                "attention": {"type": "mha", "n_heads": n_heads, "head_dim": d // n_heads, "qkv_bias": False,
                              "o_bias": False, "clip_qkv": attn.get("clip_qkv"),
                              "softmax_scale": attn.get("softmax_scale")},
                "mlp": {"type": "mlp", "d_ff": 4 * d, "activation": "gelu", "bias": False},
            },
            "final_norm": norm,
        })

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        a = config.block.attention
        return {
            **config_json_base(config, "MptForCausalLM", ("d_model", "n_layers", "n_heads")),
            "expansion_ratio": 4,
            "max_seq_len": config.max_seq_len,
            "no_bias": True,
            "layer_norm_epsilon": config.block.norm.eps,
            "attn_config": {"alibi": True, "alibi_bias_max": int(getattr(config.position, "max_bias", 8)),
                            "clip_qkv": a.clip_qkv, "softmax_scale": a.softmax_scale, "qk_ln": False,
                            "attn_type": "multihead_attention", "prefix_lm": False},
        }

    def rules(self, config: ModelConfig) -> list[Rule]:
        return MPT + [Rule("lm_head.weight", IGNORE if config.head.tied else "head.weight")]

    def tiny_hf_config(self) -> dict[str, Any]:
        # 6 heads (non-power-of-two ALiBi slopes) and clip_qkv set low enough to clamp loud weights
        return {"model_type": "mpt", "vocab_size": 96, "d_model": 48, "n_heads": 6, "n_layers": 3,
                "expansion_ratio": 4, "max_seq_len": 64, "no_bias": True, "layer_norm_epsilon": 1e-5,
                "attn_config": {"alibi": True, "alibi_bias_max": 8, "clip_qkv": 1.5, "softmax_scale": None},
                "tie_word_embeddings": True}
