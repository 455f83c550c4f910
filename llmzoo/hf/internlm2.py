"""InternLM2 (`model_type: internlm2`, arXiv:2403.17297; remote code, internlm/internlm2-7b).

A LLaMA-shaped decoder whose q/k/v live in one `wqkv` matrix stored per KV group as
[q × (n_heads / n_kv_heads), k, v] (each head_dim rows), split here by `SplitInterleavedQKV`.
config.json keys follow configuration_internlm2.py: `bias` puts a bias on wqkv and wo.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import ModelConfig
from . import register_adapter, remote_reference
from .adapter import RemoteCodeAdapter
from .hub_code import HubCode
from .llama import llama_like_config, llama_like_hf
from .remote_reference import InternLM2Reference
from .rules import IGNORE, Rule, SplitInterleavedQKV, weight_bias


@register_adapter
class InternLM2Adapter(RemoteCodeAdapter):
    model_type = "internlm2"
    families = ("internlm-2",)
    hub_code = HubCode(remote_reference, "InternLM2Reference", "InternLM2Reference(c)", "InternLM2ForCausalLM",
                       tied={"output.weight": "model.tok_embeddings.weight"})

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        # configuration_internlm2.py defaults `bias` to True; released checkpoints set it false
        bias = bool(hf.get("bias", True))
        return llama_like_config(hf, family="internlm-2", qkv_bias=bias, o_bias=bias)

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        a = config.block.attention
        if a.qkv_bias != a.o_bias:
            raise ValueError("internlm2 has one `bias` for wqkv and wo")
        if a.head_dim * a.n_heads != config.d_model:
            raise ValueError(f"internlm2 derives head_dim = hidden_size / heads, not {a.head_dim}")
        out = llama_like_hf(config)
        out.pop("head_dim")
        return {"architectures": ["InternLM2ForCausalLM"], **out, "bias": a.qkv_bias}

    def rules(self, config: ModelConfig) -> list[Rule]:
        a = config.block.attention
        qkv = SplitInterleavedQKV(a.n_heads, a.n_kv_heads, a.head_dim)
        return [  # hf tensor                                llmzoo tensor                       transforms
            Rule("model.tok_embeddings.weight",              "embed.weight"),
            Rule("model.layers.{i}.attention_norm.weight",   "blocks.{i}.attn_norm.weight"),
            *weight_bias("model.layers.{i}.attention.wqkv",  "blocks.{i}.attn.{q,k,v}",          qkv),
            *weight_bias("model.layers.{i}.attention.wo",    "blocks.{i}.attn.o"),
            Rule("model.layers.{i}.attention.rotary_emb.inv_freq", IGNORE),
            Rule("model.layers.{i}.ffn_norm.weight",         "blocks.{i}.mlp_norm.weight"),
            Rule("model.layers.{i}.feed_forward.w1.weight",  "blocks.{i}.mlp.gate.weight"),
            Rule("model.layers.{i}.feed_forward.w3.weight",  "blocks.{i}.mlp.up.weight"),
            Rule("model.layers.{i}.feed_forward.w2.weight",  "blocks.{i}.mlp.down.weight"),
            Rule("model.norm.weight",                        "final_norm.weight"),
            Rule("output.weight",                            IGNORE if config.head.tied else "head.weight"),
        ]

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "internlm2", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,  # groups of 4
            "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
            "rope_scaling": None, "bias": False, "hidden_act": "silu", "tie_word_embeddings": False,
        }

    def reference(self, hf_config: dict[str, Any]) -> nn.Module:
        return InternLM2Reference(hf_config)
