"""DeepSeek-V2 / V2-Lite (`deepseek_v2`) and DeepSeek-V3 (`deepseek_v3`).

Multi-head Latent Attention (q_lora_rank set, or None as in V2-Lite), YaRN rotary scaling on the
decoupled rope dims, dense first `first_k_dense_replace` layers, then DeepSeekMoE layers.

Facts taken from transformers 5 (modeling_deepseek_v2.py / modeling_deepseek_v3.py), the oracle:
- V2 routing: softmax scores; `topk_method: group_limited_greedy` ranks groups by their best score,
  `greedy` ignores groups; the chosen scores × routed_scaling_factor, never renormalised
  (transformers ignores `norm_topk_prob` for V2).
- V3 routing: sigmoid scores, `e_score_correction_bias` for selection only, groups ranked by the
  sum of their two best (biased) scores, normalised if `norm_topk_prob`, × routed_scaling_factor.
- Rotary pairs: V2 rotates interleaved pairs (2i, 2i+1) (a complex product); V3 does the same when
  `rope_interleave` (default true), else rotates halves. The latent norms use eps 1e-6 whatever
  rms_norm_eps says; `attention_bias` puts biases on q_a, kv_a and o only.
- YaRN: cos/sin × attention_factor (mscale / mscale_all_dim), softmax scale × mscale(mscale_all_dim)².
- V3's multi-token-prediction layer is stored as layer `num_hidden_layers` (see llmzoo/mtp.py): it
  loads only when the config asks for it (`mtp: {n_layers: 1}`), and is skipped otherwise.
- FP8 checkpoints (`quantization_config.quant_method: fp8`) are dequantised by the loader before
  these rules see them (llmzoo/hf/fp8.py), so one table serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import ModelConfig
from . import register_adapter
from .adapter import HF_ACTIVATION, Adapter, activation_name, config_base, config_json_base, require, rope_from_hf, rope_to_hf
from .rules import IGNORE, Pattern, Rule, Split, StackExperts

# DeepSeek-V3.2's lightning indexer (DSA); V3.2 checkpoints store it in every main and MTP layer
INDEXER = [
    Rule("model.layers.{i}.self_attn.indexer.wq_b.weight",             "blocks.{i}.attn.indexer.q.weight"),
    Rule("model.layers.{i}.self_attn.indexer.wk.weight",               "blocks.{i}.attn.indexer.k.weight"),
    Rule("model.layers.{i}.self_attn.indexer.k_norm.{weight,bias}",    "blocks.{i}.attn.indexer.k_norm.{weight,bias}"),
    Rule("model.layers.{i}.self_attn.indexer.weights_proj.weight",     "blocks.{i}.attn.indexer.weights.weight"),
]

ATTENTION = [  # hf tensor                                             llmzoo tensor
    Rule("model.layers.{i}.self_attn.q_proj.weight",                   "blocks.{i}.attn.q.weight"),
    Rule("model.layers.{i}.self_attn.q_a_proj.weight",                 "blocks.{i}.attn.q_a.weight"),
    Rule("model.layers.{i}.self_attn.q_a_proj.bias",                   "blocks.{i}.attn.q_a.bias"),
    Rule("model.layers.{i}.self_attn.q_a_layernorm.weight",            "blocks.{i}.attn.q_norm.weight"),
    Rule("model.layers.{i}.self_attn.q_b_proj.weight",                 "blocks.{i}.attn.q_b.weight"),
    Rule("model.layers.{i}.self_attn.kv_a_proj_with_mqa.weight",       "blocks.{i}.attn.kv_a.weight"),
    Rule("model.layers.{i}.self_attn.kv_a_proj_with_mqa.bias",         "blocks.{i}.attn.kv_a.bias"),
    Rule("model.layers.{i}.self_attn.kv_a_layernorm.weight",           "blocks.{i}.attn.kv_norm.weight"),
    Rule("model.layers.{i}.self_attn.kv_b_proj.weight",                "blocks.{i}.attn.kv_b.weight"),
    Rule("model.layers.{i}.self_attn.o_proj.weight",                   "blocks.{i}.attn.o.weight"),
    Rule("model.layers.{i}.self_attn.o_proj.bias",                     "blocks.{i}.attn.o.bias"),
    Rule("model.layers.{i}.self_attn.rotary_emb.inv_freq",             IGNORE),
]

MLP = [
    Rule("model.layers.{i}.input_layernorm.weight",                    "blocks.{i}.attn_norm.weight"),
    Rule("model.layers.{i}.post_attention_layernorm.weight",           "blocks.{i}.mlp_norm.weight"),
    # dense layers (the first first_k_dense_replace)
    Rule("model.layers.{i}.mlp.{gate,up,down}_proj.weight",            "blocks.{i}.mlp.{gate,up,down}.weight"),
    Rule("model.layers.{i}.mlp.{gate,up,down}_proj.bias",              "blocks.{i}.mlp.{gate,up,down}.bias"),
    # DeepSeekMoE layers
    Rule("model.layers.{i}.mlp.gate.weight",                           "blocks.{i}.mlp.router.weight"),
    Rule("model.layers.{i}.mlp.gate.e_score_correction_bias",          "blocks.{i}.mlp.router.score_bias"),
    Rule("model.layers.{i}.mlp.experts.{e}.gate_proj.weight",          "blocks.{i}.mlp.experts.gate", StackExperts()),
    Rule("model.layers.{i}.mlp.experts.{e}.up_proj.weight",            "blocks.{i}.mlp.experts.up", StackExperts()),
    Rule("model.layers.{i}.mlp.experts.{e}.down_proj.weight",          "blocks.{i}.mlp.experts.down", StackExperts()),
    # transformers 5's in-memory layout, should a checkpoint be written in it
    Rule("model.layers.{i}.mlp.experts.gate_up_proj",                  "blocks.{i}.mlp.experts.{gate,up}",
         Split(dim=1, parts=2), variant=True),
    Rule("model.layers.{i}.mlp.experts.down_proj",                     "blocks.{i}.mlp.experts.down", variant=True),
    Rule("model.layers.{i}.mlp.shared_experts.{gate,up,down}_proj.weight",
         "blocks.{i}.mlp.shared.{gate,up,down}.weight"),
    Rule("model.layers.{i}.mlp.shared_experts.{gate,up,down}_proj.bias",
         "blocks.{i}.mlp.shared.{gate,up,down}.bias"),
]

TOP = [
    Rule("model.embed_tokens.weight",                                  "embed.weight"),
    Rule("model.norm.weight",                                          "final_norm.weight"),
]


def mtp_rules(config: ModelConfig, n_mtp: int, layer_rules: list[Rule] | None = None) -> list[Rule]:
    """The extra layer(s) num_hidden_layers + k: loaded onto `mtp.{k}` when config.mtp asks for them,
    skipped otherwise. Embedding and head copies stored with it are the main model's (V3 §2.2).
    layer_rules: the table of one decoder layer (DeepSeek's MLA + MoE by default; GLM-4.5 passes its own)."""
    out = []
    for k in range(n_mtp):
        src = f"model.layers.{config.n_layers + k}"
        want = config.mtp is not None and k < config.mtp.n_layers
        dst = f"mtp.{k}" if want else None

        def to(name: str) -> str | None:
            return None if dst is None else f"{dst}.{name}"

        out += [
            Rule(f"{src}.enorm.weight", to("enorm.weight")),
            Rule(f"{src}.hnorm.weight", to("hnorm.weight")),
            Rule(f"{src}.eh_proj.weight", to("eh_proj.weight")),
            Rule(f"{src}.shared_head.norm.weight", to("head_norm.weight")),
            Rule(f"{src}.shared_head.head.weight", IGNORE),  # = lm_head.weight (shared output head)
            Rule(f"{src}.embed_tokens.weight", IGNORE),  # = model.embed_tokens.weight (shared embedding)
        ]
        for r in layer_rules if layer_rules is not None else ATTENTION + MLP:
            hf = r.hf.text.replace("model.layers.{i}", src)
            ours = r.ours.text.replace("blocks.{i}", f"{dst}.block") if (r.ours and dst) else None
            if ours is None:
                if r.hf.alternatives:  # an IGNORE rule cannot gather: one rule per member
                    alts = "{" + ",".join(r.hf.alternatives) + "}"
                    out += [Rule(hf.replace(alts, a), None) for a in r.hf.alternatives]
                else:  # an expert index {e} stays a plain slot: every expert is skipped
                    out.append(Rule(hf, None))
            else:
                out.append(Rule(hf, ours, *r.transforms, variant=r.variant))
    return out


@dataclass(frozen=True)
class _MainLayer(Pattern):
    """A pattern whose `{i}` only matches the main layers 0..n_layers-1."""

    n_layers: int = 0

    def match(self, name: str) -> dict[str, str] | None:
        b = super().match(name)
        return b if b is None or int(b["i"]) < self.n_layers else None


def main_layers(rule: Rule, n_layers: int) -> Rule:
    """The same rule, blind to layer n_layers and above (where V3 keeps its MTP layer)."""
    out = Rule(rule.hf.text, rule.ours.text if rule.ours else None, *rule.transforms, variant=rule.variant)
    out.hf = _MainLayer(rule.hf.text, n_layers)
    return out


def deepseek_rules(config: ModelConfig, version: int, indexer: bool = False) -> list[Rule]:
    head = [Rule("lm_head.weight", IGNORE if config.head.tied else "head.weight")]
    if version == 2:
        return TOP + head + ATTENTION + MLP
    # V3 checkpoints carry num_nextn_predict_layers (1) MTP layers after the main ones
    n_mtp = max(1, config.mtp.n_layers if config.mtp else 0)
    layer = ATTENTION + (INDEXER if indexer else []) + MLP
    return TOP + head + [main_layers(r, config.n_layers) for r in layer] + mtp_rules(config, n_mtp, layer)


# ------------------------------------------------------------------------------ config.json


def deepseek_config(hf: dict[str, Any], version: int, indexer: bool = False) -> ModelConfig:
    d = int(require(hf, "hidden_size"))
    n_layers = int(require(hf, "num_hidden_layers"))
    eps = float(hf.get("rms_norm_eps", 1e-6))
    norm = {"type": "rmsnorm", "eps": eps}
    if int(hf.get("moe_layer_freq", 1)) != 1:
        raise ValueError(f"moe_layer_freq {hf['moe_layer_freq']} is not supported (transformers uses 1)")
    position = rope_from_hf(hf)
    if "scaling" in position and position["scaling"]["type"] == "yarn":  # DeepseekV2/V3Attention's temperature
        position["scaling"]["mscale_softmax"] = True
    # V3.2 (indexer): transformers' DeepseekV32Attention always rotates interleaved pairs
    interleaved = version == 2 or indexer or bool(hf.get("rope_interleave", True))
    position["layout"] = "interleaved" if interleaved else "halves"
    q_lora = hf.get("q_lora_rank")
    attention = {
        "type": "mla", "n_heads": int(require(hf, "num_attention_heads")),
        "q_lora_rank": int(q_lora) if q_lora else None, "kv_lora_rank": int(require(hf, "kv_lora_rank")),
        "qk_nope_head_dim": int(require(hf, "qk_nope_head_dim")),
        "qk_rope_head_dim": int(require(hf, "qk_rope_head_dim")), "v_head_dim": int(require(hf, "v_head_dim")),
        "latent_norm": {"type": "rmsnorm", "eps": 1e-6}, "bias": bool(hf.get("attention_bias", False)),
    }
    if indexer:  # DeepSeek Sparse Attention: transformers' DeepseekV32Indexer (LayerNorm key, eps 1e-6)
        if not q_lora:
            raise ValueError("q_lora_rank: deepseek_v32's indexer reads the q latent, so it must be set")
        kinds = set(hf.get("layer_types") or ["indexed_attention"])
        if kinds != {"indexed_attention"}:
            raise ValueError(f"layer_types {sorted(kinds)}: deepseek_v32 layers are all 'indexed_attention'")
        attention["indexer"] = {
            "n_heads": int(hf.get("index_n_heads", 64)), "head_dim": int(hf.get("index_head_dim", 128)),
            "topk": int(hf.get("index_topk", 2048)), "rope_layout": "halves",
            "key_norm": {"type": "layernorm", "eps": 1e-6},
        }
    act = activation_name(hf.get("hidden_act", "silu"))
    mlp_bias = bool(hf.get("mlp_bias", False)) if version == 2 else False
    dense = {"type": "glu", "activation": act, "d_ff": int(require(hf, "intermediate_size")), "bias": mlp_bias}
    n_dense = min(int(hf.get("first_k_dense_replace") or 0), n_layers)
    dense_layers = list(range(n_dense))
    if indexer and hf.get("mlp_layer_types") is not None:  # V3.2: per-layer 'dense' / 'sparse'
        types = list(hf["mlp_layer_types"])
        if len(types) != n_layers or set(types) - {"dense", "sparse"}:
            raise ValueError(f"mlp_layer_types {types}: need {n_layers} entries of 'dense' / 'sparse'")
        dense_layers = [i for i, t in enumerate(types) if t == "dense"]
    n_experts = hf.get("n_routed_experts")
    overrides: list[dict] = []
    if n_experts and len(dense_layers) < n_layers:
        if version == 2:
            grouped = hf.get("topk_method", "greedy") == "group_limited_greedy"
            if hf.get("topk_method", "greedy") not in ("greedy", "group_limited_greedy"):
                raise ValueError(f"topk_method {hf['topk_method']!r} is not one of greedy, group_limited_greedy")
            routing = {"score": "softmax", "group_score": "max", "norm_topk": False, "score_bias": False}
        else:
            grouped = True
            if hf.get("scoring_func", "sigmoid") != "sigmoid":
                raise ValueError(f"scoring_func {hf['scoring_func']!r}: transformers' DeepseekV3 uses sigmoid")
            routing = {"score": "sigmoid", "group_score": "top2_sum", "score_bias": True,
                       "norm_topk": bool(hf.get("norm_topk_prob", True))}
        mlp = {
            "type": "moe", "n_experts": int(n_experts), "top_k": int(require(hf, "num_experts_per_tok")),
            "d_expert": int(require(hf, "moe_intermediate_size")), "activation": act,
            "n_shared_experts": int(hf.get("n_shared_experts") or 0), "shared_bias": mlp_bias,
            "n_groups": int(hf.get("n_group") or 1) if grouped else 1,
            "topk_groups": int(hf.get("topk_group") or 1) if grouped else 1,
            "routed_scale": float(hf.get("routed_scaling_factor", 1.0)), **routing,
        }
        if dense_layers == list(range(len(dense_layers))) and dense_layers:
            overrides.append({"layers": f"0:{len(dense_layers)}", "block": {"mlp": dense}})
        else:
            overrides += [{"layers": f"{i}:{i + 1}", "block": {"mlp": dense}} for i in dense_layers]
    else:
        mlp = dense
    config = {
        **config_base(hf, "deepseek-v3.2" if indexer else f"deepseek-v{version}", tied=False),
        "d_model": d,
        "n_layers": n_layers,
        "max_seq_len": int(hf.get("max_position_embeddings", 4096)),
        "position": position,
        "block": {"placement": "pre", "norm": norm, "attention": attention, "mlp": mlp},
        "overrides": overrides,
        "final_norm": norm,
    }
    return ModelConfig.model_validate(config)


def deepseek_hf(config: ModelConfig, version: int) -> dict[str, Any]:
    b, a = config.block, config.block.attention
    if a.type != "mla":
        raise ValueError(f"block.attention.type {a.type!r}: deepseek_v{version} needs 'mla'")
    moe = b.mlp if b.mlp.type == "moe" else None
    dense = [blk.mlp for blk in config.blocks if blk.mlp.type == "glu"]
    n_dense = sum(1 for blk in config.blocks if blk.mlp.type != "moe") if moe else config.n_layers
    d_ff = dense[0].d_ff if dense else (moe.d_expert * max(moe.n_shared_experts, 1))
    out: dict[str, Any] = {
        **config_json_base(config, f"DeepseekV{version}ForCausalLM"),
        "hidden_size": config.d_model,
        "intermediate_size": d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": a.n_heads,
        "num_key_value_heads": a.n_heads,
        "q_lora_rank": a.q_lora_rank,
        "kv_lora_rank": a.kv_lora_rank,
        "qk_nope_head_dim": a.qk_nope_head_dim,
        "qk_rope_head_dim": a.qk_rope_head_dim,
        "v_head_dim": a.v_head_dim,
        "attention_bias": a.bias,
        "hidden_act": HF_ACTIVATION[(moe or b.mlp).activation],
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": b.norm.eps,
        "first_k_dense_replace": n_dense,
        **rope_to_hf(config.position),
    }
    if a.indexer is not None:
        ix = a.indexer
        if (ix.rope_layout, ix.key_norm.type, config.position.layout) != ("halves", "layernorm", "interleaved"):
            raise ValueError("block.attention.indexer: deepseek_v32 needs rope_layout 'halves', a layernorm key_norm "
                             "and position.layout 'interleaved'")
        out["architectures"] = ["DeepseekV32ForCausalLM"]
        out.update({"index_n_heads": ix.n_heads, "index_head_dim": ix.head_dim, "index_topk": ix.topk,
                    "mlp_layer_types": ["sparse" if blk.mlp.type == "moe" else "dense" for blk in config.blocks]})
        out.pop("first_k_dense_replace")
    elif version == 3:
        out["rope_interleave"] = config.position.layout == "interleaved"
        out["num_nextn_predict_layers"] = config.mtp.n_layers if config.mtp else 0
    else:
        out["mlp_bias"] = bool(dense[0].bias if dense else (moe.shared_bias if moe else False))
    if moe is not None:
        out.update({
            "n_routed_experts": moe.n_experts, "num_experts_per_tok": moe.top_k,
            "moe_intermediate_size": moe.d_expert, "n_shared_experts": moe.n_shared_experts,
            "routed_scaling_factor": moe.routed_scale, "n_group": moe.n_groups, "topk_group": moe.topk_groups,
            "norm_topk_prob": moe.norm_topk,
        })
        if version == 2:
            out["topk_method"] = "group_limited_greedy" if moe.n_groups > 1 else "greedy"
        elif a.indexer is None:
            out["topk_method"] = "noaux_tc"
            out["scoring_func"] = "sigmoid"
    return out


class _DeepSeek(Adapter):
    version = 2
    indexer = False  # DeepSeek-V3.2's sparse attention

    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        return deepseek_config(hf, self.version, self.indexer)

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        return deepseek_hf(config, self.version)

    def rules(self, config: ModelConfig) -> list[Rule]:
        return deepseek_rules(config, self.version, self.indexer)


@register_adapter
class DeepseekV2Adapter(_DeepSeek):
    model_type = "deepseek_v2"
    families = ("deepseek-v2",)
    version = 2

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "deepseek_v2", "vocab_size": 96, "hidden_size": 48, "intermediate_size": 64,
            "moe_intermediate_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 4, "q_lora_rank": None, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
            "qk_rope_head_dim": 8, "v_head_dim": 12, "n_routed_experts": 8, "num_experts_per_tok": 3,
            # 3 experts from 2 of 4 groups: the group limit bites whenever the best 3 span 3 groups
            "n_shared_experts": 2, "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2,
            "routed_scaling_factor": 1.5, "first_k_dense_replace": 1, "max_position_embeddings": 128,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "attention_bias": False,
            "rope_theta": 10000.0,
            "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                             "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
        }


@register_adapter
class DeepseekV3Adapter(_DeepSeek):
    model_type = "deepseek_v3"
    families = ("deepseek-v3", "kimi-k2")
    aliases = ("kimi_k2",)  # Kimi K2: DeepseekV3ForCausalLM under its own model_type (remote code = V3)
    version = 3

    def tiny_hf_config(self) -> dict[str, Any]:
        return {
            "model_type": "deepseek_v3", "vocab_size": 96, "hidden_size": 48, "intermediate_size": 64,
            "moe_intermediate_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 4, "q_lora_rank": 24, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
            "qk_rope_head_dim": 8, "v_head_dim": 12, "n_routed_experts": 8, "num_experts_per_tok": 3,
            "n_shared_experts": 1, "n_group": 4, "topk_group": 2, "norm_topk_prob": True,
            "routed_scaling_factor": 2.5, "first_k_dense_replace": 1, "max_position_embeddings": 128,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "rope_interleave": True,
            "num_nextn_predict_layers": 0,
            "rope_theta": 10000.0,
            "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                             "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8},
        }


@register_adapter
class DeepseekV32Adapter(_DeepSeek):
    """DeepSeek-V3.2(-Exp): V3 with DeepSeek Sparse Attention (the lightning indexer on every MLA layer)."""

    model_type = "deepseek_v32"
    families = ("deepseek-v3.2",)
    version = 3
    indexer = True
    half_precision_overrides = {"index_topk": 64}
    half_precision_reason = ("index_topk 64 ≥ the sequence in half precision: the top-k key selection flips on "
                             "near-tied index scores under rounding (transformers' own bf16 logits are nmse "
                             "0.09-0.15 from its fp32 ones); the float32 row proves the selection")

    def tiny_hf_config(self) -> dict[str, Any]:
        hf = {k: v for k, v in DeepseekV3Adapter().tiny_hf_config().items()
              if k not in ("rope_interleave", "num_nextn_predict_layers")}
        # top-6 of 4-head, 16-dim indexer keys: below the 20-token test batch, so selection drops keys
        return {**hf, "model_type": "deepseek_v32", "index_n_heads": 4, "index_head_dim": 16, "index_topk": 6}
