"""MXFP4 (GPT-OSS experts): dequantisation bit-exact against a decoder written here from the OCP
Microscaling Formats v1.0 spec, quantise → dequantise round trip, an MXFP4 gpt_oss checkpoint loads
to exactly those weights with the reference's logits, and is saved back unquantised (bf16)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import llmzoo
from llmzoo.hf.mxfp4 import dequantize_mxfp4, quantize_mxfp4
from llmzoo.parity import forward_logits, make_batch


def spec_e2m1(code: int) -> float:
    """OCP MX v1.0 §5.3.3, FP4 E2M1: bits S EE M, exponent bias 1, E = 0 subnormal (0.M · 2^0), no inf/NaN."""
    s, e, m = (code >> 3) & 1, (code >> 1) & 3, code & 1
    mag = m * 0.5 if e == 0 else 2.0 ** (e - 1) * (1.0 + m / 2)
    return -mag if s else mag


def spec_e8m0(bits: int) -> float:
    """OCP MX v1.0 §5.4.1, E8M0: 2^(bits - 127), bits = 0xFF is NaN."""
    return float("nan") if bits == 0xFF else 2.0 ** (bits - 127)


def spec_dequantize(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """MX block value X · P_i, element by element; element 2j in the low nibble of byte j (GPT-OSS packing)."""
    b, s = blocks.reshape(-1, 16).tolist(), scales.reshape(-1).tolist()
    rows = []
    for byte_row, scale in zip(b, s):
        row = []
        for byte in byte_row:
            row += [spec_e2m1(byte & 0xF), spec_e2m1(byte >> 4)]
        rows.append([spec_e8m0(scale) * v for v in row])
    return torch.tensor(rows, dtype=torch.float64).to(torch.float32).reshape(*scales.shape[:-1], -1)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def test_dequantize_equals_the_spec_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 5, 4, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(0, 255, (3, 5, 4), generator=g, dtype=torch.uint8)
    scales[0, 0, :4] = torch.tensor([0, 1, 254, 127])  # 2^-127 (subnormal products), 2^-126, 2^127, 1
    ours, ref = dequantize_mxfp4(blocks, scales), spec_dequantize(blocks, scales)
    assert ours.dtype == torch.float32 and ours.shape == (3, 5, 128)
    assert same_bits(ours, ref)
    scales[1, 2, 3] = 0xFF  # NaN scale: the whole block is NaN
    nan = dequantize_mxfp4(blocks, scales)
    assert nan[1, 2, 96:].isnan().all() and not nan[1, 2, :96].isnan().any()


def test_quantize_dequantize_round_trip_is_exact():
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (4, 6, 3, 32), generator=g, dtype=torch.uint8)
    codes[codes == 8] = 0  # -0 reads back as +0
    codes[..., 0] = 7  # each block's largest magnitude is 6 = 1.5·2^2: the scale the quantiser picks
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()
    scales = torch.randint(100, 160, (4, 6, 3), generator=g, dtype=torch.uint8)
    w = spec_dequantize(blocks, scales)
    qb, qs = quantize_mxfp4(w)
    assert torch.equal(qb, blocks) and torch.equal(qs, scales)
    assert same_bits(dequantize_mxfp4(qb, qs), w)
    # arbitrary weights: the spec's scale X = 2^(floor(log2 amax) - 2) puts amax / X in [4, 8); values up
    # to 6X round to the E2M1 grid (error ≤ X, the widest half-gap), those in (6X, 8X) clamp to 6X (< 2X)
    x = torch.randn(8, 64, generator=g)
    back = dequantize_mxfp4(*quantize_mxfp4(x))
    scale = 2.0 ** (torch.floor(torch.log2(x.view(8, 2, 32).abs().amax(-1))) - 2)
    err = (back - x).view(8, 2, 32).abs()
    inside = x.view(8, 2, 32).abs() <= 6 * scale[..., None]
    assert (err[inside] <= scale[..., None].expand_as(err)[inside]).all()
    assert (err < 2 * scale[..., None]).all()


def mxfp4_copy(src, dst) -> dict[str, torch.Tensor]:
    """The tiny gpt_oss checkpoint rewritten the way the hub ships it: experts as *_blocks / *_scales in
    (E, out, in) orientation. Returns the spec-dequantised expert tensors in transformers' layout."""
    state = {}
    for f in sorted(src.glob("*.safetensors")):
        state.update(load_file(f))
    out, dequantised = {}, {}
    for name, t in state.items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            blocks, scales = quantize_mxfp4(t.transpose(1, 2))  # (E, out, in)
            out[name + "_blocks"], out[name + "_scales"] = blocks, scales
            dequantised[name] = spec_dequantize(blocks, scales).transpose(1, 2).contiguous()
        else:
            out[name] = t
    dst.mkdir()
    save_file({n: t.contiguous() for n, t in out.items()}, dst / "model.safetensors", metadata={"format": "pt"})
    hf = json.loads((src / "config.json").read_text())
    hf["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (dst / "config.json").write_text(json.dumps(hf))
    return dequantised


def test_mxfp4_checkpoint_loads_exactly_and_saves_back_as_bf16(tiny_checkpoint, tmp_path):
    folder, ref = tiny_checkpoint("gpt_oss")
    dequantised = mxfp4_copy(folder, tmp_path / "mxfp4")
    ours = llmzoo.from_pretrained(tmp_path / "mxfp4")
    experts = ours.blocks[1].mlp.experts
    gate_up = dequantised["model.layers.1.mlp.experts.gate_up_proj"]  # (E, D, 2F), gate/up interleaved
    assert same_bits(experts.gate, gate_up[..., 0::2].transpose(1, 2).contiguous())
    assert same_bits(experts.up, gate_up[..., 1::2].transpose(1, 2).contiguous())
    assert same_bits(experts.down, dequantised["model.layers.1.mlp.experts.down_proj"].transpose(1, 2).contiguous())
    with torch.no_grad():  # the reference holding the spec-dequantised experts
        for name, p in ref.named_parameters():
            if name in dequantised:
                p.copy_(dequantised[name])
    ids, mask = make_batch(ours.config.vocab_size, 24, pad=5, seed=1)
    want = forward_logits(ref, ids, mask, like=ours)
    with torch.no_grad():
        got = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert want[real].abs().max() > 1.0
    assert (got - want)[real].abs().max() <= 1e-4
    # saved back unquantised: bf16 tensors in transformers' layout, no blocks or scales, same values
    bf16 = llmzoo.from_pretrained(tmp_path / "mxfp4", dtype="bfloat16")
    llmzoo.save_pretrained(bf16, tmp_path / "bf16")
    names = {}
    for f in (tmp_path / "bf16").glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            names.update({n: h.get_tensor(n) for n in h.keys()})
    assert not any(n.endswith(("_blocks", "_scales")) for n in names)
    assert "quantization_config" not in json.loads((tmp_path / "bf16" / "config.json").read_text())
    saved = names["model.layers.1.mlp.experts.gate_up_proj"]
    assert saved.dtype == torch.bfloat16 and torch.equal(saved.float(), gate_up)  # MXFP4 values fit bf16 exactly
    again = llmzoo.from_pretrained(tmp_path / "bf16", dtype="float32")
    back = dict(bf16.float().named_parameters())
    for name, p in again.named_parameters():  # the same bits; the layout may differ (a transposed view)
        assert same_bits(p, back[name]), name
    with torch.no_grad():
        assert (again(ids, attention_mask=mask) - bf16.float()(ids, attention_mask=mask))[real].abs().max() <= 1e-5


def test_mxfp4_shapes_are_checked():
    with pytest.raises(ValueError, match="blocks"):
        dequantize_mxfp4(torch.zeros(2, 3, 16, dtype=torch.uint8), torch.zeros(2, 4, dtype=torch.uint8))
