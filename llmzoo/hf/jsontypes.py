"""config.json value types: the JSON type of every key an adapter reads, checked before any
adapter converts it (a leaf module: the loader and adapter.py both use it)."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError, clip

# The JSON type of every config.json key an adapter reads, checked before any adapter converts it
# (at any nesting depth: rope_scaling, attn_config, quantization_config use the same names). A key
# of the wrong type is an error naming it, never coerced: bool("false") is True, int(2.5) is 2.
# transformers refuses these too (its configs are strict dataclasses).
POSITIVE_INT_KEYS = frozenset("""
vocab_size hidden_size num_hidden_layers num_attention_heads num_key_value_heads num_kv_heads
intermediate_size head_dim n_embd n_embed n_layer n_head n_layers n_heads num_layers num_heads
d_model d_kv d_ff ffn_dim ffn_hidden_size inner_hidden_size moe_intermediate_size
n_routed_experts num_local_experts num_experts_per_tok n_group topk_group kv_lora_rank
qk_nope_head_dim qk_rope_head_dim v_head_dim num_decoder_layers max_position_embeddings n_positions
seq_length max_seq_len max_sequence_length model_max_length word_embed_proj_dim window_size
relative_attention_num_buckets relative_attention_max_distance original_max_position_embeddings
moe_layer_freq rotary_dim num_ln_in_parallel_attn
""".split())
INT_KEYS = POSITIVE_INT_KEYS | frozenset("""
n_shared_experts first_k_dense_replace max_window_layers quantization_bit pre_seq_len sliding_window
q_lora_rank n_inner bos_token_id eos_token_id pad_token_id
""".split())
FLOAT_KEYS = frozenset("""
rms_norm_eps layer_norm_epsilon layer_norm_eps layernorm_epsilon rope_theta rotary_emb_base
rotary_pct partial_rotary_factor factor low_freq_factor high_freq_factor beta_fast beta_slow mscale
mscale_all_dim attention_factor routed_scaling_factor clip_qkv alibi_bias_max softmax_scale
""".split())
BOOL_KEYS = frozenset("""
tie_word_embeddings attention_bias mlp_bias bias enable_bias use_bias apply_residual_connection_post_layernorm
use_sliding_window use_parallel_residual scale_attn_weights scale_attn_by_inverse_layer_idx
rope_interleave position_encoding_2d parallel_attn norm_topk_prob new_decoder_architecture multi_query
layer_norm_elementwise_affine do_layer_norm_before alibi add_cross_attention _remove_final_layer_norm
scale_decoder_outputs truncate qk_ln prefix_lm
""".split())
STR_KEYS = frozenset("""
model_type hidden_act hidden_activation activation_function activation feed_forward_proj topk_method
scoring_func rope_type type quant_method fmt activation_scheme attn_type
""".split())
DICT_KEYS = frozenset("rope_scaling rope_parameters attn_config quantization_config".split())
LIST_KEYS = frozenset("layer_types attention_types weight_block_size architectures".split())


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def check_hf_types(hf: Any, file: str = "config.json", path: str = "") -> None:
    """ConfigError naming `file` and the key of the first config.json value of the wrong type."""
    if not isinstance(hf, dict):
        raise ConfigError(f"{file}: {path or 'top level'}: expected an object, got {_json_type(hf)}")
    for key, value in hf.items():
        where = f"{path}.{key}" if path else str(key)

        def bad(want: str) -> ConfigError:
            return ConfigError(f"{file}: {where}: expected {want}, got {_json_type(value)} {clip(repr(value), 80)}")

        if value is None:
            continue
        if key in BOOL_KEYS and not isinstance(value, bool):
            raise bad("true or false")
        if key in INT_KEYS and (isinstance(value, bool) or not isinstance(value, int)):
            raise bad("an integer")
        if key in POSITIVE_INT_KEYS and value <= 0:
            raise bad("an integer > 0")
        if key in INT_KEYS and value < 0 and key not in ("pad_token_id", "bos_token_id", "eos_token_id"):
            raise bad("an integer >= 0")
        if key in FLOAT_KEYS and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise bad("a number")
        if key in FLOAT_KEYS and (abs(value) >= 2**1023 if isinstance(value, int) else not math.isfinite(value)):
            raise bad("a finite number")
        if key in STR_KEYS and not isinstance(value, str):
            raise bad("a string")
        if key in DICT_KEYS and not isinstance(value, dict):
            raise bad("an object")
        if key in LIST_KEYS and not isinstance(value, list):
            raise bad("an array")
        if isinstance(value, dict):
            check_hf_types(value, file, where)
