"""Multi-head Latent Attention: the absorbed path equals the naive one, and its cache is the latent."""

from __future__ import annotations

import pytest
import torch

import llmzoo
from llmzoo.attention import Context, MLAttention
from llmzoo.cache import StaticCache

from test_cache import loud  # noqa: E402  (tests/ is on sys.path under pytest)


def mla_config(q_lora_rank: int | None, n_layers: int = 2, yarn: bool = True) -> dict:
    scaling = {"type": "yarn", "factor": 4.0, "original_max_positions": 16, "mscale": 0.707,
               "mscale_all_dim": 0.707}
    return {
        "name": "tiny-mla", "family": "test", "vocab_size": 61, "d_model": 32, "n_layers": n_layers,
        "max_seq_len": 64,
        "position": {"type": "rope", "theta": 10000.0, "layout": "interleaved",
                     "scaling": scaling if yarn else None},
        "block": {
            "norm": {"type": "rmsnorm", "eps": 1e-6},
            "attention": {"type": "mla", "n_heads": 4, "q_lora_rank": q_lora_rank, "kv_lora_rank": 12,
                          "qk_nope_head_dim": 8, "qk_rope_head_dim": 6, "v_head_dim": 10, "bias": True},
            "mlp": {"type": "glu", "d_ff": 48},
        },
        "final_norm": {"type": "rmsnorm", "eps": 1e-6},
        "head": {"tied": False},
    }


IDS = torch.tensor([[3, 17, 42, 8, 55, 1, 9, 30, 12, 7], [5, 44, 2, 19, 60, 33, 0, 0, 0, 0]])
MASK = (torch.arange(10)[None] < torch.tensor([[10], [6]])).long()


@pytest.mark.parametrize("q_lora_rank", [16, None], ids=["q_lora", "q_full"])
def test_absorbed_equals_naive_per_layer(q_lora_rank):
    model = loud(llmzoo.build(mla_config(q_lora_rank)))
    ctx = model.context(IDS, MASK)
    x = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(1))
    for block in model.blocks:
        assert isinstance(block.attn, MLAttention)
        naive, absorbed = block.attn(x, ctx), block.attn.absorbed(x, ctx)
        real = MASK.bool()
        assert (naive - absorbed)[real].abs().max() <= 1e-5
        assert naive[real].abs().max() > 0.1  # not vacuous


@pytest.mark.parametrize("q_lora_rank", [16, None], ids=["q_lora", "q_full"])
def test_absorbed_cache_holds_latent_only(q_lora_rank):
    cfg = mla_config(q_lora_rank, n_layers=3)
    model = loud(llmzoo.build(cfg))
    full = model(IDS, MASK)
    cache = StaticCache.for_model(model, batch=2, max_len=10, mla="absorbed")
    prefill = model(IDS[:, :7], MASK[:, :7], cache=cache)
    step = model(IDS[:, 7:], MASK, cache=cache)  # decode the last 3 tokens against the latent cache
    got = torch.cat([prefill, step], dim=1)
    real = MASK.bool()
    assert (got - full)[real].abs().max() <= 1e-5
    a = cfg["block"]["attention"]
    per_token = sum(k[0, :, 0].numel() + v[0, :, 0].numel() for k, v in zip(cache.k, cache.v))
    assert per_token == (a["kv_lora_rank"] + a["qk_rope_head_dim"]) * cfg["n_layers"]
    assert per_token == sum(b.attention.kv_cache_dims for b in llmzoo.get_config(cfg).blocks)
    naive = StaticCache.for_model(model, batch=2, max_len=10, mla="naive")
    naive_per_token = sum(k[0, :, 0].numel() + v[0, :, 0].numel() for k, v in zip(naive.k, naive.v))
    assert naive_per_token == 4 * (8 + 6 + 10) * 3  # H × (nope + rope + v) × layers: what MLA saves


def test_absorbed_accepts_given_latents():
    """A decode step as a generation helper runs it: latents of earlier tokens passed in explicitly."""
    model = loud(llmzoo.build(mla_config(16)))
    attn = model.blocks[0].attn
    x = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(2))
    ids = torch.zeros(1, 6, dtype=torch.long)
    naive = attn(x, model.context(ids))
    past = attn.compress(x[:, :5], model.context(ids[:, :5]))
    pos = torch.tensor([[5]])
    ctx = Context(positions=pos, q_index=torch.tensor([5]), k_index=torch.arange(6),
                  rope=model.positions.rotary(pos), rope_layout=model.rope_layout)
    now = attn.compress(x[:, 5:], ctx)
    latent = tuple(torch.cat([p, n], dim=2) for p, n in zip(past, now))
    last = attn.absorbed(x[:, 5:], ctx, latent)
    assert (last - naive[:, 5:]).abs().max() <= 1e-5
