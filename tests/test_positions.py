"""Position pieces against their papers: ALiBi slopes and biases (Press et al., arXiv:2108.12409),
and the locally banded attention of GPT-3's sparse layers / GPT-Neo's local layers.

Expected values are written here from the paper's formula, independently of llmzoo's code."""

from __future__ import annotations

import math

import pytest
import torch

import llmzoo
from llmzoo.attention import Context, attention_mask
from llmzoo.positions import ALiBi, AlibiSpec, alibi_slopes

# ------------------------------------------------------------------------------------ ALiBi


def paper_slopes(n: int) -> list[float]:
    """The paper's rule (§3 and its reference code): for n a power of two, the geometric sequence
    that starts at 2^(-8/n) with that same ratio; otherwise the 2^floor(log2 n) slopes followed by
    every other slope of the next power of two."""
    if math.log2(n).is_integer():
        start = 2.0 ** (-8.0 / n)
        return [start * start**i for i in range(n)]
    closest = 2 ** math.floor(math.log2(n))
    return paper_slopes(closest) + paper_slopes(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("n_heads", [8, 12, 112])
def test_alibi_slopes_match_paper(n_heads):
    got = alibi_slopes(n_heads)
    want = torch.tensor(paper_slopes(n_heads), dtype=torch.float64)
    assert got.shape == (n_heads,)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


def test_alibi_slopes_spot_values():
    # 8 heads: 1/2, 1/4, ..., 1/256 (the paper's example)
    assert alibi_slopes(8).tolist() == [2.0**-k for k in range(1, 9)]
    # 12 heads: the 8-head slopes, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 from the 16-head sequence
    twelve = [2.0**-k for k in range(1, 9)] + [2.0 ** -(k + 0.5) for k in range(4)]
    torch.testing.assert_close(alibi_slopes(12).double(), torch.tensor(twelve, dtype=torch.float64), rtol=1e-7, atol=0)
    # 112 heads (BLOOM-176B): 64 slopes 2^(-k/8), then 2^(-k/16) for the first 48 odd k
    s = alibi_slopes(112).double()
    assert s[0].item() == pytest.approx(2 ** (-1 / 8)) and s[63].item() == pytest.approx(2.0**-8)
    assert s[64].item() == pytest.approx(2 ** (-1 / 16)) and s[111].item() == pytest.approx(2 ** (-95 / 16))


@pytest.mark.parametrize("n_heads", [8, 12, 112])
def test_alibi_slopes_match_bloom_and_mpt(n_heads):
    """The two transformers implementations (BLOOM's and MPT's) agree with ours to float32 rounding."""
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    mpt = pytest.importorskip("transformers.models.mpt.modeling_mpt")
    ours = alibi_slopes(n_heads)
    torch.testing.assert_close(ours, bloom._get_alibi_slopes(n_heads, torch.device("cpu")), rtol=1e-6, atol=0)
    # MPT builds slope * (j - (L-1)) for the last key column j; the column before it is -slope
    mpt_bias = mpt.build_mpt_alibi_tensor(n_heads, 4)  # (H, 1, 4)
    torch.testing.assert_close(ours, -mpt_bias[:, 0, -2], rtol=1e-6, atol=0)


def test_alibi_bias_is_slope_times_distance():
    n_heads, T = 12, 7
    module = ALiBi(AlibiSpec(), d_model=48, n_heads=n_heads, rotary_dim=0)
    pos = torch.arange(T)[None]
    bias = module.bias(pos, pos)  # (1, H, T, T)
    slopes = paper_slopes(n_heads)
    for h in (0, 7, 11):
        for i in range(T):
            for j in range(i + 1):
                assert bias[0, h, i, j].item() == pytest.approx(slopes[h] * (j - i), rel=1e-6, abs=1e-7)


# ------------------------------------------------------------------------------ banded attention


def banded(T: int, S: int, window: int | None, offset: int = 0) -> torch.Tensor:
    """Query slot offset+i sees key slot j iff j ≤ offset+i and offset+i - j < window (itself included):
    GPT-Neo's local mask, tril(1) xor tril(1, -window), written out element by element."""
    m = torch.zeros(T, S, dtype=torch.bool)
    for i in range(T):
        for j in range(S):
            q = offset + i
            m[i, j] = j <= q and (window is None or q - j < window)
    return m


@pytest.mark.parametrize("window", [1, 3, 8, None])
def test_banded_mask(window):
    T = 10
    got = attention_mask(torch.arange(T), torch.arange(T), window=window)
    assert got.shape == (1, 1, T, T)
    assert torch.equal(got[0, 0], banded(T, T, window))
    if window is not None:  # the same mask as GPT-Neo's buffer construction
        ones = torch.tril(torch.ones(T, T, dtype=torch.bool))
        assert torch.equal(got[0, 0], torch.bitwise_xor(ones, torch.tril(ones, -window)))


def test_banded_mask_with_cache_offset_and_padding():
    T, offset, window = 3, 5, 4
    S = offset + T
    keep = torch.ones(2, S, dtype=torch.bool)
    keep[1, :2] = False  # left padding in the second row
    ctx = Context(
        positions=torch.zeros(2, T, dtype=torch.long),
        q_index=torch.arange(offset, S),
        k_index=torch.arange(S),
        key_padding=keep,
    )
    mask = ctx.mask(window)
    assert mask.shape == (2, 1, T, S)
    want = banded(T, S, window, offset)
    assert torch.equal(mask[0, 0], want)
    assert torch.equal(mask[1, 0], want & keep[1][None])
    assert ctx.mask(None)[0, 0].sum() > mask[0, 0].sum()  # the dense layer sees more


def _one_layer(window: int | None) -> llmzoo.CausalLM:
    attention = {"type": "mha", "n_heads": 2, "head_dim": 8, "qkv_bias": True, "o_bias": True, "window": window}
    cfg = {
        "name": "banded-probe",
        "family": "test",
        "vocab_size": 32,
        "d_model": 16,
        "n_layers": 1,
        "max_seq_len": 32,
        "position": {"type": "learned", "max_positions": 32},
        "block": {
            "placement": "pre",
            "norm": {"type": "layernorm", "eps": 1e-5},
            "attention": attention,
            "mlp": {"type": "mlp", "d_ff": 32, "activation": "gelu_tanh", "bias": True},
        },
        "final_norm": {"type": "layernorm", "eps": 1e-5},
        "head": {"tied": True},
    }
    return llmzoo.build(cfg, seed=0).eval()


@torch.no_grad()
def test_banded_layer_ignores_tokens_outside_the_band():
    """One banded layer: the logits at slot t depend on tokens t-window+1 … t only."""
    window, T, t = 4, 16, 12
    ids = torch.randint(0, 32, (1, T), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, t - window] = (ids[0, t - window] + 1) % 32  # just outside the band of slot t
    inside = ids.clone()
    inside[0, t - window + 1] = (ids[0, t - window + 1] + 1) % 32  # the oldest token inside it
    local, dense = _one_layer(window), _one_layer(None)
    dense.load_state_dict(local.state_dict())
    torch.testing.assert_close(local(changed)[0, t], local(ids)[0, t], rtol=0, atol=0)
    assert not torch.allclose(local(inside)[0, t], local(ids)[0, t])
    assert not torch.allclose(dense(changed)[0, t], dense(ids)[0, t])


@pytest.mark.parametrize("n_heads", [6, 8])
def test_falcon_alibi_table_matches_transformers(n_heads):
    """Falcon's ALiBi (its alibi: true checkpoints): bf16(bf16(m_h) · j) over key positions, added
    before the 1/sqrt(head_dim) scaling. Our bfloat16 table must equal transformers' bit for bit."""
    falcon = pytest.importorskip("transformers.models.falcon.modeling_falcon")
    head_dim, T = 8, 300  # positions past 256 are themselves rounded by bfloat16
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, T - 7 :] = 0
    want = falcon.build_alibi_tensor(mask, n_heads, torch.float32).view(2, n_heads, 1, T) / math.sqrt(head_dim)
    module = ALiBi(AlibiSpec(scale=head_dim**-0.5, table_dtype="bfloat16"), d_model=n_heads * head_dim,
                   n_heads=n_heads, rotary_dim=0)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    got = module.bias(pos[:, :5], pos)  # (B, H, 5, T): the same row for every query
    keep = mask.bool()[:, None, None, :].expand_as(got)
    torch.testing.assert_close(got[keep], want.expand_as(got)[keep], rtol=1e-6, atol=0)
    float_table = ALiBi(AlibiSpec(scale=head_dim**-0.5), d_model=n_heads * head_dim, n_heads=n_heads, rotary_dim=0)
    assert not torch.allclose(float_table.bias(pos[:, -1:], pos)[0, :, 0], got[0, :, 0] - got[0, :, 0, -1:], atol=1e-4)
