"""Logits vs the reference implementation, one test for all supported model types."""

from __future__ import annotations

import dataclasses
import io
import time

import pytest
import torch

import llmzoo
from llmzoo.hf import get_adapter, supported_model_types
from llmzoo.parity import boundary_pairs, forward_logits, make_batch, parity, tolerance_notes, verify
from variants import LOUD_BUFFERS, VARIANTS

TYPES = supported_model_types()
SEQ = 24  # longer than every tiny config's sliding window (mistral: 8)


@pytest.mark.parametrize("model_type", TYPES)
def test_logits_match_reference_fp32(model_type, tiny_checkpoint):
    folder, ref = tiny_checkpoint(model_type)
    assert len(list(folder.glob("*.safetensors"))) >= 3
    ours = llmzoo.from_pretrained(folder)
    blocks = getattr(ours.config, "blocks", [])
    windows = [b.attention.window for b in blocks if getattr(b.attention, "window", None)]
    assert all(SEQ > w for w in windows)
    ids, mask = make_batch(ours.config.vocab_size, SEQ, pad=5, seed=1)
    assert not mask.all()  # one sequence is right-padded
    logits = forward_logits(ref, ids, mask, like=ours)
    assert logits[mask.bool()].abs().max() > 1.0  # loud weights: logits far from zero, 1e-4 is a real bound
    report = parity(model=ours, reference=ref, input_ids=ids, attention_mask=mask)
    assert report.max_abs <= 1e-4, str(report)  # max over non-pad positions of both sequences
    assert report.passed and report.top1 == 1.0


# bf16 bound: llmzoo.parity.TOLERANCES (nmse of the logits, greedy tokens in each other's top-5);
# fp32 above is the exact check. An adapter's half_precision_overrides (DeepSeek-V3.2: top-k ≥ the
# sequence, as its half_precision_reason says) apply here as in `llmzoo verify --dtype bfloat16`.
@pytest.mark.parametrize("model_type", TYPES)
def test_logits_match_reference_bf16(model_type, tiny_checkpoint):
    folder, ref = tiny_checkpoint(model_type, overrides=get_adapter(model_type).half_precision_overrides)
    report = parity(folder, "bfloat16", reference=ref, seed=2)
    assert report.dtype == "bfloat16"
    assert report.passed, str(report)
    assert report.nmse <= report.nmse_tolerance and report.top_k_agreement >= report.min_top_k, str(report)


def test_nmse_and_top_k_follow_their_definitions():
    from llmzoo.parity import logit_metrics, nmse, top_k_mutual

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(6, 10, generator=g, dtype=torch.float64)
    ours = ref + 0.01 * torch.randn(6, 10, generator=g, dtype=torch.float64)
    # llama.cpp: mse / var(reference), numpy's var (population)
    expected = float(((ours - ref) ** 2).mean() / ((ref - ref.mean()) ** 2).mean())
    assert nmse(ours, ref) == pytest.approx(expected, rel=1e-12)
    assert nmse(ref, ref) == 0.0
    # row 0: our greedy token is the reference's 3rd choice, the reference's is our 2nd
    a, b = torch.zeros(2, 5), torch.zeros(2, 5)
    b[0] = torch.tensor([5.0, 4.0, 3.0, 0.0, 0.0])
    a[0] = torch.tensor([4.5, 0.0, 5.0, 0.0, 0.0])
    a[1] = b[1] = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    assert top_k_mutual(a, b, 2).tolist() == [False, True]
    assert top_k_mutual(a, b, 3).tolist() == [True, True]
    m = logit_metrics(a, b, torch.bfloat16)
    assert m["top_k"] == 5 and m["top_k_agreement"] == 1.0 and m["top1"] == 0.5


def test_half_precision_still_catches_a_wrong_weight(tiny_checkpoint):
    folder, ref = tiny_checkpoint("qwen2")
    ours = llmzoo.from_pretrained(folder)
    with torch.no_grad():
        ours.blocks[1].attn.o.weight.mul_(1.1)  # 10 % off in one projection of one layer
    for dtype in ("bfloat16", "float16"):
        report = parity(model=ours, reference=ref, dtype=dtype)
        assert not report.passed and report.nmse > report.nmse_tolerance, str(report)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_verify_passes_in_half_precision(dtype):
    out = io.StringIO()
    reports = verify(dtype=dtype, file=out)
    assert all(r.passed for r in reports), out.getvalue()
    routed = {r.model_type for r in reports if r.routed}
    moe = {"mixtral", "deepseek_v2", "deepseek_v3", "deepseek_v32", "gpt_oss", "qwen3_moe", "glm4_moe", "llama4_text"}
    assert routed == moe & set(TYPES), routed  # only MoE rows get ROUTED bounds
    noted = [r for r in reports if r.note]  # rows whose tiny checkpoint differs in half precision say why
    assert [r.model_type for r in noted] == [t for t in TYPES if get_adapter(t).half_precision_overrides]
    assert all(f"{r.model_type}: {r.note}" in tolerance_notes(reports) for r in noted)


def test_parity_report_fields(tiny_checkpoint):
    folder, ref = tiny_checkpoint("llama")
    report = parity(folder)
    assert report.passed and report.first_divergence is None
    assert report.max_abs <= 1e-4 and report.top1 == 1.0 and abs(report.kl) < 1e-6
    names = [n for n, _ in report.boundaries]
    assert names[0] == "embed" and "blocks.2.attn" in names and "blocks.2.mlp" in names and "final_norm" in names
    assert "PASS" in str(report)


def test_broken_rope_layout_is_located(tiny_checkpoint):
    """RoPE pairs (i, i + d/2) swapped for interleaved (2i, 2i+1) in layer 1 only: parity must fail
    and name layer 1's attention as the first divergence."""
    folder, ref = tiny_checkpoint("llama")
    ours = llmzoo.from_pretrained(folder)
    attn = ours.blocks[1].attn
    forward = attn.forward
    attn.forward = lambda x, ctx: forward(x, dataclasses.replace(ctx, rope_layout="interleaved", _masks={}))
    report = parity(model=ours, reference=ref)
    assert not report.passed
    d = report.first_divergence
    assert (d.layer, d.sublayer, d.module) == (1, "attention", "blocks.1.attn"), str(report)
    assert d.delta > 1e-2
    assert dict(report.boundaries)["blocks.0.mlp"] < 1e-5  # layers before it still agree
    assert "layer 1 attention" in str(report)


def test_broken_mlp_is_located(tiny_checkpoint):
    folder, ref = tiny_checkpoint("qwen2")
    ours = llmzoo.from_pretrained(folder)
    with torch.no_grad():
        ours.blocks[2].mlp.down.weight[0, 0] += 1.0
    d = parity(model=ours, reference=ref).first_divergence
    assert (d.layer, d.sublayer) == (2, "MLP")


def test_verify_all_families_fast(hf_warnings):
    out = io.StringIO()
    t0 = time.process_time()  # CPU seconds: wall time depends on what else shares the 2 cores
    with hf_warnings() as said:  # every tiny reference config is one transformers reads without a warning
        reports = verify(file=out)
    elapsed = time.process_time() - t0
    assert not said, f"transformers warned during verify: {said[:3]}"
    table = out.getvalue()
    assert [r.model_type for r in reports] == [*TYPES, "glm-130b"]  # GLM-130B: official SAT layout
    assert all(r.passed for r in reports), table
    assert all(mt in table for mt in [*TYPES, "glm-130b"]) and "FAIL" not in table
    assert elapsed < 45, f"verify took {elapsed:.1f} CPU seconds"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_logits_match_reference(variant, tiny_checkpoint):
    """Every published layout of tests/variants.py: fp32 logits ≤ 1e-4 on a padded batch from a
    ≥ 3-shard checkpoint with loud weights, through the one harness (parity → compare)."""
    model_type, overrides = VARIANTS[variant]
    folder, ref = tiny_checkpoint(model_type, overrides=overrides, loud_buffers=LOUD_BUFFERS)
    assert len(list(folder.glob("*.safetensors"))) >= 3
    ours = llmzoo.from_pretrained(folder)
    assert all(b.attention.window < SEQ for b in ours.config.blocks if getattr(b.attention, "window", None))
    ids, mask = make_batch(ours.config.vocab_size, SEQ, pad=5, seed=1)
    report = parity(model=ours, reference=ref, input_ids=ids, attention_mask=mask)
    assert report.scale > 1.0  # loud weights: 1e-4 is a real bound
    assert report.max_abs <= 1e-4 and report.passed, f"{variant}: {report}"


def test_variant_configs_read_as_published():
    from llmzoo.hf import get_adapter

    def cfg(name):
        t, o = VARIANTS[name]
        return get_adapter(t).to_config({**get_adapter(t).tiny_hf_config(), **o})

    assert [b.attention.window for b in cfg("qwen2-sliding-upper-layers").blocks] == [None, 8, 8]
    assert cfg("baichuan-7b-rotary").position.type == "rope"
    assert get_adapter("baichuan").to_config(get_adapter("baichuan").tiny_hf_config()).position.type == "alibi"
    g = cfg("gemma-7b-like-mha")
    assert g.block.mlp.activation == "gelu_tanh" and g.block.norm.unit_offset and g.embedding.scale == "sqrt_d_model"


@pytest.mark.parametrize("model_type", TYPES)
def test_first_divergence_is_located_for_every_type(model_type, tiny_checkpoint):
    """The adapter's rules pair the sub-layer boundaries: a perturbed layer-1 attention output
    projection is reported as layer 1's attention, whatever the type."""
    folder, ref = tiny_checkpoint(model_type)
    ours = llmzoo.from_pretrained(folder)
    blocks = getattr(ours, "blocks", None)
    if blocks is None or len(blocks) < 2:
        pytest.skip("not a decoder-only block stack")
    with torch.no_grad():  # half the output rows: a uniform scale would vanish under a sandwich norm (Gemma-2)
        o = blocks[1].attn.o.weight
        o[: o.shape[0] // 2].mul_(1.5)
    report = parity(model=ours, reference=ref)
    d = report.first_divergence
    # a BERT-layout reference (DeBERTa) holds the post-attention LayerNorm inside its attention module:
    # no module of it computes the attention alone, so the divergence is located to the layer
    rules = get_adapter(model_type).rules(ours.config)
    alone = any(o == "blocks.1.attn" for o, _ in boundary_pairs(rules, ours, ref))
    assert d is not None and (d.layer, d.sublayer) == (1, "attention" if alone else "block"), str(report)
