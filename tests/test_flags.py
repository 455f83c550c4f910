"""Every config.json flag a supported model_type's transformers class reads: honoured exactly, or refused
by name — and never refused where a released checkpoint uses it.

One parametrised matrix: (model_type, flag values) × (config.json as transformers 5 saves it, the
same config.json in the 4.x hub dialect). Each case is a tiny loud reference built and saved by
transformers (or, for the remote-code types, by the packaged reference written from the published
modeling file); llmzoo loads the folder and its fp32 logits must match to 1e-4 — or the load must
fail with an error naming the flag. Shape keys (sizes, layer counts) are what every tiny config
already varies; dropout, init and output switches change nothing at inference and are not listed.
"""

from __future__ import annotations

import json

import pytest
import torch

import llmzoo
from llmzoo.hf import get_adapter, supported_model_types
from llmzoo.parity import make_batch, parity, tiny_reference

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0, 1.2, 1.5, 2.0, 2.5, 3.0],
            "long_factor": [2.0, 3.0, 5.0, 8.0, 9.0, 12.0]}  # phi3 tiny: 6 rotary pairs
R = "refused"  # the load must raise, naming the flag (the third tuple item)

# model_type: [(config.json overrides, None | (R, text the error must contain))]; released configs
# that use a value are named in a comment where the value is not the tiny config's own.
MATRIX: dict[str, list[tuple[dict, tuple[str, str] | None]]] = {
    "llama": [
        ({"attention_bias": True}, None),  # Qwen-style LLaMA derivatives, InternLM-1
        ({"mlp_bias": True}, None),
        ({"tie_word_embeddings": True}, None),  # Llama-3.2-1B
        ({"head_dim": 24}, None),  # head_dim ≠ hidden_size / heads
        ({"num_key_value_heads": 4}, None),  # LLaMA-2-7B: MHA
        ({"num_key_value_heads": 1}, None),
        ({"hidden_act": "gelu"}, None),
        ({"hidden_act": "gelu_fast"}, None),
        ({"hidden_act": "quick_gelu"}, (R, "hidden_act")),  # no such released llama; refused, named
        ({"rope_scaling": None}, None),  # LLaMA-2
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, None),  # Vicuna-LongChat, CodeLlama-style
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}, "max_position_embeddings": 16}, None),
        # a dynamic config that also states original_max_position_embeddings: transformers ignores it
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 8},
          "max_position_embeddings": 16}, None),
        ({"rope_scaling": YARN}, None),
        # YaRN with mscale / mscale_all_dim on a llama: cos/sin attention_factor only, no softmax temperature
        ({"rope_scaling": {**YARN, "mscale": 0.8, "mscale_all_dim": 0.5}}, None),
        ({"rope_scaling": {**YARN, "attention_factor": 1.3, "beta_fast": 16.0, "beta_slow": 2.0}}, None),
        ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
                           "original_max_position_embeddings": 16}}, None),  # LongRoPE as Phi-3 (positions.py)
        ({"rms_norm_eps": 1e-2}, None),
        ({"pretraining_tp": 2}, None),  # LLaMA-2's configs carry it; transformers 5 no longer reads it
    ],
    "mistral": [
        ({"sliding_window": None}, None),  # Mistral-7B-v0.2+
        ({"sliding_window": 4}, None),  # v0.1: 4096
        ({"head_dim": 24}, None),  # Mistral-Nemo: 128 with hidden 5120 / 32 heads
        ({"tie_word_embeddings": True}, None),
        ({"hidden_act": "gelu_fast"}, None),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, None),
        ({"rope_scaling": {**YARN, "mscale": 0.8, "mscale_all_dim": 0.5}}, None),
    ],
    "qwen2": [
        ({"use_sliding_window": True, "max_window_layers": 1}, None),
        ({"use_sliding_window": True, "max_window_layers": 0}, None),
        ({"use_sliding_window": True, "max_window_layers": 3}, None),  # as many as layers: no window
        ({"tie_word_embeddings": True}, None),  # Qwen2-0.5B / 1.5B
        ({"num_key_value_heads": 4}, None),  # Qwen1.5: MHA
        ({"rope_scaling": {**YARN, "mscale": 0.8, "mscale_all_dim": 0.5}}, None),  # Qwen2.5 long-context
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}, "max_position_embeddings": 16}, None),
        ({"hidden_act": "gelu"}, None),
    ],
    "qwen3": [
        ({"attention_bias": True}, None),
        ({"tie_word_embeddings": False}, None),  # Qwen3-8B and up
        ({"use_sliding_window": True, "max_window_layers": 1}, None),
        ({"rope_scaling": {**YARN, "mscale": 0.8, "mscale_all_dim": 0.5}}, None),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}}, None),
        ({"hidden_act": "gelu"}, None),
    ],
    "gemma": [
        ({"num_key_value_heads": 4, "hidden_act": "gelu"}, None),  # gemma-7b's config says gelu
        ({"hidden_activation": "gelu_pytorch_tanh", "hidden_act": "gelu"}, None),  # hidden_activation wins
        ({"attention_bias": True}, None),
        ({"head_dim": 12}, None),
        ({"use_bidirectional_attention": True}, (R, "use_bidirectional_attention")),
    ],
    "mixtral": [
        ({"num_experts_per_tok": 1}, None),
        ({"num_experts_per_tok": 3}, None),
        ({"sliding_window": None}, None),  # Mixtral-8x7B-v0.1
        ({"num_local_experts": 4}, None),
        ({"router_jitter_noise": 0.1}, None),  # training-time noise only: eval is unchanged
        ({"head_dim": 16}, None),
        ({"tie_word_embeddings": True}, None),
        ({"hidden_act": "gelu"}, None),
    ],
    "deepseek_v2": [
        ({"topk_method": "greedy", "n_group": 1, "topk_group": 1}, None),  # DeepSeek-V2-Lite
        ({"q_lora_rank": 12}, None),  # DeepSeek-V2: 1536
        ({"first_k_dense_replace": 0}, None),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                           "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}}, None),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                           "mscale": 1.0, "mscale_all_dim": 0.5}}, None),
        ({"norm_topk_prob": True}, None),
        ({"attention_bias": True}, None),
        ({"tie_word_embeddings": True}, None),
        ({"hidden_act": "gelu"}, None),
        ({"mlp_bias": True}, None),
    ],
    "deepseek_v3": [
        ({"rope_interleave": False}, None),
        ({"norm_topk_prob": False}, None),
        ({"q_lora_rank": None}, None),
        ({"first_k_dense_replace": 0}, None),
        ({"routed_scaling_factor": 1.0}, None),
        ({"n_group": 1, "topk_group": 1}, None),  # Moonlight-style: no group limit
        ({"attention_bias": True}, None),
        ({"hidden_act": "gelu"}, None),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                           "mscale": 1.0, "mscale_all_dim": 1.0}}, None),  # DeepSeek-V3's own values
    ],
    "deepseek_v32": [
        ({"index_topk": 2}, None),
        ({"index_n_heads": 2, "index_head_dim": 8}, None),  # head_dim = qk_rope_head_dim: all rotated
        ({"mlp_layer_types": ["sparse", "dense", "sparse"]}, None),
        ({"first_k_dense_replace": 2, "mlp_layer_types": None}, None),
        ({"norm_topk_prob": False}, None),
        ({"n_group": 1, "topk_group": 1}, None),
        ({"attention_bias": True}, None),
        ({"routed_scaling_factor": 1.0}, None),
        ({"hidden_act": "gelu"}, None),
        ({"mlp_bias": True}, None),  # read by no V3.2 module (the MLPs have no bias)
    ],
    "gpt_oss": [
        ({"layer_types": ["full_attention"] * 3}, None),
        ({"swiglu_limit": 3.0}, None),
        ({"swiglu_alpha": 1.0}, None),  # plain SiLU gate
        ({"num_experts_per_tok": 1}, None),
        ({"attention_bias": False}, None),
        ({"tie_word_embeddings": True}, None),
        ({"hidden_act": "gelu"}, None),
    ],
    "qwen3_moe": [
        ({"norm_topk_prob": False}, None),
        ({"mlp_only_layers": []}, None),  # Qwen3-30B-A3B / 235B-A22B: every layer sparse
        ({"mlp_only_layers": [], "decoder_sparse_step": 2}, None),  # only layer 1 sparse
        ({"num_experts_per_tok": 1}, None),
        ({"tie_word_embeddings": True}, None),
        ({"hidden_act": "gelu"}, None),
        ({"sliding_window": 4}, None),
        ({"num_local_experts": 4}, None),
    ],
    "glm4_moe": [
        ({"use_qk_norm": False}, None),  # GLM-4.5-Air
        ({"attention_bias": False}, None),
        ({"partial_rotary_factor": 1.0}, None),
        ({"first_k_dense_replace": 0}, None),
        ({"n_group": 1, "topk_group": 1}, None),  # every released GLM-4.5
        ({"norm_topk_prob": False}, None),
        ({"routed_scaling_factor": 1.0}, None),  # GLM-4.5-Air
        ({"n_shared_experts": 2}, None),
        ({"hidden_act": "gelu"}, None),
    ],
    "llama4_text": [
        ({"use_qk_norm": False}, None),  # Maverick
        ({"attn_temperature_tuning": False}, None),
        ({"attention_chunk_size": None}, None),  # every layer full attention
        ({"moe_layers": None, "interleave_moe_layer_step": 1}, None),  # Scout: every layer MoE
        ({"no_rope_layers": [1, 0, 1, 1]}, None),
        ({"rope_scaling": None}, None),  # Maverick
        ({"num_experts_per_tok": 2}, None),
        ({"attention_bias": True}, None),  # biases on q, k, v and o
        ({"hidden_act": "gelu"}, None),
        ({"router_jitter_noise": 0.1}, None),  # training-time noise only: eval is unchanged
    ],
    "gpt2": [
        ({"activation_function": "gelu"}, None),
        ({"activation_function": "relu"}, None),
        ({"n_inner": None}, None),  # 4 · n_embd, as every released GPT-2
        ({"scale_attn_weights": False}, None),
        ({"scale_attn_by_inverse_layer_idx": True}, None),
        ({"reorder_and_upcast_attn": True}, None),  # numerics only: fp32 scores either way here
        ({"tie_word_embeddings": False}, None),
        ({"add_cross_attention": True}, (R, "add_cross_attention")),
    ],
    "gpt_neo": [
        ({"attention_types": [[["global"], 4]]}, None),
        ({"attention_types": [[["local"], 4]]}, None),
        ({"window_size": 3}, None),
        ({"activation_function": "gelu"}, None),
        ({"tie_word_embeddings": False}, None),
    ],
    "bloom": [
        ({"apply_residual_connection_post_layernorm": True}, (R, "apply_residual_connection_post_layernorm")),
        ({"pretraining_tp": 4}, None),  # bloom-176b: tp 4, slow_but_exact false: no effect
        ({"pretraining_tp": 2, "slow_but_exact": True}, (R, "slow_but_exact")),
        ({"n_head": 4}, None),
        ({"tie_word_embeddings": False}, None),
    ],
    "opt": [
        ({"do_layer_norm_before": True}, None),  # every OPT but 350m
        ({"do_layer_norm_before": True, "_remove_final_layer_norm": True}, None),
        ({"word_embed_proj_dim": 48}, None),
        ({"enable_bias": False}, None),
        ({"layer_norm_elementwise_affine": False, "do_layer_norm_before": True}, None),  # OPT derivatives
        ({"layer_norm_elementwise_affine": False}, None),
        ({"activation_function": "gelu"}, None),  # Galactica
        ({"tie_word_embeddings": False}, None),
    ],
    "gpt_neox": [
        ({"hidden_act": "gelu_fast"}, None),  # EleutherAI/gpt-neox-20b's released config.json
        ({"hidden_act": "gelu_new"}, None),
        ({"use_parallel_residual": False}, None),
        ({"rotary_pct": 1.0}, None),
        ({"attention_bias": False}, None),
        ({"tie_word_embeddings": True}, None),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, None),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}, "max_position_embeddings": 16}, None),
    ],
    "falcon": [
        ({"new_decoder_architecture": False, "multi_query": True, "num_kv_heads": None}, None),  # Falcon-7B
        ({"new_decoder_architecture": False, "multi_query": False, "num_kv_heads": None}, None),  # RW-1B
        ({"new_decoder_architecture": False, "multi_query": True, "parallel_attn": False,
          "num_kv_heads": None}, None),
        ({"alibi": True, "new_decoder_architecture": False, "multi_query": False, "num_kv_heads": None}, None),
        ({"bias": True}, None),
        ({"num_ln_in_parallel_attn": 1}, None),  # Falcon-11B-style: one norm before attention and MLP
        ({"ffn_hidden_size": 96}, None),
        ({"activation": "gelu"}, None),
        ({"tie_word_embeddings": False}, None),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, None),
        ({"num_kv_heads": 8}, None),  # new decoder architecture with one KV head per query head
    ],
    "mpt": [
        ({"attn_config": {"alibi": False}}, (R, "alibi")),  # no released MPT lacks ALiBi
        # transformers' MPT hard-codes alibi_bias_max 8, no_bias and expansion_ratio 4 (every released MPT)
        ({"attn_config": {"alibi": True, "alibi_bias_max": 4}}, (R, "alibi_bias_max")),
        ({"attn_config": {"alibi": True, "clip_qkv": None}}, None),  # MPT-7B
        ({"attn_config": {"alibi": True, "softmax_scale": 0.5}}, None),
        ({"attn_config": {"alibi": True, "qk_ln": True}}, (R, "qk_ln")),  # transformers' MPT has no qk LayerNorm
        ({"attn_config": {"alibi": True, "prefix_lm": True}}, (R, "prefix_lm")),
        # llm-foundry keys transformers' MPT does not read: ignored on both sides, or refused by name
        ({"embedding_fraction": 0.5, "norm_type": "low_precision_layernorm", "learned_pos_emb": False}, None),
        ({"logit_scale": 0.5}, (R, "logit_scale")),
        ({"no_bias": False}, (R, "no_bias")),
        ({"expansion_ratio": 2}, (R, "expansion_ratio")),
        ({"tie_word_embeddings": False}, None),
    ],
    "gptj": [
        ({"rotary_dim": 8}, None),
        ({"n_inner": None}, None),  # GPT-J-6B: 4 · n_embd
        ({"activation_function": "gelu"}, None),
        ({"tie_word_embeddings": True}, None),
    ],
    "t5": [
        ({"feed_forward_proj": "relu"}, None),  # t5-small … t5-11b (v1.0)
        ({"feed_forward_proj": "gated-gelu"}, None),  # flan-t5, t5-v1_1
        ({"feed_forward_proj": "gated-silu"}, None),
        ({"feed_forward_proj": "gelu"}, None),
        ({"tie_word_embeddings": True, "scale_decoder_outputs": True}, None),  # v1.0 head rescale
        ({"tie_word_embeddings": False, "feed_forward_proj": "gated-gelu"}, None),  # flan-t5: untied head
        ({"num_decoder_layers": 1}, None),
        ({"relative_attention_max_distance": 20}, None),
        ({"layer_norm_epsilon": 1e-3}, None),
        ({"num_heads": 2, "d_kv": 20}, None),
    ],
    "internlm2": [
        ({"bias": True}, None),  # InternLM2 has none; the code reads it
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}, "max_position_embeddings": 16}, None),  # chat
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, None),
        ({"tie_word_embeddings": True}, None),
    ],
    "baichuan": [
        ({"max_position_embeddings": 64, "num_attention_heads": 4}, None),  # Baichuan-7B: rotary
        ({"tie_word_embeddings": True}, (R, "tie_word_embeddings")),  # every Baichuan 2: untied NormHead
    ],
    "chatglm": [
        ({"position_encoding_2d": False}, None),
        ({"pre_seq_len": 4}, (R, "pre_seq_len")),  # p-tuning prefix: not a pretrained architecture
    ],
    "gemma2": [
        ({"query_pre_attn_scalar": 16}, None),  # = head_dim (Gemma-2 2B/9B: 256 = head_dim)
        ({"attn_logit_softcapping": None, "final_logit_softcapping": None}, None),
        ({"sliding_window": 4}, None),
        ({"layer_types": ["full_attention"] * 4}, None),
        ({"num_key_value_heads": 4}, None),
        ({"attention_bias": True}, None),
        ({"use_bidirectional_attention": True}, (R, "use_bidirectional_attention")),  # EmbeddingGemma-style
    ],
    "gemma3_text": [
        ({"rope_scaling": None}, None),  # Gemma-3 1B
        ({"num_key_value_heads": 1}, None),  # Gemma-3 1B: MQA
        ({"query_pre_attn_scalar": 16}, None),
        # the class reads attn_logit_softcapping but its attention never applies it; the final cap applies
        ({"attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0}, None),
        ({"layer_types": ["sliding_attention", "full_attention"] * 2}, None),
        ({"rope_local_base_freq": 500.0}, None),
        ({"use_bidirectional_attention": True}, (R, "use_bidirectional_attention")),  # EmbeddingGemma
        ({"attention_bias": True}, None),
    ],
    "olmo2": [
        ({"attention_bias": True}, None),
        ({"num_key_value_heads": 4}, None),  # OLMo-2 1B/7B/13B: MHA
        ({"tie_word_embeddings": True}, None),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, None),
        ({"hidden_act": "gelu"}, None),
    ],
    "phi3": [
        ({"rope_scaling": None, "partial_rotary_factor": 1.0}, None),  # Phi-3-mini-4k, Phi-4
        ({"sliding_window": None}, None),  # Phi-4
        ({"tie_word_embeddings": True}, None),  # Phi-4-mini
        ({"num_key_value_heads": 4}, None),  # Phi-3-mini: MHA
        ({"rope_scaling": {**LONGROPE, "attention_factor": 1.5}}, None),
        ({"rope_scaling": {**LONGROPE, "type": "su"}}, None),  # the first Phi-3 config.json files
        ({"hidden_act": "gelu"}, None),
    ],
    "deberta-v2": [  # tiny: 8 log buckets to 20, LayerNormed table, [p2c, c2p], shared keys, legacy head
        ({"pos_att_type": "p2c|c2p"}, None),  # the string form of microsoft/deberta-v2-* / v3-* config.json
        ({"pos_att_type": ["c2p"]}, None),
        ({"pos_att_type": ["p2c"]}, None),
        ({"share_att_key": False}, None),  # own pos_key_proj / pos_query_proj
        ({"max_relative_positions": -1}, None),  # DeBERTa-v3: -1 reads as max_position_embeddings
        ({"position_buckets": -1, "max_relative_positions": 6}, None),  # no buckets: clipped at ±6
        ({"norm_rel_ebd": "none"}, None),
        ({"legacy": False}, None),  # the lm_predictions.lm_head spelling of the released checkpoints
        ({"attention_head_size": 8}, None),  # = hidden_size / heads
        ({"attention_head_size": 12}, (R, "attention_head_size")),  # transformers' output dense cannot take it
        ({"hidden_act": "gelu_new"}, None),
        ({"layer_norm_eps": 1e-2}, None),
        ({"relative_attention": False}, (R, "relative_attention")),  # no released v2/v3 config
        ({"position_biased_input": True}, (R, "position_biased_input")),
        ({"type_vocab_size": 2}, (R, "type_vocab_size")),
        # microsoft/deberta-v2-xlarge / -xxlarge: conv_kernel_size 3, conv_act gelu, no conv_groups
        ({"conv_kernel_size": 3, "conv_act": "gelu"}, None),
        ({"conv_kernel_size": 3}, None),  # conv_act default tanh
        ({"conv_kernel_size": 5, "conv_groups": 4, "conv_act": "gelu_new"}, None),
        ({"conv_kernel_size": 2}, (R, "kernel_size")),  # even: transformers' padding shortens the sequence
        ({"embedding_size": 24}, (R, "embedding_size")),
        ({"tie_word_embeddings": False}, (R, "tie_word_embeddings")),
        ({"pos_att_type": None}, (R, "pos_att_type")),
    ],
    "smollm3": [
        ({"no_rope_layer_interval": 4}, None),  # SmolLM3-3B
        ({"no_rope_layers": [1, 1, 1, 1]}, None),
        ({"use_sliding_window": True, "sliding_window": 4}, None),  # sliding on the NoPE layers only
        ({"tie_word_embeddings": False}, None),
        ({"attention_bias": True, "mlp_bias": True}, None),
        ({"hidden_act": "gelu"}, None),
    ],
}

CASES = [(mt, i) for mt in supported_model_types() for i in range(len(MATRIX.get(mt, [])))]


def test_every_supported_type_has_flags():
    assert sorted(MATRIX) == supported_model_types()


# config.json keys that change nothing in an inference forward (dropout, init, cache and output
# switches, special token ids), and keys transformers derives from others it already covers
NO_EFFECT = {"attention_dropout", "hidden_dropout", "classifier_dropout", "attn_pdrop", "embd_pdrop", "resid_pdrop",
             "embed_dropout", "resid_dropout", "emb_pdrop", "dropout", "layerdrop", "initializer_range", "init_std",
             "initializer_factor", "init_device", "use_cache", "output_router_logits", "router_aux_loss_coef",
             "bos_token_id", "eos_token_id", "pad_token_id", "is_decoder", "pretraining_tp",
             "summary_activation", "summary_first_dropout", "summary_proj_to_labels", "summary_type", "summary_use_proj",
             "hidden_dropout_prob", "attention_probs_dropout_prob", "pooler_dropout",
             "pooler_hidden_act", "pooler_hidden_size"}  # DeBERTa's classification pooler: not in the masked LM
DERIVED = {"rope_parameters": "rope_theta / rope_scaling", "layer_types": "use_sliding_window, max_window_layers",
           "attention_layers": "attention_types", "dense_act_fn": "feed_forward_proj",
           "is_gated_act": "feed_forward_proj", "head_dim": "qk_rope_head_dim (DeepSeek)",
           "qk_head_dim": "qk_nope_head_dim + qk_rope_head_dim",
           "_sliding_window_pattern": "sliding_window_pattern / layer_types (Gemma-3)"}


@pytest.mark.parametrize("model_type", [t for t in supported_model_types() if not get_adapter(t).remote_code])
def test_every_config_key_is_in_the_matrix(model_type):
    """Each key of the transformers config class is set by the tiny config, varied in MATRIX, or
    listed above as having no effect at inference / derived from a covered key."""
    import transformers

    base = set(transformers.PretrainedConfig().to_dict())
    keys = set(transformers.AutoConfig.for_model(model_type).to_dict()) - base
    covered = set(get_adapter(model_type).tiny_hf_config()) | {k for o, _ in MATRIX[model_type] for k in o}
    assert keys - covered - NO_EFFECT - set(DERIVED) == set()


def hub4(config: dict, model_type: str) -> dict:
    """A config.json as transformers 4.x hubs hold it: rope_theta + rope_scaling (type and rope_type)
    instead of rope_parameters, torch_dtype instead of dtype; GPT-NeoX's rotary_pct / rotary_emb_base."""
    out = {("torch_dtype" if k == "dtype" else k): v for k, v in config.items()}
    params = out.pop("rope_parameters", None)
    if params:
        params = dict(params)
        theta, kind = params.pop("rope_theta", None), params.pop("rope_type", "default")
        partial = params.pop("partial_rotary_factor", None)
        if model_type == "gemma3_text":  # one mapping per layer type; the hub had global + local base
            full, local = dict(params.pop("full_attention", {})), dict(params.pop("sliding_attention", {}))
            out["rope_theta"], out["rope_local_base_freq"] = full.pop("rope_theta"), local.pop("rope_theta")
            kind = full.pop("rope_type", "default")
            params = full
        elif model_type == "gpt_neox":
            out["rotary_emb_base"], out["rotary_pct"] = theta, partial if partial is not None else 1.0
        else:
            if theta is not None:
                out["rope_theta"] = theta
            if partial is not None:
                out["partial_rotary_factor"] = partial
        out["rope_scaling"] = None if kind == "default" else {"type": kind, "rope_type": kind, **params}
    return out


@pytest.mark.parametrize("dialect", ["current", "hub4"])
@pytest.mark.parametrize("model_type,case", CASES, ids=[f"{mt}-{i}" for mt, i in CASES])
def test_flag_is_honoured_or_refused(model_type, case, dialect, tmp_path):
    overrides, refusal = MATRIX[model_type][case]
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    ref = tiny_reference(model_type, seed=case, overrides=overrides)
    get_adapter(model_type).save_reference(ref, str(tmp_path), "100MB")
    path = tmp_path / "config.json"
    if dialect == "hub4":
        path.write_text(json.dumps(hub4(json.loads(path.read_text()), model_type)))
    if refusal is not None:
        with pytest.raises(Exception) as err:
            llmzoo.from_pretrained(tmp_path)
        assert refusal[1] in str(err.value), str(err.value)
        return
    ours = llmzoo.from_pretrained(tmp_path)
    ids, mask = make_batch(ours.config.vocab_size, 20, pad=4, seed=case)
    report = parity(model=ours, reference=ref, input_ids=ids, attention_mask=mask)
    assert report.max_abs <= 1e-4 and report.passed, f"{overrides}: {report}"
