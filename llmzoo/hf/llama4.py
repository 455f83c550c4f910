"""Llama-4 text (`model_type: llama4_text`; Meta, "The Llama 4 herd", 2025; Scout 17B-16E and
Maverick 17B-128E model cards). The multimodal `llama4` checkpoints' language model is this stack.

Facts from transformers 5 (modeling_llama4.py / configuration_llama4.py), the oracle:
- layers with rotary (`no_rope_layers[i] = 1`; by default every `no_rope_layer_interval`-th layer is
  NoPE) attend in chunks of `attention_chunk_size` slots and, with `use_qk_norm`, L2-normalise the
  rotated q and k (an RMS scaling without gain, eps rms_norm_eps);
- NoPE layers attend to every earlier key and, with `attn_temperature_tuning`, scale the queries by
  1 + attn_scale · log(1 + ⌊(slot + 1) / floor_scale⌋);
- rotary on interleaved pairs (a complex product), optionally llama3-scaled (Scout);
- MoE layers (`moe_layers`, by default every `interleave_moe_layer_step`-th): sigmoid of the top-k
  router logits (no renormalisation) multiplies each expert's *input*; one shared expert of the same
  size is added; experts stacked as `feed_forward.experts.gate_up_proj` (E, D, 2F) = [gate | up] and
  `down_proj` (E, F, D); dense layers a SwiGLU of `intermediate_size_mlp`.
"""

from __future__ import annotations

from typing import Any


from ..attention import AttentionSpec
from ..config import ModelConfig
from . import register_adapter
from .adapter import Adapter, activation_name, layer_count, require
from .llama import ATTENTION_AND_NORMS, dense_stand_in, head_rules, llama_like_config, llama_like_hf
from .rules import Rule, Split, Transpose

FF = "model.layers.{i}.feed_forward"
FEED_FORWARD = [  # hf tensor                                   llmzoo tensor                        transforms
    Rule(f"{FF}.gate_proj.weight",                            "blocks.{i}.mlp.gate.weight"),
    Rule(f"{FF}.up_proj.weight",                              "blocks.{i}.mlp.up.weight"),
    Rule(f"{FF}.down_proj.weight",                            "blocks.{i}.mlp.down.weight"),
    Rule(f"{FF}.router.weight",                               "blocks.{i}.mlp.router.weight"),
    Rule(f"{FF}.experts.gate_up_proj",                        "blocks.{i}.mlp.experts.{gate,up}",
         Transpose(dims=(1, 2)), Split(dim=1, parts=2)),
    Rule(f"{FF}.experts.down_proj",                           "blocks.{i}.mlp.experts.down", Transpose(dims=(1, 2))),
    Rule(f"{FF}.shared_expert.{{gate,up,down}}_proj.weight",  "blocks.{i}.mlp.shared.{gate,up,down}.weight"),
]


def layer_lists(hf: dict[str, Any], n: int) -> tuple[list[int], list[int]]:
    """(NoPE layers, MoE layers) as transformers derives them."""
    interval = int(hf.get("no_rope_layer_interval", 4))
    rope = hf.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    step = int(hf.get("interleave_moe_layer_step", 1))
    moe = hf.get("moe_layers")
    moe = list(range(step - 1, n, step)) if moe is None else list(moe)
    return [i for i, r in enumerate(rope) if not r], moe


def as_slice(layers: list[int], n: int, steps: tuple[int, ...]) -> str | list[int]:
    """'a::k' when the layers are every k-th from a, k one of config.json's periods (the NoPE interval,
    the MoE step), as the zoo writes Llama-4's patterns; else the list."""
    for step in steps:
        if layers == list(range(n))[layers[0] :: step]:
            return f"{layers[0]}::{step}"
    return layers


@register_adapter
class Llama4TextAdapter(Adapter):
    model_type = "llama4_text"
    families = ("llama-4",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        n = layer_count(hf)  # bounded before any per-layer list is built
        nope, moe_layers = layer_lists(hf, n)
        data = llama_like_config({**hf, "intermediate_size": hf.get("intermediate_size_mlp", 16384)},
                                 family="llama4", qkv_bias=bool(hf.get("attention_bias", False)),
                                 o_bias=bool(hf.get("attention_bias", False))).to_dict()
        data["position"]["layout"] = "interleaved"  # transformers rotates (2i, 2i+1) as a complex number
        att = data["block"]["attention"]
        chunk = hf.get("attention_chunk_size")
        att["chunk"] = int(chunk) if chunk else None
        if hf.get("use_qk_norm", True):
            att.update(qk_norm={"type": "rmsnorm", "eps": float(hf.get("rms_norm_eps", 1e-5)), "weight": False},
                       qk_norm_after_rope=True)
        nope_attention = {"chunk": None, "qk_norm": None, "qk_norm_after_rope": False}
        if hf.get("attn_temperature_tuning", True):
            nope_attention.update(query_temperature=float(hf.get("attn_scale", 0.1)),
                                  temperature_floor=int(hf.get("floor_scale", 8192)))
        base = AttentionSpec.model_validate(att).model_dump()
        nope_attention = {k: v for k, v in nope_attention.items() if base[k] != v}  # what NoPE layers change
        dense = data["block"]["mlp"]
        routed = {"type": "moe", "n_experts": int(require(hf, "num_local_experts")),
                  "top_k": int(hf.get("num_experts_per_tok", 1)), "d_expert": int(require(hf, "intermediate_size")),
                  "activation": activation_name(hf.get("hidden_act", "silu")), "n_shared_experts": 1,
                  "score": "sigmoid", "norm_topk": False, "weigh_input": True}
        data["block"]["mlp"] = routed
        overrides = []
        # one override per distinct (NoPE?, dense?) combination, in layer order of first appearance
        kinds: dict[tuple[bool, bool], list[int]] = {}
        for i in range(n):
            kinds.setdefault((i in nope, i not in moe_layers), []).append(i)
        for (is_nope, is_dense), layers in kinds.items():
            block: dict[str, Any] = {}
            if is_nope:
                block.update(position={"type": "none"}, attention=nope_attention)
            if is_dense:
                block["mlp"] = dense
            if block:
                steps = (int(hf.get("no_rope_layer_interval", 4)), int(hf.get("interleave_moe_layer_step", 1)))
                overrides.append({"layers": as_slice(layers, n, steps), "block": block})
        data["overrides"] = overrides
        return ModelConfig.model_validate(data)

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        blocks = config.blocks
        moe = next((b.mlp for b in blocks if b.mlp.type == "moe"), None)
        nope = [i for i, b in enumerate(blocks) if b.position is not None and b.position.type == "none"]
        rope_attn = next((b.attention for i, b in enumerate(blocks) if i not in nope), config.block.attention)
        nope_attn = blocks[nope[0]].attention if nope else None
        data = dense_stand_in(config, d_ff=16384).to_dict()  # LLaMA keys, a dense MLP everywhere
        data["overrides"] = []
        data["block"]["attention"] = {k: v for k, v in rope_attn.model_dump().items()
                                      if k in ("type", "n_heads", "n_kv_heads", "head_dim", "qkv_bias", "o_bias")}
        out = {"architectures": ["Llama4ForCausalLM"], **llama_like_hf(ModelConfig.model_validate(data))}
        out["intermediate_size_mlp"] = out.pop("intermediate_size")
        out.update({
            "attention_bias": rope_attn.qkv_bias, "use_qk_norm": rope_attn.qk_norm is not None,
            "attention_chunk_size": rope_attn.chunk,
            "no_rope_layers": [0 if i in nope else 1 for i in range(config.n_layers)], "no_rope_layer_interval": 4,
            "interleave_moe_layer_step": 2 if any(b.mlp.type != "moe" for b in blocks) else 1,
            "attn_temperature_tuning": bool(nope_attn is not None and nope_attn.query_temperature is not None),
            "moe_layers": [i for i, b in enumerate(blocks) if b.mlp.type == "moe"],
        })
        if nope_attn is not None and nope_attn.query_temperature is not None:
            out.update(attn_scale=nope_attn.query_temperature, floor_scale=nope_attn.temperature_floor)
        if moe is not None:
            out.update(num_local_experts=moe.n_experts, num_experts_per_tok=moe.top_k, intermediate_size=moe.d_expert)
        return out

    def rules(self, config: ModelConfig) -> list[Rule]:
        return ATTENTION_AND_NORMS + FEED_FORWARD + head_rules(config)

    def tiny_hf_config(self) -> dict[str, Any]:
        # 4 layers: 0 chunked+MoE, 1 chunked+dense, 2 chunked+MoE, 3 NoPE+dense (interval 4, step 2 → Maverick-like)
        return {
            "model_type": "llama4_text", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 32,
            "intermediate_size_mlp": 96, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 1, "moe_layers": [0, 2],
            "no_rope_layer_interval": 4, "attention_chunk_size": 8, "use_qk_norm": True,
            "attn_temperature_tuning": True, "floor_scale": 4, "attn_scale": 0.1,
            "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
            "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16},
        }
