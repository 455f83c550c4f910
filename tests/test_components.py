"""Each component against its paper's formula (or, for RoPE scalings, transformers' reference)."""

import math

import pytest
import torch
import torch.nn.functional as F

import llmzoo
from llmzoo.attention import attention_mask
from llmzoo.block import Block
from llmzoo.config import BlockSpec
from llmzoo.mlp import GLU, GLUSpec
from llmzoo.norms import RMSNorm, RMSNormSpec
from llmzoo.positions import (
    RoPE,
    RopeSpec,
    alibi_slopes,
    apply_rope,
    relative_bucket,
    rope_inv_freq,
    sinusoid_table,
)

torch.manual_seed(0)


def rope_cos_sin(dim: int, positions: torch.Tensor, layout: str):
    rope = RoPE(RopeSpec(theta=10000.0, layout=layout), d_model=dim, n_heads=1, rotary_dim=dim)
    return rope.rotary(positions)


@pytest.mark.parametrize("layout", ["halves", "interleaved"])
def test_rope_scores_depend_only_on_relative_position(layout):
    """<R(m) q, R(n) k> = <R(m+s) q, R(n+s) k> (Su et al., eq. 16)."""
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m: int, n: int) -> torch.Tensor:
        cm, sm = rope_cos_sin(16, torch.tensor([[m]]), layout)
        cn, sn = rope_cos_sin(16, torch.tensor([[n]]), layout)
        return (apply_rope(q, cm, sm, layout) * apply_rope(k, cn, sn, layout)).sum()

    assert torch.allclose(score(7, 3), score(107, 103), atol=1e-4)
    assert torch.allclose(score(0, 0), (q * k).sum(), atol=1e-6)
    assert not torch.allclose(score(7, 3), score(3, 7), atol=1e-3)


@pytest.mark.parametrize("layout", ["halves", "interleaved"])
def test_rope_rotates_each_pair_by_its_angle(layout):
    """Pair i turns by p·theta^(-2i/d): interleaved pairs (2i, 2i+1), halves pairs (i, i + d/2)."""
    d, p = 8, 5
    x = torch.randn(1, 1, 1, d)
    cos, sin = rope_cos_sin(d, torch.tensor([[p]]), layout)
    y = apply_rope(x, cos, sin, layout)
    for i in range(d // 2):
        a = p * 10000.0 ** (-2 * i / d)
        j, k = (2 * i, 2 * i + 1) if layout == "interleaved" else (i, i + d // 2)
        x1, x2 = x[..., j], x[..., k]
        assert torch.allclose(y[..., j], x1 * math.cos(a) - x2 * math.sin(a), atol=1e-5)
        assert torch.allclose(y[..., k], x2 * math.cos(a) + x1 * math.sin(a), atol=1e-5)


def test_partial_rotary_leaves_the_rest_untouched():
    x = torch.randn(1, 2, 3, 16)
    cos, sin = rope_cos_sin(4, torch.arange(3)[None], "halves")
    y = apply_rope(x, cos, sin)
    assert torch.equal(y[..., 4:], x[..., 4:]) and not torch.allclose(y[..., 1:, :4], x[..., 1:, :4])


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "linear", "factor": 4.0},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64},
        {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 64, "beta_fast": 32.0,
         "beta_slow": 1.0, "mscale": 0.707, "mscale_all_dim": 0.707},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    ],
)
def test_rope_scaling_matches_transformers(scaling):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    ref_cfg = LlamaConfig(hidden_size=64, num_attention_heads=2, max_position_embeddings=256,
                          rope_parameters={"rope_theta": 10000.0, **scaling})
    ref_inv, ref_factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](ref_cfg, "cpu")
    ours = {"type": scaling["rope_type"], **{k: v for k, v in scaling.items() if k != "rope_type"}}
    if "original_max_position_embeddings" in ours:
        ours["original_max_positions"] = ours.pop("original_max_position_embeddings")
    inv, factor = rope_inv_freq(RopeSpec(theta=10000.0, scaling=ours), 32)
    torch.testing.assert_close(inv, ref_inv.float(), atol=0, rtol=1e-6)
    assert factor == pytest.approx(ref_factor)


def test_dynamic_ntk_grows_the_base_only_past_the_trained_length():
    spec = RopeSpec(theta=10000.0, scaling={"type": "dynamic", "factor": 2.0, "original_max_positions": 16})
    rope = RoPE(spec, d_model=8, n_heads=1, rotary_dim=8)
    plain = RoPE(RopeSpec(theta=10000.0), d_model=8, n_heads=1, rotary_dim=8)
    short = torch.arange(16)[None]
    assert torch.allclose(rope.rotary(short)[0], plain.rotary(short)[0])
    long = torch.arange(32)[None]
    base = 10000.0 * (2.0 * 32 / 16 - 1) ** (8 / 6)
    angle = 31 * base ** (-2 / 8)
    assert rope.rotary(long)[0][0, 31, 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_fp16_rope_table_rounds_like_a_half_precision_table():
    pos = torch.arange(2048)[None]
    half = RoPE(RopeSpec(table_dtype="float16"), d_model=64, n_heads=1, rotary_dim=64).rotary(pos)[0]
    full = RoPE(RopeSpec(), d_model=64, n_heads=1, rotary_dim=64).rotary(pos)[0]
    inv = (1.0 / 10000 ** (torch.arange(0, 64, 2).float() / 64)).half()
    expected = (pos.half()[..., None] * inv).cos()
    torch.testing.assert_close(half[..., :32], expected, atol=1e-3, rtol=0)
    assert (half.float() - full).abs().max() > 0.5  # the rounded angles drift far at large positions


def test_alibi_slopes_follow_press_et_al():
    """m_h = 2^(-8h/n); n not a power of two: 2^k slopes, then odd-indexed slopes of 2^(k+1) heads."""
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(h + 1) for h in range(8)]))
    twelve = [2.0 ** -(h + 1) for h in range(8)] + [2.0 ** -(0.5 + h) for h in range(4)]
    assert torch.allclose(alibi_slopes(12), torch.tensor(twelve))
    k = 64
    expected = [2 ** (-8 * (h + 1) / k) for h in range(k)] + [2 ** (-8 * (2 * h + 1) / (2 * k)) for h in range(48)]
    assert torch.allclose(alibi_slopes(112), torch.tensor(expected))


def test_rmsnorm_formula_and_unit_offset():
    x = torch.randn(3, 8)
    for offset in (False, True):
        norm = RMSNorm(RMSNormSpec(eps=1e-6, unit_offset=offset), 8)
        with torch.no_grad():
            norm.weight.copy_(torch.randn(8))
        g = norm.weight + (1 if offset else 0)
        expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * g
        torch.testing.assert_close(norm(x), expected)


def _block(placement: str, alpha: float = 1.0, parallel: str = "none") -> Block:
    spec = BlockSpec(placement=placement, parallel=parallel, alpha=alpha, norm={"type": "layernorm"},
                     attention={"type": "mha", "n_heads": 2, "head_dim": 8}, mlp={"type": "mlp", "d_ff": 32})
    block = Block(spec, 16, 0)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return block


def test_deepnorm_residual_adds_alpha_times_normed_input():
    """GLM-130B layer: a = LN1(x); h = α·a + Attn(a); m = LN2(h); out = α·m + MLP(m)."""
    alpha = math.sqrt(2 * 70)
    block = _block("deepnorm", alpha)
    ctx = llmzoo.build(_toy(), device="cpu").context(torch.zeros(1, 5, dtype=torch.long))
    x = torch.randn(1, 5, 16)
    a = block.attn_norm(x)
    m = block.mlp_norm(alpha * a + block.attn(a, ctx))
    torch.testing.assert_close(block(x, ctx), alpha * m + block.mlp(m))


@pytest.mark.parametrize("placement, parallel", [("pre", "none"), ("post", "none"), ("sandwich", "none"),
                                                 ("pre", "shared_norm"), ("pre", "two_norms")])
def test_block_wirings(placement, parallel):
    block = _block(placement, 1.0, parallel)
    ctx = llmzoo.build(_toy(), device="cpu").context(torch.zeros(1, 5, dtype=torch.long))
    x = torch.randn(1, 5, 16)
    A, M = (lambda h: block.attn(h, ctx)), block.mlp
    if parallel == "shared_norm":
        expected = x + A(block.attn_norm(x)) + M(block.attn_norm(x))
    elif parallel == "two_norms":
        expected = x + A(block.attn_norm(x)) + M(block.mlp_norm(x))
    elif placement == "pre":
        h = x + A(block.attn_norm(x))
        expected = h + M(block.mlp_norm(h))
    elif placement == "post":
        h = block.attn_norm(x + A(x))
        expected = block.mlp_norm(h + M(h))
    else:
        h = x + block.attn_out_norm(A(block.attn_norm(x)))
        expected = h + block.mlp_out_norm(M(block.mlp_norm(h)))
    torch.testing.assert_close(block(x, ctx), expected)


def _toy() -> dict:
    return {"name": "toy", "family": "toy", "vocab_size": 8, "d_model": 16, "n_layers": 1, "max_seq_len": 16,
            "position": {"type": "rope"}, "final_norm": None, "head": {"tied": True},
            "block": {"norm": {"type": "layernorm"}, "attention": {"type": "mha", "n_heads": 2, "head_dim": 8},
                      "mlp": {"type": "mlp", "d_ff": 32}}}


def test_sliding_window_mask():
    m = attention_mask(torch.arange(6), torch.arange(6), window=3)[0, 0]
    for i in range(6):
        for j in range(6):
            assert bool(m[i, j]) == (i - 2 <= j <= i), (i, j)


def test_prefix_lm_mask_context_is_bidirectional_generation_is_causal():
    prefix = torch.tensor([4, 2])
    m = attention_mask(torch.arange(7), torch.arange(7), prefix_len=prefix)
    assert m[0, 0, 0, 3] and m[0, 0, 1, 2]  # a context token sees later context tokens
    assert not m[0, 0, 2, 4] and not m[0, 0, 3, 5]  # ... never generated ones
    assert m[0, 0, 5, 4] and not m[0, 0, 5, 6]  # generated tokens are causal
    assert not m[1, 0, 0, 2] and m[1, 0, 0, 1]  # each sequence has its own prefix


def test_padding_rows_stay_finite():
    pad = torch.tensor([[0, 0, 1, 1]]).bool()
    m = attention_mask(torch.arange(4), torch.arange(4), key_padding=pad)[0, 0]
    assert m[0].all() and not m[2, :2].any() and m[3, 2:].all()


@pytest.mark.parametrize("act, fn", [("silu", F.silu), ("gelu", F.gelu),
                                     ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"))])
def test_glu_variants(act, fn):
    """FFN_GLU(x) = (act(x W) ⊙ x V) W2 (Shazeer, arXiv:2002.05202)."""
    glu = GLU(GLUSpec(d_ff=12, activation=act), 8)
    x = torch.randn(2, 8)
    expected = (fn(x @ glu.gate.weight.T) * (x @ glu.up.weight.T)) @ glu.down.weight.T
    torch.testing.assert_close(glu(x), expected)


def test_sinusoidal_table_matches_vaswani():
    pos = torch.arange(5)[None]
    t = sinusoid_table(pos, 6, 10000.0, "interleaved")[0]
    for p in range(5):
        for i in range(3):
            assert t[p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 6)), abs=1e-6)
            assert t[p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 6)), abs=1e-6)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_buckets_match_t5(bidirectional):
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 300)[None]
    ref = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=32, max_distance=128)
    assert torch.equal(relative_bucket(rel, 32, 128, bidirectional), ref)
