"""GPT-2 (`model_type: gpt2`): the dense GPT-3-shaped decoder with a public checkpoint.

Pre-LN LayerNorm blocks, learned positions, tanh-GELU MLP, biases everywhere, tied head. Conv1D
layers store weights as (in, out): every matrix is transposed, and `c_attn` holds [q; k; v] along
its output dim. The original OpenAI checkpoint (`gpt2`, `gpt2-medium`, …) names tensors without the
`transformer.` prefix a fresh `save_pretrained` writes, and keeps the causal-mask buffers
`attn.bias` / `attn.masked_bias`: both spellings load, export writes the prefixed one.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import NO_TOKEN_IDS, Adapter, activation_name, config_base, config_json_base, require
from .rules import IGNORE, Rule, Split, Transpose, spellings, weight_bias

HF_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


T, QKV = Transpose(), Split(dim=0, parts=3)
GPT2_TABLE = [  # hf tensor (after the prefix)          llmzoo tensor                        transforms
    Rule("wte.weight",                                  "embed.weight"),
    Rule("wpe.weight",                                  "positions.weight"),
    *weight_bias("h.{i}.ln_1",                          "blocks.{i}.attn_norm"),
    Rule("h.{i}.attn.c_attn.weight",                    "blocks.{i}.attn.{q,k,v}.weight",    T, QKV),
    Rule("h.{i}.attn.c_attn.bias",                      "blocks.{i}.attn.{q,k,v}.bias",      QKV),
    Rule("h.{i}.attn.c_proj.weight",                    "blocks.{i}.attn.o.weight",          T),
    Rule("h.{i}.attn.c_proj.bias",                      "blocks.{i}.attn.o.bias"),
    *weight_bias("h.{i}.ln_2",                          "blocks.{i}.mlp_norm"),
    Rule("h.{i}.mlp.c_fc.weight",                       "blocks.{i}.mlp.up.weight",          T),
    Rule("h.{i}.mlp.c_fc.bias",                         "blocks.{i}.mlp.up.bias"),
    Rule("h.{i}.mlp.c_proj.weight",                     "blocks.{i}.mlp.down.weight",        T),
    Rule("h.{i}.mlp.c_proj.bias",                       "blocks.{i}.mlp.down.bias"),
    Rule("h.{i}.attn.bias",                             IGNORE),  # causal-mask buffers of older saves
    Rule("h.{i}.attn.masked_bias",                      IGNORE),
    *weight_bias("ln_f",                                "final_norm"),
]
# as transformers saves it ('transformer.'), and as the original release names it (no prefix)
GPT2 = spellings(GPT2_TABLE, "transformer.", "")


@register_adapter
class GPT2Adapter(Adapter):
    model_type = "gpt2"
    families = ("gpt-2",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        if hf.get("add_cross_attention"):
            raise ValueError("add_cross_attention: true (an encoder-decoder GPT-2) is not a causal LM")
        d, n_heads = int(require(hf, "n_embd")), int(require(hf, "n_head"))
        n_layers = int(require(hf, "n_layer"))
        head_dim = d // n_heads
        scale = head_dim**-0.5 if hf.get("scale_attn_weights", True) else 1.0
        norm = {"type": "layernorm", "eps": float(hf.get("layer_norm_epsilon", 1e-5)), "bias": True}
        overrides = []
        if hf.get("scale_attn_by_inverse_layer_idx"):  # Mistral-GPT-2 (Stanford CRFM): scale / (layer + 1)
            overrides = [{"layers": [i], "block": {"attention": {"softmax_scale": scale / (i + 1)}}}
                         for i in range(1, n_layers)]
        return ModelConfig.model_validate({
            **config_base(hf, "gpt-2", name="gpt2"),
            "d_model": d,
            "n_layers": n_layers,
            "max_seq_len": int(require(hf, "n_positions")),
            "position": {"type": "learned", "max_positions": int(hf["n_positions"]), "offset": 0},
            "block": {
                "placement": "pre",
                "norm": norm,
                "attention": {"type": "mha", "n_heads": n_heads, "head_dim": head_dim, "qkv_bias": True,
                              "o_bias": True, "softmax_scale": None if scale == head_dim**-0.5 else scale},
                "mlp": {"type": "mlp", "d_ff": int(hf.get("n_inner") or 4 * d), "bias": True,
                        "activation": activation_name(hf.get("activation_function", "gelu_new"),
                                                      "activation_function")},
            },
            "overrides": overrides,
            "final_norm": norm,
        })

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        b, a = config.block, config.block.attention
        scaled = a.softmax_scale is None
        inverse = len(config.overrides) > 0 and all(
            set(o.block) == {"attention"} and set(o.block["attention"]) == {"softmax_scale"} for o in config.overrides
        )
        return {
            **config_json_base(config, "GPT2LMHeadModel", ("n_embd", "n_layer", "n_head")),
            **NO_TOKEN_IDS,  # the class default 50256 lies outside a scaled-down vocabulary
            "n_positions": config.position.max_positions if config.position.type == "learned" else config.max_seq_len,
            "n_inner": b.mlp.d_ff,
            "activation_function": HF_ACT.get(b.mlp.activation, b.mlp.activation),
            "layer_norm_epsilon": b.norm.eps,
            "scale_attn_weights": scaled,
            "scale_attn_by_inverse_layer_idx": inverse,
        }

    def rules(self, config: ModelConfig) -> list[Rule]:
        head = [Rule("lm_head.weight", IGNORE if config.head.tied else "head.weight")]
        return GPT2 + head

    def tiny_hf_config(self) -> dict[str, Any]:
        return {"model_type": "gpt2", "vocab_size": 96, "n_embd": 48, "n_layer": 3, "n_head": 4,
                "n_positions": 64, "n_inner": 80, "activation_function": "gelu_new",
                "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0}
