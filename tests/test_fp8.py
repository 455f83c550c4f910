"""FP8 block-wise (128×128) checkpoints as DeepSeek-V3 ships them."""

from __future__ import annotations

import pytest
import torch

from llmzoo.hf.fp8 import Dequantize, dequantize_blockwise, dequantize_stream, quantize_blockwise

SHAPES = [(256, 128), (300, 200), (7, 129), (129, 5)]  # multiples of 128 and tails


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{a}x{b}" for a, b in SHAPES])
def test_blockwise_roundtrip_within_fp8_rounding(shape):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g) * torch.logspace(-3, 1, shape[1])[None]  # blocks of varied range
    q, s = quantize_blockwise(w)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (-(-shape[0] // 128), -(-shape[1] // 128))
    back = dequantize_blockwise(q, s)
    # e4m3 keeps 3 mantissa bits: relative rounding ≤ 2^-4 for normals, plus the subnormal floor
    # 2^-9 · scale of the element's block
    scale = s.repeat_interleave(128, 0)[: shape[0]].repeat_interleave(128, 1)[:, : shape[1]]
    bound = w.abs() * 2.0**-4 + scale * 2.0**-9
    assert ((back - w).abs() <= bound + 1e-12).all()
    # the tail block uses its own scale: amax of the last block maps to ±448 exactly
    tail = w[(s.shape[0] - 1) * 128 :, (s.shape[1] - 1) * 128 :]
    assert torch.isclose(s[-1, -1], tail.abs().max() / 448.0)


def test_known_block_values():
    """Hand-made: a 130×130 weight whose four blocks have scales 1, 2, 3, 4."""
    q = torch.ones(130, 130).to(torch.float8_e4m3fn)
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    w = dequantize_blockwise(q, s, torch.bfloat16)
    assert w.dtype == torch.bfloat16
    assert w[0, 0] == 1 and w[0, 129] == 2 and w[129, 0] == 3 and w[129, 129] == 4 and w[127, 128] == 2


def test_wrong_scale_shape_names_tensor():
    q, s = quantize_blockwise(torch.randn(130, 130))
    with pytest.raises(ValueError, match=r"layers.0.q.weight_scale_inv.*expected \(2, 2\)"):
        dequantize_blockwise(q, s[:1], name="layers.0.q.weight")


def test_transform_reverses():
    w = torch.randn(150, 140)
    step = Dequantize()
    q, s = step.backward([w])
    (back,) = step.forward([q, s])
    assert (back - w).abs().max() <= w.abs().max() * 2.0**-4


def test_stream_hides_scales_and_checks_pairs():
    w = torch.randn(140, 20)
    q, s = quantize_blockwise(w)
    store = {"a.weight": q, "a.weight_scale_inv": s, "norm.weight": torch.ones(20)}
    names, read = dequantize_stream(store, store.__getitem__)
    assert names == ["a.weight", "norm.weight"]
    assert read("a.weight").dtype == torch.float32 and torch.equal(read("norm.weight"), torch.ones(20))
    assert (read("a.weight") - w).abs().max() <= w.abs().max() * 2.0**-4
    with pytest.raises(ValueError, match="b.weight_scale_inv"):
        dequantize_stream(["b.weight_scale_inv"], store.__getitem__)
    names, read = dequantize_stream(["a.weight"], store.__getitem__)
    with pytest.raises(ValueError, match="'a.weight' is torch.float8_e4m3fn"):
        read("a.weight")
