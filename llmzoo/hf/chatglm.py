"""ChatGLM-6B (`model_type: chatglm`, THUDM/chatglm-6b, remote code `modeling_chatglm.py`).

GLM-130B's small public sibling, as its modeling file computes it:
- DeepNorm-style post-LN: a = LN1(x); h = α·a + Attn(a); m = LN2(h); out = α·m + MLP(m) with
  α = (2·28)^½ for every depth — GLMBlock's `num_layers` argument defaults to 28 and ChatGLMModel
  never passes it (placement `deepnorm`);
- attention: fused per-head [q|k|v] `query_key_value` with bias, q / (√d·(l+1)), ×(l+1) and softmax in
  fp32 (net 1/√d), -10000 masked fill; prefix-LM mask: keys before the bos ([sop], 130004) token are
  visible to all, bos and after are causal;
- 2-D rotary (`position_encoding_2d`): the first half of each head rotates by the position id, the
  second half by the block position id, each with a table of width head_dim/2 built in fp16
  (inv_freq, angles, cos/sin: the `RotaryEmbedding` buffer is half) — position `rope_2d`;
- MLP (named GLU in the file, but not gated): dense_h_to_4h → gelu_impl (tanh form) → dense_4h_to_h;
- final LayerNorm; `lm_head` is tied to the word embeddings unless `tie_word_embeddings: false`
  (transformers' default tie applies to this remote-code class).
Unsupported (an error names them): p-tuning prefixes (`pre_seq_len`), quantized checkpoints.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import ModelConfig
from ..reference import glm130b
from ..reference.glm130b import ChatGLMReference
from . import register_adapter
from .adapter import RemoteCodeAdapter, config_base, config_json_base, require
from .hub_code import HubCode
from .rules import IGNORE, Rule, SplitInterleavedQKV, Transform, weight_bias

ALPHA = (2 * 28) ** 0.5  # GLMBlock(num_layers=28) default, never overridden


def glm_rules(config: ModelConfig, up: str, *up_transforms: Transform) -> list[Rule]:
    """The table ChatGLM-6B and GLM-130B's merged checkpoint share: QKV per head [q|k|v], the MLP's
    dense_h_to_4h onto `up` (ChatGLM: mlp.up; GLM-130B's GeGLU: mlp.{up,gate})."""
    a = config.block.attention
    qkv = SplitInterleavedQKV(a.n_heads, a.n_heads, a.head_dim)  # per head [q, k, v]
    L, B = "transformer.layers.{i}.", "blocks.{i}."
    return [  # hf tensor                                      llmzoo tensor                    transforms
        Rule("transformer.word_embeddings.weight",             "embed.weight"),
        *weight_bias(L + "input_layernorm",                    B + "attn_norm"),
        *weight_bias(L + "attention.query_key_value",          B + "attn.{q,k,v}",              qkv),
        *weight_bias(L + "attention.dense",                    B + "attn.o"),
        Rule(L + "attention.rotary_emb.inv_freq",              IGNORE),  # ignored on load upstream too
        *weight_bias(L + "post_attention_layernorm",           B + "mlp_norm"),
        *weight_bias(L + "mlp.dense_h_to_4h",                  B + up,                          *up_transforms),
        *weight_bias(L + "mlp.dense_4h_to_h",                  B + "mlp.down"),
        *weight_bias("transformer.final_layernorm",            "final_norm"),
    ]


@register_adapter
class ChatGLMAdapter(RemoteCodeAdapter):
    model_type = "chatglm"
    families = ("chatglm",)
    skipped_on_load = ("rotary_emb.inv_freq",)  # ignored on load upstream too
    hub_code = HubCode(glm130b, "ChatGLMReference", "ChatGLMReference(c)", "ChatGLMForConditionalGeneration",
                       tied={"lm_head.weight": "transformer.word_embeddings.weight"})

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        if hf.get("pre_seq_len"):
            raise ValueError(f"pre_seq_len: {hf['pre_seq_len']} (a p-tuning prefix encoder) is not supported")
        if hf.get("quantization_bit", 0):
            raise ValueError(f"quantization_bit: {hf['quantization_bit']} (int4/int8 weights) is not supported")
        d = int(require(hf, "hidden_size"))
        n_heads = int(require(hf, "num_attention_heads"))
        n_layers = int(hf.get("num_layers") or require(hf, "num_hidden_layers"))
        norm = {"type": "layernorm", "eps": float(hf.get("layernorm_epsilon", 1e-5)), "bias": True}
        two_d = bool(hf.get("position_encoding_2d", True))
        position = (
            {"type": "rope_2d", "theta": 10000.0, "layout": "halves_2d", "table_dtype": "float16"}
            if two_d
            else {"type": "rope", "theta": 10000.0, "fraction": 1.0, "layout": "halves", "table_dtype": "float16"}
        )
        return ModelConfig.model_validate({
            **config_base(hf, "chatglm"),
            "d_model": d,
            "n_layers": n_layers,
            "max_seq_len": int(hf.get("max_sequence_length", 2048)),
            "position": position,
            "embedding": {"scale": "none"},
            "block": {
                "placement": "deepnorm",
                "alpha": ALPHA,
                "norm": norm,
                "attention": {"type": "mha", "n_heads": n_heads, "head_dim": d // n_heads, "qkv_bias": True,
                              "o_bias": True, "prefix_lm": True},
                "mlp": {"type": "mlp", "d_ff": int(hf.get("inner_hidden_size") or 4 * d),
                        "activation": "gelu_tanh", "bias": True},
            },
            "final_norm": norm,
        })

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        return {
            **config_json_base(config, "ChatGLMModel", ("hidden_size", "num_layers", "num_attention_heads")),
            "layernorm_epsilon": config.block.norm.eps,
            "inner_hidden_size": config.block.mlp.d_ff,
            "max_sequence_length": config.max_seq_len,
            "position_encoding_2d": config.position.type == "rope_2d",
        }

    def rules(self, config: ModelConfig) -> list[Rule]:
        return glm_rules(config, "mlp.up") + [Rule("lm_head.weight", IGNORE if config.head.tied else "head.weight")]

    def tiny_hf_config(self) -> dict[str, Any]:
        # untied head and 3 layers: α stays (2·28)^½, not (2·3)^½; head_dim 16 → two rotary streams of 8
        return {"model_type": "chatglm", "vocab_size": 96, "hidden_size": 64, "num_layers": 3,
                "num_attention_heads": 4, "layernorm_epsilon": 1e-5, "inner_hidden_size": 128,
                "max_sequence_length": 64, "position_encoding_2d": True, "tie_word_embeddings": False,
                "bos_token_id": 90, "eos_token_id": 91, "mask_token_id": 88, "gmask_token_id": 89,
                "pad_token_id": 0}

    def reference(self, hf_config: dict[str, Any]) -> nn.Module:
        return ChatGLMReference(hf_config).eval()
