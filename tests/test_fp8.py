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


# ------------------------------------------------------------------------------ an fp8 checkpoint


def _quantised_copy(src, dst, block: int) -> dict:
    """Rewrite a saved checkpoint the way DeepSeek-V3 ships: every projection weight (attention,
    dense MLP, experts, shared experts) as e4m3 + weight_scale_inv; norms, embedding, head and router
    left as they are. Four shards, each scale stored in a different shard than its weight."""
    import json

    from safetensors.torch import load_file, save_file

    state = {}
    for f in sorted(src.glob("*.safetensors")):
        state.update(load_file(f))
    out, quantised = {}, {}
    for name, t in state.items():
        if name.endswith("_proj.weight") or name.endswith("_proj_with_mqa.weight"):
            q, s = quantize_blockwise(t, block)
            out[name], out[name.replace(".weight", ".weight_scale_inv")] = q, s
            quantised[name] = t
        else:
            out[name] = t
    names = sorted(out)
    shards = {n: k % 4 for k, n in enumerate(names)}
    for n in names:  # a weight and its scale never share a shard
        if n.endswith("_scale_inv"):
            shards[n] = (shards[n[: -len("_scale_inv")]] + 1) % 4
    dst.mkdir()
    files = [f"model-{k + 1:05d}-of-00004.safetensors" for k in range(4)]
    for k, f in enumerate(files):
        save_file({n: out[n].contiguous() for n in names if shards[n] == k}, dst / f, metadata={"format": "pt"})
    (dst / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: files[shards[n]] for n in names}}))
    hf = json.loads((src / "config.json").read_text())
    hf["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                 "weight_block_size": [block, block]}
    (dst / "config.json").write_text(json.dumps(hf))
    return quantised


def test_fp8_checkpoint_loads_close_to_unquantised(tmp_path):
    from llmzoo.hf import get_adapter
    from llmzoo.hf.loader import from_pretrained
    from llmzoo.parity import loud_init_, make_batch, shard_size_for

    adapter = get_adapter("deepseek_v3")
    # every token uses all 8 experts: routing is then continuous in the weights, so the logit error
    # measures weight rounding alone (a routed top-k flips choices under any perturbation)
    hf = {**adapter.tiny_hf_config(), "num_experts_per_tok": 8, "topk_group": 4}
    torch.manual_seed(0)
    ref = loud_init_(adapter.reference(hf), 0)
    ref.save_pretrained(tmp_path / "fp32", max_shard_size=shard_size_for(ref, 4))
    block = 16  # the tiny matrices (16 … 96 wide, e.g. kv_a 24×48) give full and tail blocks at 16
    originals = _quantised_copy(tmp_path / "fp32", tmp_path / "fp8", block)
    plain = from_pretrained(tmp_path / "fp32")
    fp8 = from_pretrained(tmp_path / "fp8", dtype="float32")
    a = fp8.blocks[1].attn.kv_a.weight
    assert a.dtype == torch.float32 and a.shape[0] % block  # a tail row block
    # each quantised weight is exactly its block-wise dequantisation (stacked experts included)
    q, s = quantize_blockwise(originals["model.layers.1.self_attn.kv_a_proj_with_mqa.weight"], block)
    assert torch.equal(a, dequantize_blockwise(q, s, block=block))
    q, s = quantize_blockwise(originals["model.layers.2.mlp.experts.5.down_proj.weight"], block)
    assert torch.equal(fp8.blocks[2].mlp.experts.down[5], dequantize_blockwise(q, s, block=block))
    ours, n_changed = fp8.state_dict(), 0
    for name, p in plain.state_dict().items():  # within e4m3 rounding (2^-4 relative); rest untouched
        err = (ours[name] - p).abs()
        assert (err <= p.abs() * 2.0**-4 + p.abs().max() * 2.0**-12).all(), name
        n_changed += bool(err.max() > 0)
    assert n_changed >= 10
    ids, mask = make_batch(plain.config.vocab_size, seq_len=16, pad=4)
    with torch.no_grad():
        want, got = plain(ids, mask), fp8(ids, mask)
    real = mask.bool()
    rel = ((got - want)[real].pow(2).mean() / want[real].pow(2).mean()).sqrt()
    top1 = (got.argmax(-1) == want.argmax(-1))[real].float().mean()
    # e4m3 rounds each weight by up to 6% (≈3.6% rms); through a few layers that is ~10% of the logits
    assert 0 < rel < 0.25 and top1 >= 0.75, f"fp8 logits: relative rms error {rel:.3f}, top-1 agreement {top1:.2f}"


def test_fp8_checkpoint_with_missing_scale_is_refused(tmp_path):
    import json

    from llmzoo.hf.loader import CheckpointError, from_pretrained

    from safetensors.torch import load_file, save_file

    from llmzoo.hf import get_adapter
    from llmzoo.parity import loud_init_, shard_size_for

    adapter = get_adapter("deepseek_v3")
    ref = loud_init_(adapter.reference(adapter.tiny_hf_config()), 0)
    ref.save_pretrained(tmp_path / "fp32", max_shard_size=shard_size_for(ref, 4))
    _quantised_copy(tmp_path / "fp32", tmp_path / "fp8", 16)
    index = json.loads((tmp_path / "fp8" / "model.safetensors.index.json").read_text())
    victim = "model.layers.0.self_attn.o_proj.weight_scale_inv"
    shard = tmp_path / "fp8" / index["weight_map"].pop(victim)
    state = load_file(shard)
    del state[victim]
    save_file(state, shard, metadata={"format": "pt"})
    (tmp_path / "fp8" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model.layers.0.self_attn.o_proj.weight"):
        from_pretrained(tmp_path / "fp8")
