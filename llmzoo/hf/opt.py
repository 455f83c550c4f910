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
from .adapter import Adapter, activation_name, config_base, config_json_base, require
from .rules import IGNORE, Rule

HF_ACT = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}


def opt_rules(p: str, variant: bool) -> list[Rule]:
    def R(hf: str, ours: str | None) -> Rule:
        return Rule(p + hf, ours, variant=variant)

    return [  # hf tensor (after the prefix)                    llmzoo tensor
        R("embed_tokens.weight",                                "embed.weight"),
        R("embed_positions.weight",                             "positions.weight"),
        R("project_in.weight",                                  "embed_in.weight"),
        R("project_out.weight",                                 "embed_out.weight"),
        R("layers.{i}.self_attn_layer_norm.weight",             "blocks.{i}.attn_norm.weight"),
        R("layers.{i}.self_attn_layer_norm.bias",               "blocks.{i}.attn_norm.bias"),
        R("layers.{i}.self_attn.{q,k,v}_proj.weight",           "blocks.{i}.attn.{q,k,v}.weight"),
        R("layers.{i}.self_attn.{q,k,v}_proj.bias",             "blocks.{i}.attn.{q,k,v}.bias"),
        R("layers.{i}.self_attn.out_proj.weight",               "blocks.{i}.attn.o.weight"),
        R("layers.{i}.self_attn.out_proj.bias",                 "blocks.{i}.attn.o.bias"),
        R("layers.{i}.final_layer_norm.weight",                 "blocks.{i}.mlp_norm.weight"),
        R("layers.{i}.final_layer_norm.bias",                   "blocks.{i}.mlp_norm.bias"),
        R("layers.{i}.fc1.weight",                              "blocks.{i}.mlp.up.weight"),
        R("layers.{i}.fc1.bias",                                "blocks.{i}.mlp.up.bias"),
        R("layers.{i}.fc2.weight",                              "blocks.{i}.mlp.down.weight"),
        R("layers.{i}.fc2.bias",                                "blocks.{i}.mlp.down.bias"),
        R("final_layer_norm.weight",                            "final_norm.weight"),
        R("final_layer_norm.bias",                              "final_norm.bias"),
    ]


OPT = opt_rules("model.decoder.", variant=False) + opt_rules("decoder.", variant=True)


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
            **config_json_base(config, "OPTForCausalLM"),
            "hidden_size": config.d_model,
            "word_embed_proj_dim": config.d_embed,
            "num_hidden_layers": config.n_layers,
            "num_attention_heads": a.n_heads,
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
