"""GLM-130B and ChatGLM-6B against an independent reference of the official forward (tests/reference_glm.py)."""

from __future__ import annotations

import json

import pytest
import torch

import llmzoo
from llmzoo.hf import glm
from llmzoo.positions import RoPE, RopeSpec

from reference_glm import (
    chatglm_masks_and_position_ids,
    glm130b_masks_and_position_ids,
    glm_forward,
    random_official_state,
    rotary_table,
)

TOL = 1e-4


def tiny_state(cfg, seed=0):
    a = cfg.block.attention
    state = random_official_state(vocab=cfg.vocab_size, hidden=cfg.d_model, num_layers=cfg.n_layers,
                                  num_heads=a.n_heads, inner=cfg.block.mlp.d_ff, seed=seed)
    # SAT 0.2.12 keeps the rotary buffer in the mixin: replicated on every rank, never loaded
    state["mixins.rotary-embedding.rotary_emb.inv_freq"] = state["transformer.layers.0.attention.rotary_emb.inv_freq"]
    return state


# ------------------------------------------------------------------------------ size


def test_glm130b_builds_on_meta_with_the_official_count():
    model = llmzoo.build("glm-130b", device="meta")
    numel = sum(p.numel() for p in model.parameters())
    cfg = model.config
    # the official shapes: SAT GLM130B with --num-layers 70 --hidden-size 12288 --inner-hidden-size 32768
    d, f, v, n = 12288, 32768, 150528, 70
    per_layer = (d * 3 * d + 3 * d) + (d * d + d) + (d * 2 * f + 2 * f) + (f * d + d) + 4 * d
    assert numel == glm.official_params(cfg) == v * d + n * per_layer + 2 * d
    assert 128.6e9 < numel < 128.8e9
    assert model.head is None and not hasattr(model.positions, "weight")  # tied head, no position table
    assert cfg.block.alpha == pytest.approx((2 * 70) ** 0.5)
    assert cfg.position.table_dtype == "float16"


# ------------------------------------------------------------------------------ rotary


def test_fp16_rotary_table_is_the_official_one_bitwise():
    pos = torch.arange(2048)[None]
    cos, sin = RoPE(RopeSpec(table_dtype="float16"), d_model=0, n_heads=0, rotary_dim=128).rotary(pos)
    ref_cos, ref_sin = rotary_table(128, 2048, half=True)
    assert torch.equal(cos[0].float(), ref_cos.float()) and torch.equal(sin[0].float(), ref_sin.float())


def test_fp32_rotary_table_is_textbook_and_differs_from_fp16():
    pos = torch.arange(2048)[None]
    cos32, _ = RoPE(RopeSpec(table_dtype="float32"), d_model=0, n_heads=0, rotary_dim=128).rotary(pos)
    inv = 1.0 / 10000 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    exact = torch.cat([pos[0, :, None] * inv] * 2, dim=-1).cos()
    assert (cos32[0].double() - exact).abs().max() < 5e-4
    cos16, _ = rotary_table(128, 2048, half=True)
    gap = (cos16.double() - exact).abs()
    assert gap[2047].max() > 0.1 and gap.max() > 0.5  # the fp16 table is far from textbook RoPE at long range


# ------------------------------------------------------------------------------ masks


def test_official_mask_conventions():
    seq = [5, 6, 7, 8, 9]  # ..., [MASK] at 2, [sop] last
    mask, pos = glm130b_masks_and_position_ids(seq, mask_position=2, max_gen_length=3, gmask=False)
    allowed = ~mask[0, 0]
    assert allowed[0, 3]  # a context token sees a later context token
    assert not allowed[0, 4] and not allowed[3, 5]  # never [sop] or a generated token
    assert allowed[6, 5] and not allowed[5, 6]  # generated tokens are causal
    assert pos[0].tolist() == [0, 1, 2, 3, 2, 2, 2, 2]
    _, pos = glm130b_masks_and_position_ids(seq, mask_position=2, max_gen_length=3, gmask=True)
    assert pos[0].tolist() == list(range(8))


def test_prefix_lm_context_sees_later_context_never_generated(tmp_path):
    cfg = glm.tiny_config()
    glm.save_sat_checkpoint([tiny_state(cfg)], tmp_path)
    model = llmzoo.hf.from_pretrained(tmp_path, config=cfg)
    ids = torch.randint(0, cfg.vocab_size, (1, 10), generator=torch.Generator().manual_seed(1))
    prefix = torch.tensor([6])  # 6 context tokens, then [sop] and generated tokens

    def run(x):
        with torch.no_grad():
            return model(x, prefix_len=prefix)

    base = run(ids)
    later_context = ids.clone()
    later_context[0, 5] = (ids[0, 5] + 1) % cfg.vocab_size
    generated = ids.clone()
    generated[0, 8] = (ids[0, 8] + 1) % cfg.vocab_size
    assert (run(later_context)[0, 0] - base[0, 0]).abs().max() > 1e-3  # token 0 attends to token 5
    assert torch.equal(run(generated)[0, :8], base[0, :8])  # nobody before 8 sees it
    assert (run(generated)[0, 9] - base[0, 9]).abs().max() > 1e-3  # causal after [sop]


# ------------------------------------------------------------------------------ TP checkpoint


def test_split_follows_convert_tp_and_merge_inverts_it():
    cfg = glm.tiny_config()
    state = tiny_state(cfg)
    key = "transformer.layers.1.mlp.dense_h_to_4h.weight"
    for tp in (1, 2, 4):
        shards = glm.split_tp(state, tp)
        merged = glm.merge_state_dicts(shards)
        assert merged.keys() == state.keys() and all(torch.equal(merged[k], state[k]) for k in state)
        lin, gel = state[key].chunk(2)
        for r, sd in enumerate(shards):  # rank r holds [linear_r | gelu_r]
            assert torch.equal(sd[key], torch.cat([lin.chunk(tp)[r], gel.chunk(tp)[r]]))
            dense = sd["transformer.layers.0.attention.dense.weight"]
            assert torch.equal(dense, state["transformer.layers.0.attention.dense.weight"].chunk(tp, dim=1)[r])


@pytest.fixture(scope="module")
def tp_models(tmp_path_factory):
    cfg = glm.tiny_config()
    state = tiny_state(cfg, seed=3)
    out = {}
    for tp in (1, 2, 4):
        folder = tmp_path_factory.mktemp(f"glm_tp{tp}")
        shards = glm.split_tp(state, tp)
        glm.save_sat_checkpoint(shards, folder)
        out[tp] = (llmzoo.hf.from_pretrained(folder, config=cfg), shards, folder)
    return cfg, out


@pytest.mark.parametrize("kind", ["context", "gmask", "mask"])
def test_tp_ranks_give_identical_logits_matching_the_reference(tp_models, kind):
    cfg, models = tp_models
    batch = glm.glm_test_batch(cfg, seed=1)[kind]
    logits = {}
    for tp, (model, shards, _) in models.items():
        with torch.no_grad():
            logits[tp] = model(batch["input_ids"], position_ids=batch["position_ids"], prefix_len=batch["prefix_len"])
        ref = glm_forward(shards, batch["input_ids"], batch["position_ids"], batch["official_mask"],
                          num_layers=cfg.n_layers, num_heads=cfg.block.attention.n_heads)
        assert (logits[tp] - ref).abs().max() <= TOL, (tp, kind)
    assert torch.equal(logits[1], logits[2]) and torch.equal(logits[1], logits[4])


def test_converted_safetensors_are_reused(tp_models):
    cfg, models = tp_models
    _, shards, folder = models[2]
    index = json.loads((folder / "safetensors" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(shards[0])
    for f in (folder / "49300").glob("*.pt"):
        f.unlink()  # a second load must read the mmap'd safetensors only
    again = llmzoo.hf.from_pretrained(folder, config=cfg)
    ids = torch.randint(0, cfg.vocab_size, (1, 8))
    with torch.no_grad():
        assert torch.equal(again(ids), models[2][0](ids))


def test_wrong_config_names_the_tensors(tmp_path):
    cfg = glm.tiny_config()
    glm.save_sat_checkpoint(glm.split_tp(tiny_state(cfg), 2), tmp_path)
    with pytest.raises(ValueError, match="mlp.dense_h_to_4h"):
        llmzoo.hf.from_pretrained(tmp_path, config=_wider(cfg))


def _wider(cfg):
    d = cfg.to_dict()
    d["block"]["mlp"]["d_ff"] = 64
    return llmzoo.ModelConfig.model_validate(d)


def test_verify_tiny_passes():
    result = glm.verify_tiny()
    assert result["ok"] and set(result["cases"]) == {"context", "gmask", "mask"}
    assert result["max_abs_diff"] <= TOL
    report = glm.verify_report()
    assert report.passed and report.top1 == 1.0 and report.model_type == "glm-130b"


# ------------------------------------------------------------------------------ ChatGLM-6B


def chatglm_checkpoint(tmp_path, **overrides):
    from llmzoo.hf import get_adapter
    from llmzoo.parity import loud_init_

    adapter = get_adapter("chatglm")
    hf = {**adapter.tiny_hf_config(), **overrides}
    ref = loud_init_(adapter.reference(hf), seed=2)
    adapter.save_reference(ref, tmp_path, max_shard_size=40_000)
    assert len(list(tmp_path.glob("*.safetensors"))) >= 3
    return ref, llmzoo.hf.from_pretrained(tmp_path), hf


def chatglm_batch(hf, mask_token):
    """Two sequences: context with [MASK]/[gMASK], then bos ([sop]) and generated tokens."""
    g = torch.Generator().manual_seed(5)
    ids, pos, masks, prefix = [], [], [], []
    for bos_index, mask_pos in ((7, 3), (5, 4)):
        seq = torch.randint(1, 80, (10,), generator=g)
        seq[mask_pos], seq[bos_index] = hf[mask_token], hf["bos_token_id"]
        m, p = chatglm_masks_and_position_ids(seq.tolist(), bos_index, mask_pos)
        ids.append(seq), pos.append(p[0]), masks.append(m[0]), prefix.append(bos_index)
    return torch.stack(ids), torch.stack(pos), torch.stack(masks), torch.tensor(prefix)


@pytest.mark.parametrize("mask_token", ["mask_token_id", "gmask_token_id"])
def test_chatglm_matches_reference_with_2d_positions(tmp_path, mask_token):
    ref, ours, hf = chatglm_checkpoint(tmp_path)
    assert ours.config.position.type == "rope_2d" and ours.config.block.alpha == pytest.approx(56**0.5)
    ids, pos, mask, prefix = chatglm_batch(hf, mask_token)
    with torch.no_grad():
        want = ref(ids, position_ids=pos, glm_mask=mask)
        got = ours(ids, position_ids=pos, prefix_len=prefix)
        assert (got - want).abs().max() <= TOL
        # the block positions matter: dropping them (a 1-D call) changes the generated tokens' logits
        assert (ours(ids, position_ids=pos[:, 0], prefix_len=prefix) - want).abs().max() > 1e-2


def test_chatglm_1d_positions_and_tied_head(tmp_path):
    ref, ours, hf = chatglm_checkpoint(tmp_path, position_encoding_2d=False, tie_word_embeddings=True)
    assert ours.config.position.type == "rope" and ours.head is None
    ids = torch.randint(0, hf["vocab_size"], (2, 9))
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 2, 2, 2], list(range(9))])
    prefix = torch.tensor([5, 6])
    mask = torch.ones(2, 9, 9).tril_()
    for b, n in enumerate(prefix.tolist()):
        mask[b, :, :n] = 1
    with torch.no_grad():
        want = ref(ids, position_ids=pos, glm_mask=(mask < 0.5)[:, None])
        assert (ours(ids, position_ids=pos, prefix_len=prefix) - want).abs().max() <= TOL


def test_chatglm_config_errors_name_the_field():
    from llmzoo.hf import get_adapter

    adapter = get_adapter("chatglm")
    with pytest.raises(ValueError, match="pre_seq_len"):
        adapter.to_config({**adapter.tiny_hf_config(), "pre_seq_len": 16})
    with pytest.raises(ValueError, match="quantization_bit"):
        adapter.to_config({**adapter.tiny_hf_config(), "quantization_bit": 4})
