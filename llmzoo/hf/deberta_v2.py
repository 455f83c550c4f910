"""DeBERTa-v2 / v3 (`model_type: deberta-v2`, He et al., arXiv:2006.03654): an encoder-only masked
LM (`encoder_only: true`, a `MaskedLM`) with disentangled attention over a shared, log-bucketed,
LayerNormed relative table (llmzoo/positions.py `relative_embedding`, llmzoo/attention.py
`disentangled`; docs/deberta.md).

Layout: post-LN BERT layers (`attention.self` q/k/v and position projections, `attention.output.dense`
+ LayerNorm, `intermediate.dense`, `output.dense` + LayerNorm); `encoder.rel_embeddings` and
`encoder.LayerNorm` (norm_rel_ebd) shared by all layers; the embedding LayerNorm; the masked-LM head
dense → act → LayerNorm → tied embedding + bias, spelled `cls.predictions.*` (transformers' legacy
head, its default) or `lm_predictions.lm_head.*` (legacy: false, the released checkpoints): the same
computation, both read. deberta-v2-xlarge / -xxlarge's convolution after layer 0 (conv_kernel_size,
conv_groups, conv_act: `layer_conv`, llmzoo/conv.py) is `encoder.conv.conv` + `encoder.conv.LayerNorm`.

Refused by name: relative_attention false, absolute positions on top of relative ones
(position_biased_input with relative_attention), token types (type_vocab_size > 0), embedding_size ≠
hidden_size, attention_head_size ≠ hidden_size / heads (transformers cannot run it), an untied head, an empty
pos_att_type.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import NO_TOKEN_IDS, Adapter, activation_name, clean_name, layer_count, require
from .rules import IGNORE, Rule

HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu", "tanh": "tanh"}
L = "deberta.encoder.layer.{i}"
DEBERTA = [  # hf tensor                                      llmzoo tensor
    Rule("deberta.embeddings.word_embeddings.weight",          "embed.weight"),
    Rule("deberta.embeddings.LayerNorm.{weight,bias}",          "embed_norm.{weight,bias}"),
    Rule("deberta.encoder.rel_embeddings.weight",               "positions.weight"),
    Rule("deberta.encoder.LayerNorm.{weight,bias}",             "positions.norm.{weight,bias}"),
    Rule(f"{L}.attention.self.query_proj.{{weight,bias}}",      "blocks.{i}.attn.q.{weight,bias}"),
    Rule(f"{L}.attention.self.key_proj.{{weight,bias}}",        "blocks.{i}.attn.k.{weight,bias}"),
    Rule(f"{L}.attention.self.value_proj.{{weight,bias}}",      "blocks.{i}.attn.v.{weight,bias}"),
    Rule(f"{L}.attention.self.pos_key_proj.{{weight,bias}}",    "blocks.{i}.attn.pos_k.{weight,bias}"),
    Rule(f"{L}.attention.self.pos_query_proj.{{weight,bias}}",  "blocks.{i}.attn.pos_q.{weight,bias}"),
    Rule(f"{L}.attention.output.dense.{{weight,bias}}",         "blocks.{i}.attn.o.{weight,bias}"),
    Rule(f"{L}.attention.output.LayerNorm.{{weight,bias}}",     "blocks.{i}.attn_norm.{weight,bias}"),
    Rule(f"{L}.intermediate.dense.{{weight,bias}}",             "blocks.{i}.mlp.up.{weight,bias}"),
    Rule(f"{L}.output.dense.{{weight,bias}}",                   "blocks.{i}.mlp.down.{weight,bias}"),
    Rule(f"{L}.output.LayerNorm.{{weight,bias}}",               "blocks.{i}.mlp_norm.{weight,bias}"),
    Rule("deberta.encoder.conv.conv.{weight,bias}",             "conv.conv.{weight,bias}"),
    Rule("deberta.encoder.conv.LayerNorm.{weight,bias}",        "conv.norm.{weight,bias}"),
    Rule("cls.predictions.transform.dense.{weight,bias}",       "head_transform.dense.{weight,bias}"),
    Rule("cls.predictions.transform.LayerNorm.{weight,bias}",   "head_transform.norm.{weight,bias}"),
    Rule("cls.predictions.bias",                                "head_bias"),
    Rule("cls.predictions.decoder.weight",                      IGNORE),  # tied copies of the embedding
    Rule("cls.predictions.decoder.bias",                        IGNORE),  # and of cls.predictions.bias
    Rule("lm_predictions.lm_head.dense.{weight,bias}",          "head_transform.dense.{weight,bias}", variant=True),
    Rule("lm_predictions.lm_head.LayerNorm.{weight,bias}",      "head_transform.norm.{weight,bias}", variant=True),
    Rule("lm_predictions.lm_head.bias",                         "head_bias", variant=True),
]


def pos_att_type(hf: dict[str, Any]) -> list[str]:
    """transformers' reading: a list, or a '|'-separated string (the v2 configs: "p2c|c2p")."""
    raw = hf.get("pos_att_type")
    terms = [x.strip() for x in raw.lower().split("|")] if isinstance(raw, str) else list(raw or [])
    if not terms:
        raise ValueError("pos_att_type: empty; relative attention without c2p / p2c terms is not supported")
    return terms


def layer_conv(hf: dict[str, Any], norm: dict) -> dict[str, Any] | None:
    """transformers' `ConvLayer` after layer 0 when conv_kernel_size > 0 (conv_groups default 1, conv_act
    default "tanh"; its LayerNorm takes layer_norm_eps)."""
    k = int(hf.get("conv_kernel_size", 0) or 0)
    if k <= 0:
        return None
    act = str(hf.get("conv_act", "tanh"))
    return {"kernel_size": k, "groups": int(hf.get("conv_groups", 1)), "norm": norm, "layer": 0,
            "activation": "tanh" if act == "tanh" else activation_name(act, "conv_act")}


def conv_keys(config: ModelConfig) -> dict[str, Any]:
    """config.json's conv_* keys (conv_kernel_size 0: none); transformers runs the conv after layer 0 only."""
    lc = config.layer_conv
    if lc is None:
        return {"conv_kernel_size": 0}
    if lc.layer != 0:
        raise ValueError(f"layer_conv.layer: {lc.layer}; transformers' DeBERTa-v2 convolves beside layer 0")
    return {"conv_kernel_size": lc.kernel_size, "conv_groups": lc.groups,
            "conv_act": HF_ACT.get(lc.activation, lc.activation)}


@register_adapter
class DebertaV2Adapter(Adapter):
    model_type = "deberta-v2"
    families = ("deberta-v3", "deberta-v2")

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        refused = [
            (not hf.get("relative_attention", False), "relative_attention: false (only relative DeBERTa is built)"),
            (hf.get("position_biased_input", True), "position_biased_input: true (absolute positions added to the "
             "relative ones)"),
            (int(hf.get("type_vocab_size", 0) or 0) > 0, "type_vocab_size > 0 (token type embeddings)"),
            (hf.get("embedding_size", hf.get("hidden_size")) != hf.get("hidden_size"), "embedding_size ≠ hidden_size"),
            (hf.get("tie_word_embeddings", True) is False, "tie_word_embeddings: false"),
            # transformers' attention output dense is hidden_size wide: another head size cannot run there
            (hf.get("attention_head_size") not in (None, hf.get("hidden_size", 0) // max(1, hf.get(
                "num_attention_heads", 1))), "attention_head_size ≠ hidden_size / num_attention_heads"),
        ]
        for bad, what in refused:
            if bad:
                raise ValueError(f"{what} is not supported")
        d, n_heads = int(require(hf, "hidden_size")), int(require(hf, "num_attention_heads"))
        max_pos = int(hf.get("max_position_embeddings", 512))
        max_rel = int(hf.get("max_relative_positions", -1))
        buckets = int(hf.get("position_buckets", -1))
        eps = float(hf.get("layer_norm_eps", 1e-7))
        norm = {"type": "layernorm", "eps": eps, "bias": True}
        act = activation_name(str(hf.get("hidden_act", "gelu")))
        rel_norm = [x.strip() for x in str(hf.get("norm_rel_ebd", "none")).lower().split("|")]
        return ModelConfig.model_validate({
            "name": clean_name(hf, "deberta-v2"),
            "family": "deberta-v3",
            "vocab_size": int(require(hf, "vocab_size")),
            "d_model": d,
            "n_layers": layer_count(hf),
            "max_seq_len": max_pos,
            "encoder_only": True,
            "position": {"type": "relative_embedding", "max_relative_positions": max_rel if max_rel >= 1 else max_pos,
                         "position_buckets": buckets if buckets > 0 else None,
                         "norm": norm if "layer_norm" in rel_norm else None},
            "embedding": {"scale": "none", "norm": norm},
            "block": {"placement": "post", "parallel": "none", "norm": norm,
                      "attention": {"type": "disentangled", "n_heads": n_heads,
                                    "head_dim": d // n_heads, "bias": True,
                                    "pos_att_type": pos_att_type(hf),
                                    "share_att_key": bool(hf.get("share_att_key", False))},
                      "mlp": {"type": "mlp", "activation": act, "d_ff": int(require(hf, "intermediate_size")),
                              "bias": True}},
            "final_norm": None,
            "head": {"tied": True, "bias": True, "transform": {"activation": act, "norm": norm}},
            "layer_conv": layer_conv(hf, norm),
        })

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        pos, a, m = config.position, config.block.attention, config.block.mlp
        if not config.encoder_only or pos.type != "relative_embedding" or a.type != "disentangled":
            raise ValueError("model_type 'deberta-v2' needs encoder_only: true, position relative_embedding and "
                             "disentangled attention")
        return {
            "architectures": ["DebertaV2ForMaskedLM"], **NO_TOKEN_IDS,
            "vocab_size": config.vocab_size,
            "hidden_size": config.d_model,
            "num_hidden_layers": config.n_layers,
            "num_attention_heads": a.n_heads,
            "intermediate_size": m.d_ff,
            "hidden_act": HF_ACT.get(m.activation, m.activation),
            "max_position_embeddings": config.max_seq_len,
            "type_vocab_size": 0,
            "layer_norm_eps": config.block.norm.eps,
            "relative_attention": True,
            "position_biased_input": False,
            "max_relative_positions": pos.max_relative_positions,
            "position_buckets": pos.position_buckets if pos.position_buckets is not None else -1,
            "norm_rel_ebd": "layer_norm" if pos.norm is not None else "none",
            "pos_att_type": list(a.pos_att_type),
            "share_att_key": a.share_att_key,
            "legacy": True,
            "tie_word_embeddings": True,
            **conv_keys(config),
        }

    def rules(self, config: ModelConfig) -> list[Rule]:
        return DEBERTA

    def tiny_hf_config(self) -> dict[str, Any]:
        # 8 buckets to 20 positions: a 20-token test batch passes the exact range (±4) into the log buckets
        return {"model_type": "deberta-v2", "vocab_size": 96, "hidden_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 4, "intermediate_size": 48, "hidden_act": "gelu",
                "max_position_embeddings": 64, "type_vocab_size": 0, "layer_norm_eps": 1e-7,
                "relative_attention": True, "position_biased_input": False, "max_relative_positions": 20,
                "position_buckets": 8, "norm_rel_ebd": "layer_norm", "pos_att_type": ["p2c", "c2p"],
                "share_att_key": True, "legacy": True, "tie_word_embeddings": True, "pad_token_id": 0,
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}

    reference_class = "AutoModelForMaskedLM"
