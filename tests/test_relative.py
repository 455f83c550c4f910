"""Relative attention kinds against independent references: Transformer-XL's relative attention
(relative_xl) against transformers' XLNetRelativeAttention (same core: r_w_bias, r_r_bias, rel_shift)
and against the paper's four-term formula computed naively here."""

import math

import pytest
import torch

import llmzoo
from llmzoo.attention import Context, RelativeXLAttention, RelativeXLSpec
from llmzoo.cache import StaticCache
from llmzoo.parity import loud_init_

D, H, DH, B, T = 32, 4, 8, 2, 7


def xl_module(seed: int = 0) -> RelativeXLAttention:
    torch.manual_seed(seed)
    attn = RelativeXLAttention(RelativeXLSpec(n_heads=H, head_dim=DH), D)
    with torch.no_grad():
        loud_init_(attn, seed)
    return attn.eval()


def plain_context(B: int, T: int) -> Context:
    ar = torch.arange(T)
    return Context(positions=ar.expand(B, T), q_index=ar, k_index=ar)


def test_relative_xl_matches_xlnet_relative_attention():
    transformers = pytest.importorskip("transformers")
    from transformers.models.xlnet.modeling_xlnet import XLNetModel, XLNetRelativeAttention

    config = transformers.XLNetConfig(vocab_size=11, d_model=D, n_layer=1, n_head=H, d_inner=64,
                                      attn_type="uni", dropout=0.0)
    ref = XLNetRelativeAttention(config)
    with torch.no_grad():
        loud_init_(ref, seed=3)
    ref.layer_norm = torch.nn.Identity()  # compare the attention itself: output_h = x + attn(x)
    ref.eval()
    ours = RelativeXLAttention(RelativeXLSpec(n_heads=H, head_dim=DH), D).eval()
    with torch.no_grad():  # XLNet keeps (d_model, heads, head_dim) einsum weights
        for name in ("q", "k", "v", "r"):
            getattr(ours, name).weight.copy_(getattr(ref, name).reshape(D, H * DH).T)
        ours.o.weight.copy_(ref.o.reshape(D, H * DH))
        ours.content_u.copy_(ref.r_w_bias)
        ours.position_v.copy_(ref.r_r_bias)

    x = torch.randn(B, T, D)
    pos_emb = XLNetModel(config).relative_positional_encoding(T, T, bsz=B)  # (T + 1, B, D): klen … 0
    causal = torch.ones(T, T).triu(1)[:, :, None, None]  # (i, j, b, n): 1 = masked
    with torch.no_grad():
        want = ref(x.transpose(0, 1), None, causal, None, pos_emb, None)[0].transpose(0, 1) - x
        got = ours(x, plain_context(B, T))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_relative_xl_is_the_papers_four_term_formula():
    attn = xl_module(seed=1)
    x = torch.randn(1, T, D, dtype=torch.float64)
    with torch.no_grad():
        got = attn(x.float(), plain_context(1, T)).double()
    Wq, Wk, Wv, Wr, Wo = (getattr(attn, n).weight.double() for n in "q k v r o".split())
    u, v = attn.content_u.double(), attn.position_v.double()

    def R(d):  # Transformer-XL's sinusoid encoding of distance d, d_model wide: [sin, cos]
        f = [10000 ** (-2 * m / D) for m in range(D // 2)]
        return torch.tensor([math.sin(d * w) for w in f] + [math.cos(d * w) for w in f], dtype=torch.float64)

    e = x[0]
    out = torch.zeros(T, H * DH, dtype=torch.float64)
    for h in range(H):
        sl = slice(h * DH, (h + 1) * DH)
        for i in range(T):
            scores = []
            for j in range(i + 1):
                qi, kj, rij = Wq[sl] @ e[i], Wk[sl] @ e[j], Wr[sl] @ R(i - j)
                a, b, c, d = qi @ kj, qi @ rij, u[h] @ kj, v[h] @ rij
                scores.append((a + b + c + d) / math.sqrt(DH))
            p = torch.softmax(torch.stack(scores), 0)
            out[i, sl] = sum(p[j] * (Wv[sl] @ e[j]) for j in range(i + 1))
    torch.testing.assert_close(got[0], out @ Wo.T, atol=1e-5, rtol=1e-5)


def test_relative_xl_counts_w_r_and_biases():
    spec = RelativeXLSpec(n_heads=H, head_dim=DH)
    attn = RelativeXLAttention(spec, D)
    assert spec.n_params(D) == sum(p.numel() for p in attn.parameters()) == 5 * D * H * DH + 2 * H * DH


def test_relative_xl_cached_decode_equals_full_forward_with_left_padding():
    model = llmzoo.build("gopher-280b", scale="tiny").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding: positions count real tokens, so row 1 is row-0-like shifted
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = StaticCache.for_model(model, 2, 12)
        steps = [model(ids[:, :5], attention_mask=mask[:, :5], cache=cache)]
        for t in range(5, 9):
            steps.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache))
    got = torch.cat(steps, dim=1)
    torch.testing.assert_close(got[0], full[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1, 3:], full[1, 3:], atol=1e-4, rtol=1e-4)
