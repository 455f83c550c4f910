"""GPT-OSS (`model_type: gpt_oss`; OpenAI, gpt-oss-120b & gpt-oss-20b model card, arXiv:2508.10925).

Pre-norm RMSNorm blocks; GQA with biases on q, k, v, o and a learned per-head attention sink
(`self_attn.sinks`: a logit in every softmax denominator); layers alternate a 128-token sliding
window and full attention (`layer_types`, even layers sliding); YaRN rotary (halves layout,
truncate false); every MLP a mixture of experts: router with a bias, top-k logits softmaxed
(= softmax renormalised over the top k), experts with biases and the clamped SwiGLU
(min(g, 7) · σ(1.702 · min(g, 7))) ⊙ (clamp(u, ±7) + 1); untied head.

Facts from transformers 5 (modeling_gpt_oss.py, configuration_gpt_oss.py), the oracle:
- experts are stacked, transposed and gate/up interleaved: `mlp.experts.gate_up_proj` (E, D, 2F)
  with gate = [..., ::2], up = [..., 1::2], `gate_up_proj_bias` (E, 2F) likewise, `down_proj` (E, F, D);
- the hub checkpoints hold those as MXFP4 `*_blocks` / `*_scales` in (E, out, in) orientation
  (`quantization_config.quant_method: mxfp4`), dequantised here by a rule transform (llmzoo/hf/mxfp4.py);
- swiglu_alpha defaults to 1.702 and swiglu_limit to 7.0; hub config.json omits the alpha.
"""

from __future__ import annotations

from typing import Any


from ..config import ModelConfig
from . import register_adapter
from .adapter import Adapter, layer_count, require
from .llama import ATTENTION_AND_NORMS, dense_stand_in, head_rules, llama_like_config, llama_like_hf
from .mxfp4 import DequantizeMXFP4
from .rules import Deinterleave, Rule, Transpose

SLIDING, FULL = "sliding_attention", "full_attention"
EXPERTS = "model.layers.{i}.mlp.experts"
MOE = [  # hf tensor                                      llmzoo tensor                                transforms
    Rule("model.layers.{i}.self_attn.sinks",              "blocks.{i}.attn.sinks"),
    Rule("model.layers.{i}.mlp.router.weight",            "blocks.{i}.mlp.router.weight"),
    Rule("model.layers.{i}.mlp.router.bias",              "blocks.{i}.mlp.router.bias"),
    Rule(f"{EXPERTS}.gate_up_proj",                       "blocks.{i}.mlp.experts.{gate,up}",
         Transpose(dims=(1, 2)), Deinterleave(dim=1)),
    Rule(f"{EXPERTS}.gate_up_proj_bias",                  "blocks.{i}.mlp.experts.{gate_bias,up_bias}", Deinterleave(dim=1)),
    Rule(f"{EXPERTS}.down_proj",                          "blocks.{i}.mlp.experts.down", Transpose(dims=(1, 2))),
    Rule(f"{EXPERTS}.down_proj_bias",                     "blocks.{i}.mlp.experts.down_bias"),
    # the hub's MXFP4 layout (E, out, in / 32, 16) + (E, out, in / 32): read on load, exported as bf16
    Rule(f"{EXPERTS}.gate_up_proj_{{blocks,scales}}",     "blocks.{i}.mlp.experts.{gate,up}",
         DequantizeMXFP4(), Deinterleave(dim=1), variant=True),
    Rule(f"{EXPERTS}.down_proj_{{blocks,scales}}",        "blocks.{i}.mlp.experts.down", DequantizeMXFP4(), variant=True),
]


def layer_types(hf: dict[str, Any], n_layers: int) -> list[str]:
    # transformers' default: sliding on even layers, full on odd
    types = hf.get("layer_types") or [SLIDING if (i + 1) % 2 else FULL for i in range(n_layers)]
    bad = sorted(set(types) - {SLIDING, FULL})
    if len(types) != n_layers or bad:
        raise ValueError(f"config.json: layer_types must list {n_layers} of {SLIDING}, {FULL} (got {bad or len(types)})")
    return list(types)


@register_adapter
class GptOssAdapter(Adapter):
    model_type = "gpt_oss"
    quant_methods = ("mxfp4",)  # the released weights: MXFP4 experts (mxfp4.py)
    families = ("gpt-oss",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        n = layer_count(hf)  # bounded before any per-layer list is built
        window = hf.get("sliding_window")
        types = layer_types(hf, n)
        windows = [int(window) if t == SLIDING and window else None for t in types]
        if not (hf.get("rope_parameters") or hf.get("rope_scaling")):  # transformers' default rope
            hf = {**hf, "rope_parameters": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                            "truncate": False, "original_max_position_embeddings": 4096}}
        if "rope_theta" not in hf and "rope_theta" not in (hf.get("rope_parameters") or {}):
            hf = {**hf, "rope_theta": 150000.0}
        bias = bool(hf.get("attention_bias", True))
        base = llama_like_config(hf, family="gpt-oss", qkv_bias=bias, o_bias=bias, windows=windows)
        data = base.to_dict()
        data["block"]["attention"]["sinks"] = True
        for ov in data["overrides"]:  # the published alternation reads as a slice, as the zoo writes it
            start = ov["layers"][0]
            if ov["layers"] == list(range(n))[start::2]:
                ov["layers"] = f"{start}::2"
        data["block"]["mlp"] = {
            "type": "moe", "n_experts": int(require(hf, "num_local_experts")),
            "top_k": int(hf.get("num_experts_per_tok") or hf.get("experts_per_token") or 4),
            "d_expert": int(require(hf, "intermediate_size")), "activation": "silu",
            "score": "softmax", "norm_topk": True, "router_bias": True, "expert_bias": True,
            "swiglu_limit": float(hf.get("swiglu_limit", 7.0)), "swiglu_alpha": float(hf.get("swiglu_alpha", 1.702)),
            "up_offset": 1.0,
        }
        return ModelConfig.model_validate(data)

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        a, m = config.block.attention, config.block.mlp
        if m.type != "moe":
            raise ValueError(f"block.mlp.type {m.type!r}: gpt_oss layers are all mixtures of experts")
        windows = sorted({blk.attention.window for blk in config.blocks if blk.attention.window})
        if len(windows) > 1:
            raise ValueError(f"attention.window: gpt_oss has one sliding_window, not {windows}")
        return {
            "architectures": ["GptOssForCausalLM"],
            **llama_like_hf(dense_stand_in(config)),  # intermediate_size: the expert size
            "attention_bias": a.qkv_bias,
            "sliding_window": windows[0] if windows else None,
            "layer_types": [SLIDING if blk.attention.window else FULL for blk in config.blocks],
            "num_local_experts": m.n_experts,
            "num_experts_per_tok": m.top_k,
            "swiglu_limit": m.swiglu_limit,
            "swiglu_alpha": m.swiglu_alpha,
        }

    def rules(self, config: ModelConfig) -> list[Rule]:
        return ATTENTION_AND_NORMS + MOE + head_rules(config)

    def tiny_hf_config(self) -> dict[str, Any]:
        # in-dims (64, 32) are multiples of the MXFP4 block; window 8 < the test batches' length
        return {
            "model_type": "gpt_oss", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 32,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "num_local_experts": 8, "num_experts_per_tok": 3, "sliding_window": 8,
            "layer_types": [SLIDING, FULL, SLIDING], "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
            "attention_bias": True, "tie_word_embeddings": False, "swiglu_limit": 7.0,
            "rope_theta": 150000.0,
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                             "truncate": False, "original_max_position_embeddings": 32},
        }
