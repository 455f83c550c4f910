"""T5 (`model_type: t5`): T5 v1.0 (ReLU, tied head rescaled by d_model^-0.5), T5 v1.1 / Flan-T5
(gated-GELU, untied head, no rescale), as an `EncoderDecoderLM`.

Layout: `shared` embedding; per stack `block.{i}.layer.{j}` with j = 0 self-attention, then (decoder
only) 1 cross-attention, then the feed-forward last; the relative position bias lives in block 0's
self-attention of each stack and is shared by all its layers.

The head: hub configs say `tie_word_embeddings: false` for v1.1 (untied, no rescale). transformers 5
always writes `tie_word_embeddings: true` and keeps the rescale in `scale_decoder_outputs`; a
checkpoint it saved from an untied model stores a distinct `lm_head.weight` that a tied config
ignores (as every tied adapter here ignores a stored head copy): pass `config=` with `head.tied: false`.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import Adapter, activation_name, clean_name, require
from .rules import IGNORE, Rule


def attention_rules(hf: str, ours: str) -> list[Rule]:
    return [Rule(f"{hf}.{p}.weight", f"{ours}.{p}.weight") for p in ("q", "k", "v", "o")]


T5_SHARED = [  # hf tensor                                                  llmzoo tensor
    Rule("shared.weight",                                                   "embed.weight"),
    Rule("encoder.embed_tokens.weight",                                     IGNORE),  # copies of shared.weight
    Rule("decoder.embed_tokens.weight",                                     IGNORE),
    Rule("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "encoder.positions.weight"),
    *attention_rules("encoder.block.{i}.layer.0.SelfAttention",             "encoder.blocks.{i}.attn"),
    Rule("encoder.block.{i}.layer.0.layer_norm.weight",                     "encoder.blocks.{i}.attn_norm.weight"),
    Rule("encoder.block.{i}.layer.1.layer_norm.weight",                     "encoder.blocks.{i}.mlp_norm.weight"),
    Rule("encoder.final_layer_norm.weight",                                 "encoder.final_norm.weight"),
    Rule("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "positions.weight"),
    *attention_rules("decoder.block.{i}.layer.0.SelfAttention",             "blocks.{i}.attn"),
    Rule("decoder.block.{i}.layer.0.layer_norm.weight",                     "blocks.{i}.attn_norm.weight"),
    *attention_rules("decoder.block.{i}.layer.1.EncDecAttention",           "blocks.{i}.cross_attn"),
    Rule("decoder.block.{i}.layer.1.layer_norm.weight",                     "blocks.{i}.cross_attn_norm.weight"),
    # older saves carry an unused cross-attention bias table (transformers ignores it on load)
    Rule("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight", IGNORE),
    Rule("decoder.block.{i}.layer.2.layer_norm.weight",                     "blocks.{i}.mlp_norm.weight"),
    Rule("decoder.final_layer_norm.weight",                                 "final_norm.weight"),
]


def ffn_rules(gated: bool) -> list[Rule]:
    """T5DenseActDense (wi, wo) or T5DenseGatedActDense (wi_0 gate, wi_1 linear, wo)."""
    out = []
    for stack, ours, j in (("encoder", "encoder.blocks", 1), ("decoder", "blocks", 2)):
        p = f"{stack}.block.{{i}}.layer.{j}.DenseReluDense"
        if gated:
            out += [Rule(f"{p}.wi_0.weight", f"{ours}.{{i}}.mlp.gate.weight"),
                    Rule(f"{p}.wi_1.weight", f"{ours}.{{i}}.mlp.up.weight")]
        else:
            out.append(Rule(f"{p}.wi.weight", f"{ours}.{{i}}.mlp.up.weight"))
        out.append(Rule(f"{p}.wo.weight", f"{ours}.{{i}}.mlp.down.weight"))
    return out


# feed_forward_proj ↔ (mlp type, activation); "gated-gelu" means tanh-GELU (transformers' gelu_new)
FFN_PROJ = {("mlp", "relu"): "relu", ("mlp", "gelu"): "gelu", ("mlp", "gelu_tanh"): "gelu_new",
            ("mlp", "silu"): "silu", ("glu", "gelu_tanh"): "gated-gelu", ("glu", "silu"): "gated-silu",
            ("glu", "relu"): "gated-relu"}


@register_adapter
class T5Adapter(Adapter):
    model_type = "t5"
    families = ("t5",)
    encoder_decoder = True  # forward(input_ids, decoder_input_ids, ...); reference is a Seq2SeqLM

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        proj = str(hf.get("feed_forward_proj", "relu"))
        parts = proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"feed_forward_proj {proj!r} is not 'ACT' or 'gated-ACT'")
        gated = len(parts) == 2
        act = "gelu_new" if proj == "gated-gelu" else parts[-1]  # transformers' backward-compatible reading
        mlp = {"type": "glu" if gated else "mlp", "activation": activation_name(act, "feed_forward_proj"),
               "d_ff": int(require(hf, "d_ff")), "bias": False}
        n_heads, head_dim = int(require(hf, "num_heads")), int(require(hf, "d_kv"))
        attn = {"type": "mha", "n_heads": n_heads, "head_dim": head_dim, "qkv_bias": False, "o_bias": False,
                "softmax_scale": 1.0}
        norm = {"type": "rmsnorm", "eps": float(hf.get("layer_norm_epsilon", 1e-6)), "unit_offset": False,
                "round_before_weight": True}
        rel = {"type": "relative", "num_buckets": int(hf.get("relative_attention_num_buckets", 32)),
               "max_distance": int(hf.get("relative_attention_max_distance", 128))}
        n_enc = int(require(hf, "num_layers"))
        tied = hf.get("tie_word_embeddings", True) is not False
        scale = bool(hf.get("scale_decoder_outputs", tied))
        return ModelConfig.model_validate({
            "name": clean_name(hf, "t5"),
            "family": "t5",
            "vocab_size": int(require(hf, "vocab_size")),
            "d_model": int(require(hf, "d_model")),
            "n_layers": int(hf.get("num_decoder_layers") or n_enc),
            "max_seq_len": int(hf.get("n_positions", 512)),
            "position": {**rel, "bidirectional": False},
            "embedding": {"scale": "none"},
            "block": {"placement": "pre", "parallel": "none", "norm": norm, "attention": attn,
                      "cross_attention": attn, "mlp": mlp},
            "final_norm": norm,
            "head": {"tied": tied, "bias": False, "scale": "inv_sqrt_d_model" if scale else "none"},
            "encoder": {"n_layers": n_enc, "position": {**rel, "bidirectional": True},
                        "block": {"placement": "pre", "parallel": "none", "norm": norm, "attention": attn,
                                  "mlp": mlp},
                        "final_norm": norm},
        })

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        if config.encoder is None:
            raise ValueError("model_type 't5' needs an encoder-decoder config (an `encoder` section)")
        b, m, pos = config.block, config.block.mlp, config.position
        key = (m.type, getattr(m, "activation", None))
        if key not in FFN_PROJ:
            raise ValueError(f"block.mlp {key} has no feed_forward_proj; supported: {sorted(FFN_PROJ)}")
        return {
            "architectures": ["T5ForConditionalGeneration"],
            "vocab_size": config.vocab_size,
            "d_model": config.d_model,
            "d_kv": b.attention.head_dim,
            "d_ff": m.d_ff,
            "num_layers": config.encoder.n_layers,
            "num_decoder_layers": config.n_layers,
            "num_heads": b.attention.n_heads,
            "relative_attention_num_buckets": getattr(pos, "num_buckets", None),
            "relative_attention_max_distance": getattr(pos, "max_distance", None),
            "layer_norm_epsilon": b.norm.eps,
            "feed_forward_proj": FFN_PROJ[key],
            "n_positions": config.max_seq_len,
            "tie_word_embeddings": config.head.tied,
            "scale_decoder_outputs": config.head.scale == "inv_sqrt_d_model",
            "is_encoder_decoder": True,
            "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,  # T5's sentencepiece ids
        }

    def rules(self, config: ModelConfig) -> list[Rule]:
        head = Rule("lm_head.weight", IGNORE if config.head.tied else "head.weight")
        return T5_SHARED + ffn_rules(config.block.mlp.type == "glu") + [head]

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "t5", "vocab_size": 96, "d_model": 32, "d_kv": 12, "d_ff": 40, "num_heads": 3,
            "num_layers": 2, "num_decoder_layers": 3,  # head_dim·heads ≠ d_model, unequal stacks
            "relative_attention_num_buckets": 8, "relative_attention_max_distance": 12,  # log buckets in 16 tokens
            "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0,
            # tied and unscaled, as transformers 5 builds v1.1: logits stay loud (> 1) under loud_init_;
            # the v1.0 d_model^-0.5 rescale and the untied hub head are tested in tests/test_t5.py
            "tie_word_embeddings": True, "scale_decoder_outputs": False,
        }

    # references: transformers' default sdpa for T5 (its eager path runs the softmax in half precision)
    reference_class = "AutoModelForSeq2SeqLM"
    reference_attention = "sdpa"
