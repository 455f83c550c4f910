"""Every published layout the tests prove beyond each adapter's default tiny config, in one table:
variant name → (model_type, config.json keys replacing those of `tiny_hf_config()`).

tests/test_parity.py checks the logits of every row against the reference with one harness
(`llmzoo.parity.parity` → `compare`); the concern-specific files add their own assertions on rows
of the same table (test_classic: export round trip; test_deepseek: routing and YaRN)."""

# buffers the checkpoint stores that loud_init_ leaves at zero: DeepSeek-V3's router correction bias
LOUD_BUFFERS = ("e_score_correction_bias",)

YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32, "beta_slow": 1}

VARIANTS = {
    # ---- llama-like (LLaMA, Qwen2, Gemma, InternLM2, Baichuan)
    "llama-tied-biases": ("llama", {"tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True,
                                    "rope_scaling": None}),
    "llama-linear-rope": ("llama", {"rope_scaling": {"type": "linear", "factor": 2.0}}),
    "llama-dynamic-ntk": ("llama", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0},
                                    "max_position_embeddings": 16}),  # the batch (24) passes it
    "llama-mha": ("llama", {"num_key_value_heads": 4, "rope_scaling": None}),
    "qwen2-sliding-upper-layers": ("qwen2", {"use_sliding_window": True, "max_window_layers": 1}),
    "gemma-7b-like-mha": ("gemma", {"num_key_value_heads": 4, "hidden_act": "gelu"}),
    "internlm2-bias": ("internlm2", {"bias": True, "num_key_value_heads": 8}),
    "baichuan-7b-rotary": ("baichuan", {"max_position_embeddings": 128, "num_attention_heads": 4}),
    # ---- the 2024-25 dense types (Qwen3, Gemma-2/3, OLMo-2, Phi-3, SmolLM3)
    "qwen3-untied-sliding-upper-layers": ("qwen3", {"tie_word_embeddings": False, "use_sliding_window": True,
                                                    "max_window_layers": 1}),
    "gemma3-1b-like-mqa-unscaled": ("gemma3_text", {"num_key_value_heads": 1, "rope_scaling": None}),
    "gemma3-v5-dialect": ("gemma3_text", {"rope_theta": None, "rope_local_base_freq": None, "rope_scaling": None,
                                          "sliding_window_pattern": None,
                                          "layer_types": ["full_attention", "sliding_attention"] * 2,
                                          "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 4.0,
                                                                                 "rope_theta": 1e6},
                                                              "sliding_attention": {"rope_type": "default",
                                                                                    "rope_theta": 1e4}}}),
    "phi3-mini-4k-like": ("phi3", {"rope_scaling": None, "partial_rotary_factor": 1.0}),
    "olmo2-7b-like-mha": ("olmo2", {"num_key_value_heads": 4}),
    "smollm3-explicit-no-rope-layers": ("smollm3", {"no_rope_layers": [1, 0, 0, 1]}),
    # ---- classic decoders (GPT-2, GPT-Neo, BLOOM, OPT, Pythia, Falcon, MPT, GPT-J)
    "gpt2-inverse-layer-scale-untied": ("gpt2", {"scale_attn_by_inverse_layer_idx": True,
                                                 "tie_word_embeddings": False}),
    "gpt2-unscaled-relu": ("gpt2", {"scale_attn_weights": False, "activation_function": "relu"}),
    "gpt-neo-local-first": ("gpt_neo", {"num_layers": 3, "window_size": 3,
                                        "attention_types": [[["local", "global", "local"], 1]]}),
    "bloom-untied": ("bloom", {"tie_word_embeddings": False, "n_head": 8, "hidden_size": 64}),
    "opt-125m-style": ("opt", {"do_layer_norm_before": True, "word_embed_proj_dim": 48}),
    "opt-no-final-norm-gelu-nobias": ("opt", {"do_layer_norm_before": True, "word_embed_proj_dim": 48,
                                              "_remove_final_layer_norm": True, "enable_bias": False,
                                              "activation_function": "gelu", "tie_word_embeddings": False}),
    "neox-sequential-nobias": ("gpt_neox", {"use_parallel_residual": False, "attention_bias": False,
                                            "rotary_pct": 0.5, "rotary_emb_base": 500.0}),
    "falcon-7b-style": ("falcon", {"new_decoder_architecture": False, "multi_query": True,
                                   "parallel_attn": True, "bias": False, "num_kv_heads": None}),
    "falcon-rw-style": ("falcon", {"new_decoder_architecture": False, "multi_query": False,
                                   "parallel_attn": False, "bias": True, "alibi": True, "num_kv_heads": None,
                                   "num_attention_heads": 6, "hidden_size": 48}),
    "falcon-new-arch-one-norm": ("falcon", {"num_ln_in_parallel_attn": 1, "ffn_hidden_size": 96}),
    "mpt-softmax-scale": ("mpt", {"attn_config": {"alibi": True, "alibi_bias_max": 8, "clip_qkv": None,
                                                  "softmax_scale": 0.2}, "n_heads": 8}),
    "gptj-tied-full-rotary": ("gptj", {"tie_word_embeddings": True, "rotary_dim": 16}),
    # ---- MoE: DeepSeek-V2 / V3 and Mixtral
    # V2: full-rank query (V2-Lite style), softmax + group-limited greedy with max group score, YaRN
    "v2-q_full-grouped": ("deepseek_v2", {}),
    # V2: low-rank query, attention and MLP biases, greedy routing over all experts
    "v2-q_lora-greedy-bias": ("deepseek_v2", dict(
        q_lora_rank=24, topk_method="greedy", attention_bias=True, mlp_bias=True,
        rope_scaling={**YARN, "mscale": 1.0, "mscale_all_dim": 0.5})),
    # V3: sigmoid + correction bias, top2-sum group score, normalised × 2.5, interleaved rope, YaRN
    "v3-q_lora-interleave": ("deepseek_v3", {}),
    # V3: full-rank query, rope halves, two dense layers, tied embeddings
    "v3-q_full-halves": ("deepseek_v3", dict(
        q_lora_rank=None, rope_interleave=False, first_k_dense_replace=2, num_hidden_layers=4,
        tie_word_embeddings=True, rope_scaling={**YARN, "mscale": 0.707, "mscale_all_dim": 0.707})),
    # V3.2: DeepSeek Sparse Attention, each query keeps its indexer's top-6 of up to 20 keys
    "v32-dsa-top6": ("deepseek_v32", {}),
    # V3.2: top-3, a dense layer between MoE ones (mlp_layer_types), halves-rope indexer keys
    "v32-dsa-top3-mlp-types": ("deepseek_v32", {"index_topk": 3, "mlp_layer_types": ["dense", "sparse", "dense"]}),
    "mixtral": ("mixtral", {}),
}
