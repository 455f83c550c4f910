"""Relative attention kinds against independent references: Transformer-XL's relative attention
(relative_xl) against transformers' XLNetRelativeAttention (same core: r_w_bias, r_r_bias, rel_shift)
and against the paper's four-term formula computed naively here."""

import math
import re

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


# ------------------------------------------------------------------- DeBERTa disentangled

from llmzoo.attention import DisentangledAttention, DisentangledSpec  # noqa: E402
from llmzoo.positions import RelativeEmbedding, RelativeEmbeddingSpec, log_bucket  # noqa: E402

DT = 24  # longer than the buckets' exact range (±4) and than max_relative_positions (20): both clamp


def deberta_pair(terms: list[str], share: bool, buckets: int | None, max_rel: int, seed: int = 0):
    """transformers' DebertaV2Encoder (one layer, loud weights: its shared relative table and the
    layer's DebertaV2Attention) and our RelativeEmbedding + DisentangledAttention with mapped weights."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Encoder

    config = transformers.DebertaV2Config(
        hidden_size=D, num_attention_heads=H, intermediate_size=48, num_hidden_layers=1, relative_attention=True,
        pos_att_type=terms, share_att_key=share, position_buckets=buckets or -1, max_relative_positions=max_rel,
        norm_rel_ebd="layer_norm", layer_norm_eps=1e-7, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=64)
    enc = DebertaV2Encoder(config)
    with torch.no_grad():
        loud_init_(enc, seed)
    enc.eval()
    ref = enc.layer[0].attention
    ref.output.LayerNorm = torch.nn.Identity()  # compare the attention itself: dense(attn(x)) + x
    pos = RelativeEmbedding(RelativeEmbeddingSpec(
        position_buckets=buckets, max_relative_positions=max_rel, norm={"type": "layernorm", "eps": 1e-7}),
        d_model=D, n_heads=H, rotary_dim=0)
    ours = DisentangledAttention(DisentangledSpec(n_heads=H, head_dim=DH, pos_att_type=terms, share_att_key=share), D)
    names = {"q": "query_proj", "k": "key_proj", "v": "value_proj", "pos_k": "pos_key_proj", "pos_q": "pos_query_proj"}
    with torch.no_grad():
        pos.weight.copy_(enc.rel_embeddings.weight)
        pos.norm.load_state_dict(enc.LayerNorm.state_dict())
        for name, hf_name in names.items():
            if hasattr(ours, name):
                getattr(ours, name).load_state_dict(getattr(ref.self, hf_name).state_dict())
        ours.o.load_state_dict(ref.output.dense.state_dict())
    assert not any(hasattr(ref.self, hf) != hasattr(ours, n) for n, hf in names.items())  # same projections
    return enc, ref, pos, ours.eval()


@pytest.mark.parametrize("terms", [["c2p", "p2c"], ["p2c", "c2p"], ["c2p"], ["p2c"]], ids="+".join)
@pytest.mark.parametrize("share", [True, False], ids=["share_att_key", "own_pos_proj"])
@pytest.mark.parametrize("buckets", [8, None], ids=["log_buckets", "clipped"])
def test_disentangled_matches_deberta_v2_attention(terms, share, buckets):
    """Bidirectional with right padding (DeBERTa's encoder) and causal: max |Δ| ≤ 1e-5 on real tokens."""
    max_rel = 20 if buckets else 6  # without buckets: distances clipped at ±6, inside the 24-token sequence
    enc, ref, pos, ours = deberta_pair(terms, share, buckets, max_rel)
    torch.manual_seed(0)
    x = torch.randn(B, DT, D)
    mask = torch.ones(B, DT, dtype=torch.long)
    mask[1, -5:] = 0
    ar = torch.arange(DT)
    with torch.no_grad():
        table = enc.get_rel_embedding()
        want = ref(x, enc.get_attention_mask(mask), rel_embeddings=table)[0] - x
        ctx = Context(positions=ar.expand(B, DT), q_index=ar, k_index=ar, key_padding=mask.bool(), causal=False,
                      relative=pos.relative)
        got = ours(x, ctx)
        causal = torch.ones(DT, DT).tril()[None, None].expand(B, 1, DT, DT)
        want_causal = ref(x, causal, rel_embeddings=table)[0] - x
        got_causal = ours(x, Context(positions=ar.expand(B, DT), q_index=ar, k_index=ar, relative=pos.relative))
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1, :-5], want[1, :-5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_causal, want_causal, atol=1e-5, rtol=1e-5)


def test_log_bucket_is_transformers_make_log_bucket_position():
    pytest.importorskip("transformers")
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    rel = torch.arange(-1500, 1501)
    for buckets, max_pos in [(256, 512), (8, 20), (2, 5), (3, 40)]:
        want = make_log_bucket_position(rel, buckets, max_pos).long()
        assert torch.equal(log_bucket(rel, buckets, max_pos), want), (buckets, max_pos)
    # DeBERTa-v3 (256 buckets to 512): exact to ±128, then log-spaced; 1500 tokens apart lands past the table
    got = log_bucket(torch.tensor([128, 129, 511, 1500]), 256, 512)
    assert got[0] == 128 and 128 < got[1] < got[2] <= 255 < got[3]


def test_disentangled_counts_its_projections():
    for terms, share in [(["c2p", "p2c"], True), (["c2p", "p2c"], False), (["p2c"], False)]:
        spec = DisentangledSpec(n_heads=H, head_dim=DH, pos_att_type=terms, share_att_key=share)
        attn = DisentangledAttention(spec, D)
        extra = 0 if share else len(terms)
        assert spec.n_params(D) == sum(p.numel() for p in attn.parameters()) == (4 + extra) * (D * D + D)
        assert set(attn.state_dict()) == {f"{n}.{w}" for n in ["q", "k", "v", "o"] + (
            [] if share else [{"c2p": "pos_k", "p2c": "pos_q"}[t] for t in terms]) for w in ("weight", "bias")}
    spec = RelativeEmbeddingSpec(position_buckets=8, max_relative_positions=20, norm={"type": "layernorm"})
    assert spec.n_params(D, H) == sum(p.numel() for p in RelativeEmbedding(spec, d_model=D, n_heads=H,
                                                                           rotary_dim=0).parameters()) == 16 * D + 2 * D


def test_disentangled_and_relative_table_come_together():
    from llmzoo.errors import ConfigError
    from test_cache import KINDS

    cfg = KINDS["disentangled-log-buckets"]
    for position, attention, words in [
        ({"type": "none"}, None, "'disentangled' attention (layer 0) needs a relative embedding table"),
        (None, {"type": "mha", "n_heads": 4, "head_dim": 8}, "'mha' attention (layer 0) has no use for"),
    ]:
        bad = {**cfg, "position": position or cfg["position"],
               "block": {**cfg["block"], "attention": attention or cfg["block"]["attention"]}}
        with pytest.raises(ConfigError, match=re.escape(words)):
            llmzoo.get_config(bad)
    with pytest.raises(ConfigError, match="max_relative_positions: 5 must exceed position_buckets // 2 \\+ 1 = 5"):
        llmzoo.get_config({**cfg, "position": {**cfg["position"], "max_relative_positions": 5}})
    with pytest.raises(ConfigError, match="pos_att_type"):
        llmzoo.get_config({**cfg, "block": {**cfg["block"], "attention": {
            **cfg["block"]["attention"], "pos_att_type": ["c2p", "c2p"]}}})
