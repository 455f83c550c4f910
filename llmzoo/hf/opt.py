"""OPT and Galactica (`model_type: opt`, Zhang et al., arXiv:2205.01068).

Learned positions whose table keeps 2 leading rows (offset 2, a fairseq padding heritage), ReLU
(Galactica: GELU) MLP, biases everywhere (`enable_bias`), tied head. Pre-LN, except OPT-350m which
is post-LN (`do_layer_norm_before: false`, no final norm) and embeds in 512 dims with project_in /
project_out around the 1024-wide blocks (`word_embed_proj_dim`). The published facebook/opt-*
checkpoints were saved from OPTModel (`decoder.` prefix); `save_pretrained` of OPTForCausalLM writes
`model.decoder.`: both load, export writes the latter.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import HF_DIMS, Adapter, activation_name, config_base, config_json_base, require
from .rules import IGNORE, Rule, spellings, weight_bias

HF_ACT = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}


OPT_TABLE = [  # hf tensor (after the prefix)                 llmzoo tensor
    Rule("embed_tokens.weight",                                 "embed.weight"),
    Rule("embed_positions.weight",                              "positions.weight"),
    Rule("project_in.weight",                                   "embed_in.weight"),
    Rule("project_out.weight",                                  "embed_out.weight"),
    *weight_bias("layers.{i}.self_attn_layer_norm",             "blocks.{i}.attn_norm"),
    *weight_bias("layers.{i}.self_attn.{q,k,v}_proj",           "blocks.{i}.attn.{q,k,v}"),
    *weight_bias("layers.{i}.self_attn.out_proj",               "blocks.{i}.attn.o"),
    *weight_bias("layers.{i}.final_layer_norm",                 "blocks.{i}.mlp_norm"),
    *weight_bias("layers.{i}.fc1",                              "blocks.{i}.mlp.up"),
    *weight_bias("layers.{i}.fc2",                              "blocks.{i}.mlp.down"),
    *weight_bias("final_layer_norm",                            "final_norm"),
]
OPT = spellings(OPT_TABLE, "model.decoder.", "decoder.")


@register_adapter
class OPTAdapter(Adapter):
    model_type = "opt"
    families = ("opt", "galactica")

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        d = int(require(hf, "hidden_size"))
        n_heads = int(require(hf, "num_attention_heads"))
        d_embed = int(hf.get("word_embed_proj_dim") or d)
        pre = bool(hf.get("do_layer_norm_before", True))
        bias = bool(hf.get("enable_bias", True))
        affine = bool(hf.get("layer_norm_elementwise_affine", True))  # false: no gain, no bias (OPT derivatives)
        norm = {"type": "layernorm", "eps": 1e-5, "bias": affine, "elementwise_affine": affine}  # nn.LayerNorm's eps
        max_pos = int(require(hf, "max_position_embeddings"))
        final = pre and not hf.get("_remove_final_layer_norm", False)
        return ModelConfig.model_validate({
            **config_base(hf, "opt"),
            "d_model": d,
            "n_layers": int(require(hf, "num_hidden_layers")),
            "max_seq_len": max_pos,
            "position": {"type": "learned", "max_positions": max_pos, "offset": 2},
            "embedding": {"d_embed": d_embed if d_embed != d else None},
            "block": {
                "placement": "pre" if pre else "post",
                "norm": norm,
                "attention": {"type": "mha", "n_heads": n_heads, "head_dim": d // n_heads, "qkv_bias": bias,
                              "o_bias": bias},
                "mlp": {"type": "mlp", "d_ff": int(require(hf, "ffn_dim")), "bias": bias,
                        "activation": activation_name(hf.get("activation_function", "relu"), "activation_function")},
            },
            "final_norm": norm if final else None,
        })

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        b, a = config.block, config.block.attention
        pre = b.placement == "pre"
        return {
            **config_json_base(config, "OPTForCausalLM", HF_DIMS),
            "word_embed_proj_dim": config.d_embed,
            "ffn_dim": b.mlp.d_ff,
            "max_position_embeddings": config.position.max_positions
            if config.position.type == "learned" else config.max_seq_len,
            "do_layer_norm_before": pre,
            "_remove_final_layer_norm": pre and config.final_norm is None,
            "enable_bias": a.qkv_bias,
            "layer_norm_elementwise_affine": getattr(b.norm, "elementwise_affine", True),
            "activation_function": HF_ACT.get(b.mlp.activation, b.mlp.activation),
        }

    def rules(self, config: ModelConfig) -> list[Rule]:
        return OPT + [Rule("lm_head.weight", IGNORE if config.head.tied else "head.weight")]

    def tiny_hf_config(self) -> dict[str, Any]:
        # OPT-350m's quirks: post-LN blocks, no final norm, 32-wide embedding projected to 48
        return {"model_type": "opt", "vocab_size": 96, "hidden_size": 48, "word_embed_proj_dim": 32,
                "num_hidden_layers": 3, "num_attention_heads": 4, "ffn_dim": 80, "max_position_embeddings": 64,
                "do_layer_norm_before": False, "enable_bias": True, "activation_function": "relu",
                "pad_token_id": 1, "tie_word_embeddings": True}
