"""Baichuan 2 (`model_type: baichuan`, arXiv:2309.10305; remote code, baichuan-inc/Baichuan2-*-Base).

LLaMA-shaped with q/k/v fused in `W_pack` ([q; k; v] along the output dim) and NormHead (lm_head
rows L2-normalised). 7B uses rotary (base 10000), 13B uses ALiBi. One model_type covers both and
each release ships its own modeling file; their config.json files differ in that the rotary (7B)
one has `max_position_embeddings` while the ALiBi (13B) one has only `model_max_length` — that key
picks the position scheme here (assumption from the published configs).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import ModelConfig
from . import register_adapter, remote_reference
from .adapter import RemoteCodeAdapter
from .hub_code import HubCode
from .llama import llama_like_config, llama_like_hf
from .remote_reference import BaichuanReference
from .rules import IGNORE, Rule, Split


def uses_alibi(hf: dict[str, Any]) -> bool:
    return "max_position_embeddings" not in hf


@register_adapter
class BaichuanAdapter(RemoteCodeAdapter):
    model_type = "baichuan"
    families = ("baichuan-2",)
    hub_code = HubCode(remote_reference, "BaichuanReference", "BaichuanReference(c, alibi=uses_alibi(c))",
                       "BaichuanForCausalLM", helpers=(uses_alibi,))

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        hf = dict(hf)
        if hf.get("tie_word_embeddings"):  # transformers would tie the NormHead to the embedding; none released does
            raise ValueError("tie_word_embeddings: true is not supported (Baichuan 2's NormHead is untied)")
        alibi = uses_alibi(hf)
        if alibi:
            hf["max_position_embeddings"] = hf.get("model_max_length", 4096)
        config = llama_like_config(hf, family="baichuan-2", qkv_bias=False, o_bias=False)
        data = config.to_dict()
        data["head"]["normalize"] = True
        if alibi:
            data["position"] = {"type": "alibi", "max_bias": 8.0}
        return ModelConfig.model_validate(data)

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        if not config.head.normalize:
            raise ValueError("baichuan's lm_head is a NormHead: head.normalize must be true")
        a = config.block.attention
        if a.head_dim * a.n_heads != config.d_model or a.n_kv_heads != a.n_heads:
            raise ValueError("baichuan has plain multi-head attention with head_dim = hidden_size / heads")
        pos = config.position
        if pos.type == "rope" and (pos.theta != 10000.0 or pos.scaling is not None):
            raise ValueError("baichuan's rotary has base 10000 and no scaling")
        out = llama_like_hf(config)
        for key in ("head_dim", "num_key_value_heads", "rope_theta", "rope_scaling"):
            out.pop(key, None)
        out["model_max_length"] = config.max_seq_len
        if pos.type == "alibi":
            out.pop("max_position_embeddings")
        return {"architectures": ["BaichuanForCausalLM"], **out}

    def rules(self, config: ModelConfig) -> list[Rule]:
        return [  # hf tensor                                       llmzoo tensor                      transforms
            Rule("model.embed_tokens.weight",                       "embed.weight"),
            Rule("model.layers.{i}.input_layernorm.weight",         "blocks.{i}.attn_norm.weight"),
            Rule("model.layers.{i}.self_attn.W_pack.weight",        "blocks.{i}.attn.{q,k,v}.weight",  Split(0, parts=3)),
            Rule("model.layers.{i}.self_attn.o_proj.weight",        "blocks.{i}.attn.o.weight"),
            Rule("model.layers.{i}.self_attn.rotary_emb.inv_freq",  IGNORE),
            Rule("model.layers.{i}.post_attention_layernorm.weight", "blocks.{i}.mlp_norm.weight"),
            Rule("model.layers.{i}.mlp.gate_proj.weight",           "blocks.{i}.mlp.gate.weight"),
            Rule("model.layers.{i}.mlp.up_proj.weight",             "blocks.{i}.mlp.up.weight"),
            Rule("model.layers.{i}.mlp.down_proj.weight",           "blocks.{i}.mlp.down.weight"),
            Rule("model.norm.weight",                               "final_norm.weight"),
            Rule("lm_head.weight",                                  "head.weight"),
        ]

    def tiny_hf_config(self) -> dict[str, Any]:
        # the 13B variant (ALiBi, no max_position_embeddings); 6 heads: non-power-of-two slopes
        return {
            "model_type": "baichuan", "vocab_size": 96, "hidden_size": 48, "intermediate_size": 96,
            "num_hidden_layers": 3, "num_attention_heads": 6, "model_max_length": 128,
            "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
        }

    def reference(self, hf_config: dict[str, Any]) -> nn.Module:
        return BaichuanReference(hf_config, alibi=uses_alibi(hf_config))
