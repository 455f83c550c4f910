"""Mixtral (`model_type: mixtral`): Mistral attention (GQA, sliding window as configured) with a
sparse mixture of SwiGLU experts in place of the MLP (Jiang et al., arXiv:2401.04088, §2.1):
softmax over num_local_experts router logits, top num_experts_per_tok, weights renormalised.

Hub checkpoints store each expert as `block_sparse_moe.experts.{e}.w1/w2/w3` (gate/down/up);
transformers 5 keeps them fused in memory (`mlp.experts.gate_up_proj`) but writes the hub layout.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import Adapter, one_window
from .llama import LLAMA, dense_stand_in, head_rules, llama_like_config, llama_like_hf
from .rules import Rule, Split, StackExperts

MOE = [  # hf tensor                                               llmzoo tensor
    Rule("model.layers.{i}.block_sparse_moe.gate.weight",          "blocks.{i}.mlp.router.weight"),
    Rule("model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight", "blocks.{i}.mlp.experts.gate", StackExperts()),
    Rule("model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight", "blocks.{i}.mlp.experts.up", StackExperts()),
    Rule("model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight", "blocks.{i}.mlp.experts.down", StackExperts()),
    # transformers 5's in-memory layout, should a checkpoint be written in it
    Rule("model.layers.{i}.mlp.gate.weight",                       "blocks.{i}.mlp.router.weight", variant=True),
    Rule("model.layers.{i}.mlp.experts.gate_up_proj",              "blocks.{i}.mlp.experts.{gate,up}",
         Split(dim=1, parts=2), variant=True),
    Rule("model.layers.{i}.mlp.experts.down_proj",                 "blocks.{i}.mlp.experts.down", variant=True),
]
ATTENTION_AND_NORMS = [r for r in LLAMA if ".mlp." not in r.hf.text]


@register_adapter
class MixtralAdapter(Adapter):
    model_type = "mixtral"
    families = ("mixtral",)

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        dense = llama_like_config(hf, family="mixtral", qkv_bias=False, o_bias=False, window=hf.get("sliding_window"))
        moe = {
            "type": "moe", "n_experts": int(hf.get("num_local_experts", 8)),
            "top_k": int(hf.get("num_experts_per_tok", 2)), "d_expert": dense.block.mlp.d_ff,
            "activation": dense.block.mlp.activation, "score": "softmax", "norm_topk": True,
        }
        data = dense.to_dict()
        data["block"]["mlp"] = moe
        return ModelConfig.model_validate(data)

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        moe = config.block.mlp
        if moe.type != "moe" or moe.n_shared_experts or moe.score != "softmax" or not moe.norm_topk \
                or moe.n_groups != 1 or moe.routed_scale != 1.0 or moe.score_bias:
            raise ValueError("mixtral needs block.mlp: moe with softmax scores, norm_topk, no shared experts, "
                             "no groups, routed_scale 1, no score_bias")
        return {"architectures": ["MixtralForCausalLM"], **llama_like_hf(dense_stand_in(config)),
                "sliding_window": one_window(config, self.model_type, every_layer=True),
                "num_local_experts": moe.n_experts, "num_experts_per_tok": moe.top_k}

    def rules(self, config: ModelConfig) -> list[Rule]:
        return ATTENTION_AND_NORMS + MOE + head_rules(config)

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "mixtral", "vocab_size": 96, "hidden_size": 48, "intermediate_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 128,
            "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
            "sliding_window": 8,  # shorter than the parity batch, so the window is exercised
            "tie_word_embeddings": False,
        }
