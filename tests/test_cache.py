"""StaticCache: incremental decoding equals the full forward for every attention kind, and the cache
holds exactly `kv_cache_bytes` (the compiled decode step is checked in test_generation)."""

from __future__ import annotations

import copy

import pytest
import torch

import llmzoo
from llmzoo.cache import StaticCache
from llmzoo.config import ModelConfig, deep_merge
from llmzoo.model import CausalLM
from llmzoo.parity import loud_init_

ATTN = {"type": "gqa", "n_heads": 4, "n_kv_heads": 2, "head_dim": 8, "qkv_bias": True}
MLA = {"type": "mla", "n_heads": 4, "q_lora_rank": 16, "kv_lora_rank": 12, "qk_nope_head_dim": 8,
       "qk_rope_head_dim": 6, "v_head_dim": 10, "bias": True}


def tiny(position: dict | None = None, attention: dict | None = None, **extra) -> dict:
    cfg = {
        "name": "tiny", "family": "test", "vocab_size": 61, "d_model": 32, "n_layers": 3, "max_seq_len": 64,
        "position": position or {"type": "rope", "theta": 10000.0},
        "block": {"norm": {"type": "rmsnorm", "eps": 1e-6}, "attention": {**ATTN, **(attention or {})},
                  "mlp": {"type": "glu", "d_ff": 48}},
        "final_norm": {"type": "rmsnorm", "eps": 1e-6},
        "head": {"tied": False},
    }
    for key, value in extra.items():
        if key == "block":
            cfg["block"].update(value)
        else:
            cfg[key] = value
    return cfg


LN = {"type": "layernorm", "eps": 1e-5}
# one entry per way a layer can attend to cached keys
KINDS = {
    "gqa-rope": tiny(),
    "mha-learned": tiny({"type": "learned", "max_positions": 64, "offset": 2},
                        {"type": "mha", "n_kv_heads": None}, block={"norm": LN, "mlp": {"type": "mlp", "d_ff": 48}},
                        final_norm=LN),
    "mqa-parallel-partial-rope": tiny({"type": "rope", "fraction": 0.5}, {"type": "mqa", "n_kv_heads": 1},
                                      block={"parallel": "shared_norm", "norm": LN}, final_norm=LN),
    "sliding-window": tiny(attention={"window": 5}),
    "alternating-local": tiny({"type": "sinusoidal"}, overrides=[{"layers": "1::2",
                                                                   "block": {"attention": {"window": 4}}}]),
    "alibi-6-heads": tiny({"type": "alibi"}, {"type": "mha", "n_heads": 6, "n_kv_heads": None},
                          block={"norm": LN}, embedding={"norm": LN}, final_norm=LN),
    "relative-buckets": tiny({"type": "relative", "num_buckets": 8, "max_distance": 12},
                             {"type": "mha", "n_kv_heads": None}),
    "rope-interleaved-yarn": tiny({"type": "rope", "layout": "interleaved",
                                   "scaling": {"type": "yarn", "factor": 4.0, "original_max_positions": 8}}),
    "rope-llama3": tiny({"type": "rope", "theta": 500000.0, "scaling": {
        "type": "llama3", "factor": 8.0, "original_max_positions": 16}}),
    "mla": tiny({"type": "rope", "layout": "interleaved"}, MLA),
    "mla-full-rank-q": tiny(attention={**MLA, "q_lora_rank": None}),
    "prefix-lm-deepnorm": tiny(attention={"prefix_lm": True}, block={"placement": "deepnorm", "alpha": 2.0,
                                                                     "norm": LN}, final_norm=LN),
    "qk-norm-per-head": tiny(attention={"qk_norm": {"type": "rmsnorm", "eps": 1e-6}}),
    "qk-norm-projection-output-norms": tiny(attention={"qk_norm": {"type": "rmsnorm", "eps": 1e-6},
                                                       "qk_norm_scope": "projection"},
                                            block={"placement": "output"}),
    # Gemma-2/3: sandwich norms, soft-capped scores and logits, local layers with their own rope base
    "sandwich-softcap-local-rope": tiny({"type": "rope", "theta": 1e6, "scaling": {"type": "linear", "factor": 8.0}},
                                        {"softcap": 50.0, "qk_norm": {"type": "rmsnorm", "unit_offset": True}},
                                        block={"placement": "sandwich"}, head={"tied": True, "softcap": 30.0},
                                        overrides=[{"layers": "0::2", "block": {
                                            "attention": {"window": 4}, "position": {"type": "rope", "theta": 1e4}}}]),
    "nope-layers": tiny(overrides=[{"layers": [1], "block": {"position": {"type": "none"}}}]),
    # GPT-OSS: learned sinks (no cached slot of their own), alternating windows, biased experts, clamped SwiGLU
    "sinks-alternating-window-moe": tiny(attention={"sinks": True, "o_bias": True}, block={"mlp": {
        "type": "moe", "n_experts": 4, "top_k": 2, "d_expert": 16, "norm_topk": True, "router_bias": True,
        "expert_bias": True, "swiglu_limit": 7.0, "swiglu_alpha": 1.702, "up_offset": 1.0}},
        overrides=[{"layers": "0::2", "block": {"attention": {"window": 4}}}]),
    # Llama-4: chunked local attention with an L2 QK-norm on the rotated heads, a NoPE layer with query
    # temperature tuning, experts weighted on their input plus a shared expert
    "chunked-nope-temperature-moe": tiny({"type": "rope", "layout": "interleaved"}, {
        "chunk": 4, "qk_norm": {"type": "rmsnorm", "eps": 1e-5, "weight": False}, "qk_norm_after_rope": True},
        block={"mlp": {"type": "moe", "n_experts": 4, "top_k": 1, "d_expert": 16, "score": "sigmoid",
                       "n_shared_experts": 1, "weigh_input": True}},
        overrides=[{"layers": [2], "block": {"position": {"type": "none"}, "attention": {
            "chunk": None, "qk_norm": None, "qk_norm_after_rope": False, "query_temperature": 0.1,
            "temperature_floor": 3}}}]),
}
for _k in ("mla", "mla-full-rank-q"):  # MLA specs have no GQA keys
    KINDS[_k]["block"]["attention"] = {**MLA, **({"q_lora_rank": None} if "full" in _k else {})}
# DeBERTa: post-LN, disentangled attention over a shared log-bucketed relative table (exact to ±4,
# log-spaced to 12, clamped beyond: the 20-token test sequences pass all three), used causally here
KINDS["disentangled-log-buckets"] = tiny(
    {"type": "relative_embedding", "position_buckets": 8, "max_relative_positions": 12, "norm": LN},
    block={"placement": "post", "norm": LN, "mlp": {"type": "mlp", "d_ff": 48, "bias": True}}, final_norm=None)
KINDS["disentangled-log-buckets"]["block"]["attention"] = {
    "type": "disentangled", "n_heads": 4, "head_dim": 8, "bias": True, "pos_att_type": ["p2c", "c2p"],
    "share_att_key": True}


def loud(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every tensor re-drawn loudly (llmzoo.parity.loud_init_), in eval mode."""
    return loud_init_(model, seed).eval()


def batch(vocab: int, length: int = 20, pad: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sequences; the second is left-padded by `pad` slots."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, length), generator=g)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, :pad] = 0
    return ids, mask


def incremental(model: CausalLM, ids, mask, cache: StaticCache, prompt: int, chunk: int = 4):
    """Logits fed as: the prompt, one chunk of `chunk` tokens, then one token at a time."""
    prefix = torch.full((ids.shape[0],), prompt) if model.prefix_lm else None
    cuts = [0, prompt, prompt + chunk, *range(prompt + chunk + 1, ids.shape[1] + 1)]
    out = [model(ids[:, a:b], attention_mask=mask[:, :b], prefix_len=prefix, cache=cache)
           for a, b in zip(cuts, cuts[1:])]
    return torch.cat(out, dim=1)


def check_incremental(model: CausalLM, **cache_kw) -> float:
    ids, mask = batch(model.config.vocab_size)
    prompt = 9  # longer than every window above, so rolling buffers wrap during the prompt
    prefix = torch.full((2,), prompt) if model.prefix_lm else None
    with torch.no_grad():
        full = model(ids, attention_mask=mask, prefix_len=prefix)
        cache = StaticCache.for_model(model, 2, 24, **cache_kw)
        inc = incremental(model, ids, mask, cache, prompt)
    real = mask.bool()
    torch.testing.assert_close(inc[real], full[real], atol=1e-4, rtol=0)
    return (inc[real] - full[real]).abs().max().item()


@pytest.mark.parametrize("kind", list(KINDS))
def test_incremental_equals_full_forward(kind):
    check_incremental(loud(llmzoo.build(KINDS[kind])))


def one_per_family() -> list[str]:
    firsts: dict[str, str] = {}
    for name in llmzoo.list_models():
        firsts.setdefault(llmzoo.get_config(name).family, name)
    return sorted(firsts.values())


# Changes made to a scaled-down zoo entry (on the validated config) before a test builds it.
# DeepSeek-V3.2's indexer keeps every key of the 24-slot cache and of each test sequence: its top-k
# is otherwise ambiguous where index scores tie (see test_dsa_cache_selects_the_keys_the_full_forward_does).
TINY_CHANGES = {"deepseek-v3.2": {"block": {"attention": {"indexer": {"topk": 24}}}}}


def tiny_zoo(name: str) -> torch.nn.Module:
    """The zoo entry `name` scaled down (preset tiny), with its TINY_CHANGES, built."""
    config = llmzoo.scale_down(name, "tiny")
    if name in TINY_CHANGES:
        config = ModelConfig.model_validate(deep_merge(config.to_dict(), TINY_CHANGES[name]))
    return llmzoo.build(config)


@pytest.mark.parametrize("name", one_per_family())
def test_zoo_incremental_equals_full_forward(name):
    model = tiny_zoo(name)
    if not isinstance(model, CausalLM):
        pytest.skip(f"{name} builds a {type(model).__name__}, not a decoder-only CausalLM")
    check_incremental(loud(model))


def dsa(indexer: dict) -> ModelConfig:
    """Tiny DeepSeek-V3.2 (scaled down: top-8 of 20 keys) with `indexer` fields changed."""
    config = llmzoo.scale_down("deepseek-v3.2", "tiny")
    return ModelConfig.model_validate(deep_merge(config.to_dict(), {"block": {"attention": {"indexer": indexer}}}))


def boundary_gaps(model: CausalLM) -> list[torch.Tensor]:
    """Hooks that collect, per indexer call, each query's gap between its k-th and (k+1)-th allowed
    index score (queries with ≤ k allowed keys have no boundary and are left out)."""
    gaps: list[torch.Tensor] = []

    def hook(module, args, index):
        k = module.spec.topk
        if index.shape[-1] > k:
            top = index.topk(k + 1, dim=-1).values  # (B, T, k+1)
            real = top[..., k] > float("-inf")
            gaps.append((top[..., k - 1] - top[..., k])[real])

    for blk in model.blocks:
        blk.attn.indexer.register_forward_hook(hook)
    return gaps


@pytest.mark.parametrize("n_heads", [4, 32])
def test_dsa_cache_selects_the_keys_the_full_forward_does(n_heads):
    """Top-k below the sequence (8 of 20): a key whose every indexer head is ReLU'd to 0 scores exactly
    0.0, so with 4 heads (the tiny scale) keys tie at the top-k boundary, and torch.topk's choice among
    them depends on the row's length (20 keys in the full forward, 24 cache slots when decoding;
    transformers' DeepseekV32Indexer the same). With 32 heads no key is zeroed in every head, no
    boundary ties, and the cached decode selects the keys the full forward does."""
    model = loud(llmzoo.build(dsa({"n_heads": n_heads})))
    assert model.config.block.attention.indexer.topk == 8
    gaps = boundary_gaps(model)
    ids, mask = batch(model.config.vocab_size)
    with torch.no_grad():
        model(ids, attention_mask=mask)
    gap = torch.cat(gaps)
    assert gap.numel() > 0  # the selection really drops keys
    if n_heads == 4:
        assert (gap == 0).any()  # exact ties (both 0.0) at the boundary: the selection is ambiguous there
    else:
        assert gap.min() > 1e-4  # no tie, nor a near one float rounding could flip
        check_incremental(model)


@pytest.mark.parametrize("kind", ["mla", "mla-full-rank-q"])
def test_mla_absorbed_cache_equals_naive_cache(kind):
    model = loud(llmzoo.build(KINDS[kind]))
    ids, mask = batch(model.config.vocab_size)
    with torch.no_grad():
        absorbed = incremental(model, ids, mask, StaticCache.for_model(model, 2, 24), 9)
        naive = incremental(model, ids, mask, StaticCache.for_model(model, 2, 24, mla="naive"), 9)
    real = mask.bool()
    torch.testing.assert_close(absorbed[real], naive[real], atol=1e-4, rtol=0)
    # the absorbed cache holds the latent + rope key: far less than per-head keys and values
    a = StaticCache.for_model(model, 2, 24).nbytes()
    n = StaticCache.for_model(model, 2, 24, mla="naive").nbytes()
    spec = model.config.block.attention
    assert n / a == pytest.approx(
        spec.n_heads * (spec.qk_nope_head_dim + spec.qk_rope_head_dim + spec.v_head_dim)
        / (spec.kv_lora_rank + spec.qk_rope_head_dim)
    )


def test_prefix_lm_prompt_is_bidirectional():
    """A later prompt token changes an earlier prompt position's logits only under prefix-LM."""
    model = loud(llmzoo.build(KINDS["prefix-lm-deepnorm"]))
    ids, _ = batch(model.config.vocab_size, length=8)
    other = ids.clone()
    other[:, 6] = (other[:, 6] + 1) % model.config.vocab_size
    with torch.no_grad():
        p = torch.full((2,), 8)
        assert not torch.allclose(model(ids, prefix_len=p)[:, 2], model(other, prefix_len=p)[:, 2])
        torch.testing.assert_close(model(ids)[:, 2], model(other)[:, 2], atol=0, rtol=0)


@pytest.mark.parametrize("seq_len", [3, 24])  # below and above the sliding windows
@pytest.mark.parametrize("kind", list(KINDS))
def test_allocated_cache_matches_kv_cache_bytes(kind, seq_len):
    config = llmzoo.get_config(KINDS[kind])
    cache = StaticCache(config, batch=3, max_len=seq_len, dtype=torch.bfloat16)
    buffers = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in [*cache.k, *cache.v]}
    measured = sum(buffers.values())
    assert measured == cache.nbytes() == llmzoo.kv_cache_bytes(config, seq_len, 3, "bfloat16")


@pytest.mark.parametrize("name", one_per_family())
def test_zoo_allocated_cache_matches_kv_cache_bytes(name):
    config = llmzoo.scale_down(name, preset="tiny")
    if not isinstance(llmzoo.build(config, device="meta"), CausalLM):
        pytest.skip(f"{name} is not a decoder-only CausalLM")
    cache = StaticCache(config, batch=2, max_len=20, dtype=torch.float16)
    assert cache.nbytes() == llmzoo.kv_cache_bytes(config, 20, 2, "float16")


def test_rolling_buffer_is_bounded_by_the_window():
    config = llmzoo.get_config(KINDS["alternating-local"])
    cache = StaticCache(config, batch=1, max_len=40)
    assert [k.shape[2] for k in cache.k] == [40, 4, 40]


def test_cache_rejects_wrong_batch():
    model = llmzoo.build(KINDS["gqa-rope"])
    cache = StaticCache.for_model(model, 2, 8)
    with pytest.raises(ValueError, match="batch 3"):
        model(torch.zeros(3, 2, dtype=torch.long), cache=cache)


def test_kinds_are_distinct_configs():
    """Guard against the table above silently collapsing two kinds into the same config."""
    dumped = [llmzoo.get_config(copy.deepcopy(c)).model_dump_json(exclude={"name"}) for c in KINDS.values()]
    assert len(set(dumped)) == len(dumped)
