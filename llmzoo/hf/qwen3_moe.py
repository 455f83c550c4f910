"""Qwen3-MoE (`model_type: qwen3_moe`, arXiv:2505.09388 §2): Qwen3's attention (QK-norm per head, no
bias, GQA, head_dim 128) with mixture-of-experts MLPs: softmax over `num_experts` router logits in
float32, top `num_experts_per_tok`, renormalised when `norm_topk_prob`; no shared expert.

A layer is dense (a SwiGLU of `intermediate_size`) when it is listed in `mlp_only_layers` or when
(i + 1) % decoder_sparse_step ≠ 0 (transformers' Qwen3MoeDecoderLayer); the released models have
every layer sparse. Checkpoints store experts one by one (`mlp.experts.{e}.{gate,up,down}_proj`).
"""

from __future__ import annotations

from typing import Any


from ..config import ModelConfig
from . import register_adapter
from .adapter import Adapter, activation_name, require
from .deepseek import MLP as DEEPSEEK_MLP
from .llama import ATTENTION_AND_NORMS, dense_stand_in, head_rules
from .qwen3 import QK_NORM, Qwen3Adapter
from .rules import Rule

# DeepSeek's table names the same tensors: dense mlp.{gate,up,down}_proj, router mlp.gate, experts one by one
MOE = [r for r in DEEPSEEK_MLP if "shared" not in r.hf.text and "score_correction" not in r.hf.text
       and "layernorm" not in r.hf.text]


def n_experts(hf: dict[str, Any]) -> int:
    # hub config.json says num_experts; transformers 5 writes it as num_local_experts (attribute_map)
    return int(hf.get("num_experts", hf.get("num_local_experts")) or 0)


def dense_layers(hf: dict[str, Any], n_layers: int) -> list[int]:
    only = set(hf.get("mlp_only_layers") or [])
    step = int(hf.get("decoder_sparse_step") or 1)
    sparse = n_experts(hf) > 0
    return [i for i in range(n_layers) if i in only or not sparse or (i + 1) % step]


@register_adapter
class Qwen3MoeAdapter(Adapter):
    model_type = "qwen3_moe"
    families = ("qwen-3-moe",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        data = Qwen3Adapter().to_config(hf).to_dict()
        n = data["n_layers"]
        dense = dense_layers(hf, n)
        data["family"] = "qwen3-moe"
        act = activation_name(hf.get("hidden_act", "silu"))
        moe = {"type": "moe", "n_experts": n_experts(hf), "top_k": int(require(hf, "num_experts_per_tok")),
               "d_expert": int(require(hf, "moe_intermediate_size")), "activation": act, "score": "softmax",
               "norm_topk": bool(hf.get("norm_topk_prob", False))}
        glu = data["block"]["mlp"]
        if len(dense) < n:
            windowed = {i for ov in data["overrides"] for i in ov["layers"]}
            if windowed & set(dense):
                raise ValueError("config.json: sliding-window layers that are also mlp_only_layers are not supported")
            data["block"]["mlp"] = moe
            if dense:
                data["overrides"].append({"layers": dense, "block": {"mlp": glu}})
        return ModelConfig.model_validate(data)

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        moe = next((b.mlp for b in config.blocks if b.mlp.type == "moe"), None)
        dense = [i for i, b in enumerate(config.blocks) if b.mlp.type != "moe"]
        out = Qwen3Adapter.from_config(self, dense_stand_in(config))  # Qwen3's keys, a dense MLP everywhere
        out["architectures"] = ["Qwen3MoeForCausalLM"]
        if moe is not None:
            out.update({"num_experts": moe.n_experts, "num_experts_per_tok": moe.top_k,
                        "moe_intermediate_size": moe.d_expert, "norm_topk_prob": moe.norm_topk,
                        "decoder_sparse_step": 1, "mlp_only_layers": dense})
        else:
            out.update({"num_experts": 0, "mlp_only_layers": []})
        return out

    def rules(self, config: ModelConfig) -> list[Rule]:
        return ATTENTION_AND_NORMS + QK_NORM + MOE + head_rules(config)

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "qwen3_moe", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
            "moe_intermediate_size": 24, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 24, "num_experts": 8, "num_experts_per_tok": 3,
            "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [1],  # one dense layer
            "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "use_sliding_window": False, "tie_word_embeddings": False, "attention_bias": False,
        }
