"""GLM-4.5 / GLM-4.5-Air / GLM-4.6 (`model_type: glm4_moe`; Zhipu AI & Tsinghua, "GLM-4.5: Agentic,
Reasoning, and Coding (ARC) Foundation Models", arXiv:2508.06471).

LLaMA-shaped GQA attention with a bias on q, k, v (not o), head_dim set on its own (128), optional
QK-norm (`use_qk_norm`: RMSNorm per head, eps rms_norm_eps), partial rotary on the first half of
each head (`partial_rotary_factor` 0.5, halves layout); the first `first_k_dense_replace` layers dense
SwiGLU FFNs, then DeepSeek-V3's MoE: sigmoid scores, `e_score_correction_bias` for selection only,
`n_group` groups ranked by their two best scores keeping `topk_group`, the chosen weights renormalised
(`norm_topk_prob`) then × routed_scaling_factor, plus `n_shared_experts` shared experts.

The checkpoints carry `num_nextn_predict_layers` multi-token-prediction layers after the main ones
(as DeepSeek-V3, llmzoo/mtp.py): skipped on load unless the config asks for `mtp`, like V3's.
Facts from transformers 5 (modeling_glm4_moe.py / configuration_glm4_moe.py), the oracle.
"""

from __future__ import annotations

from typing import Any


from ..config import ModelConfig
from . import register_adapter
from .adapter import Adapter, activation_name, require
from .deepseek import MLP, main_layers, mtp_rules
from .llama import LLAMA, dense_stand_in, head_rules, llama_like_config, llama_like_hf
from .qwen3 import QK_NORM
from .rules import Rule

ATTENTION = [r for r in LLAMA if "self_attn" in r.hf.text] + QK_NORM
TOP = [r for r in LLAMA if "layers" not in r.hf.text]


def rotary_fraction(hf: dict[str, Any]) -> float:
    params = hf.get("rope_parameters") or {}
    return float(hf.get("partial_rotary_factor", params.get("partial_rotary_factor", 0.5)))


@register_adapter
class Glm4MoeAdapter(Adapter):
    model_type = "glm4_moe"
    families = ("glm-4.5",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        n = int(require(hf, "num_hidden_layers"))
        data = llama_like_config(hf, family="glm4-moe", qkv_bias=bool(hf.get("attention_bias", False)), o_bias=False,
                                 qk_norm="head" if hf.get("use_qk_norm") else None).to_dict()
        data["position"]["fraction"] = rotary_fraction(hf)
        dense = data["block"]["mlp"]
        n_dense = min(int(hf.get("first_k_dense_replace", 1) or 0), n)
        experts = int(hf.get("n_routed_experts", hf.get("num_local_experts")) or 0)
        if experts and n_dense < n:
            data["block"]["mlp"] = {
                "type": "moe", "n_experts": experts, "top_k": int(require(hf, "num_experts_per_tok")),
                "d_expert": int(require(hf, "moe_intermediate_size")),
                "activation": activation_name(hf.get("hidden_act", "silu")),
                "n_shared_experts": int(hf.get("n_shared_experts", 1) or 0), "score": "sigmoid",
                "n_groups": int(hf.get("n_group", 1) or 1), "topk_groups": int(hf.get("topk_group", 1) or 1),
                "group_score": "top2_sum", "norm_topk": bool(hf.get("norm_topk_prob", True)),
                "routed_scale": float(hf.get("routed_scaling_factor", 1.0)), "score_bias": True,
            }
            if n_dense:
                data["overrides"].append({"layers": f"0:{n_dense}", "block": {"mlp": dense}})
        return ModelConfig.model_validate(data)

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        a = config.block.attention
        moe = next((b.mlp for b in config.blocks if b.mlp.type == "moe"), None)
        dense = [b.mlp for b in config.blocks if b.mlp.type != "moe"]
        out = {"architectures": ["Glm4MoeForCausalLM"], **llama_like_hf(dense_stand_in(config)),
               "attention_bias": a.qkv_bias, "use_qk_norm": a.qk_norm is not None,
               "partial_rotary_factor": config.position.fraction, "first_k_dense_replace": len(dense),
               "num_nextn_predict_layers": config.mtp.n_layers if config.mtp else 0}
        if moe is not None:
            out.update({"n_routed_experts": moe.n_experts, "num_experts_per_tok": moe.top_k,
                        "moe_intermediate_size": moe.d_expert, "n_shared_experts": moe.n_shared_experts,
                        "n_group": moe.n_groups, "topk_group": moe.topk_groups, "norm_topk_prob": moe.norm_topk,
                        "routed_scaling_factor": moe.routed_scale})
        return out

    def rules(self, config: ModelConfig) -> list[Rule]:
        layer = ATTENTION + MLP
        n_mtp = max(1, config.mtp.n_layers if config.mtp else 0)
        return (TOP + head_rules(config) + [main_layers(r, config.n_layers) for r in layer]
                + mtp_rules(config, n_mtp, layer))

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "glm4_moe", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
            "moe_intermediate_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 24, "partial_rotary_factor": 0.5,
            "n_routed_experts": 8, "num_experts_per_tok": 3, "n_shared_experts": 1, "n_group": 4, "topk_group": 2,
            "norm_topk_prob": True, "routed_scaling_factor": 2.5, "first_k_dense_replace": 1,
            "use_qk_norm": True, "attention_bias": True, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
            "rope_theta": 1000000.0, "tie_word_embeddings": False, "num_nextn_predict_layers": 0,
        }
