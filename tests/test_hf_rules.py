"""Rule tables: pattern syntax, reversible transforms, config round trips; one test per bad checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import llmzoo
from llmzoo.hf import get_adapter, supported_model_types
from llmzoo.hf.adapter import config_diff
from llmzoo.hf.loader import CheckpointError
from llmzoo.hf.rules import (IGNORE, Concat, Pattern, Rule, Split, SplitInterleavedQKV, StackExperts, Transpose,
                             plan_export, plan_load)

TYPES = supported_model_types()


# ----------------------------------------------------------------------------- patterns / transforms


def test_pattern_slots_and_gathers():
    p = Pattern("model.layers.{i}.self_attn.{q,k,v}_proj.weight")
    assert p.match("model.layers.12.self_attn.k_proj.weight") == {"i": "12", "_alt": "k"}
    assert p.match("model.layers.x.self_attn.k_proj.weight") is None
    assert p.match("model.layers.01.self_attn.k_proj.weight") is None  # no leading zeros
    assert p.format({"i": 3}, "v") == "model.layers.3.self_attn.v_proj.weight"
    with pytest.raises(ValueError, match="at most one"):
        Pattern("{a,b}.{c,d}")
    with pytest.raises(ValueError, match="llmzoo side only"):
        Rule("x.weight", "blocks.{i}.w")


@pytest.mark.parametrize("transform, inputs", [
    (Transpose(), [torch.randn(3, 5)]),
    (Split(0, parts=3), [torch.randn(12, 4)]),
    (Split(0, sizes=[2, 6]), [torch.randn(8, 4)]),
    (Concat(1, sizes=[2, 3]), [torch.randn(4, 2), torch.randn(4, 3)]),
    (StackExperts(), [torch.randn(3, 4) for _ in range(5)]),
    (SplitInterleavedQKV(8, 2, 4), [torch.randn((8 + 2 * 2) * 4, 6)]),
    (SplitInterleavedQKV(4, 4, 2), [torch.randn(3 * 4 * 2)]),  # a bias, BLOOM-like per-head layout
])
def test_transforms_are_reversible(transform, inputs):
    back = transform.backward(transform.forward(inputs))
    assert len(back) == len(inputs)
    for a, b in zip(back, inputs):
        assert torch.equal(a, b)


def test_split_interleaved_qkv_follows_the_grouped_layout():
    """Per KV group g: rows [q_(g·G) … q_(g·G+G-1), k_g, v_g], each head_dim rows (InternLM2 wqkv)."""
    h, kv, d = 6, 2, 3
    q = [torch.full((d, 5), 100.0 + j) for j in range(h)]
    k = [torch.full((d, 5), 200.0 + j) for j in range(kv)]
    v = [torch.full((d, 5), 300.0 + j) for j in range(kv)]
    G = h // kv
    fused = torch.cat([t for g in range(kv) for t in (*q[g * G:(g + 1) * G], k[g], v[g])])
    oq, ok, ov = SplitInterleavedQKV(h, kv, d).forward([fused])
    assert torch.equal(oq, torch.cat(q)) and torch.equal(ok, torch.cat(k)) and torch.equal(ov, torch.cat(v))


def test_plan_load_groups_and_reports():
    rules = [Rule("l.{i}.{q,k}.w", "b.{i}.{q,k}.w"), Rule("l.{i}.x.{e}.w", "b.{i}.x", StackExperts()),
             Rule("l.{i}.inv_freq", IGNORE)]
    names = ["l.0.q.w", "l.0.k.w", "l.0.x.1.w", "l.0.x.0.w", "l.0.inv_freq", "l.1.q.w", "l.1.x.1.w", "junk"]
    groups, problems = plan_load(rules, names)
    got = {tuple(g.our_names): g.hf_names for g in groups}
    assert got[("b.0.q.w", "b.0.k.w")] == ["l.0.q.w", "l.0.k.w"]
    assert got[("b.0.x",)] == ["l.0.x.0.w", "l.0.x.1.w"]
    text = "\n".join(problems)
    assert "'junk'" in text and "'l.1.k.w'" in text and "'l.1.x.0.w'" in text
    groups, problems = plan_export(rules, ["b.0.q.w", "b.0.k.w", "b.0.x", "b.9.q.w"])
    assert len(groups) == 2 and "lack ['k']" in problems[0]


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("model_type", TYPES)
def test_config_round_trip(model_type):
    adapter = get_adapter(model_type)
    config = adapter.to_config(adapter.tiny_hf_config())
    assert not config_diff(config, adapter.to_config(adapter.export_config(config)))


def _zoo_for_types():
    out = []
    for name in llmzoo.list_models():
        try:
            family = llmzoo.get_config(name).family
        except Exception:
            continue
        out += [(name, t) for t in TYPES if family in get_adapter(t).families]
    return out


@pytest.mark.parametrize("name, model_type", _zoo_for_types())
def test_zoo_entries_export_to_their_type(name, model_type):
    """Every zoo entry whose family an adapter claims converts to config.json and back unchanged."""
    get_adapter(model_type).export_config(llmzoo.get_config(name))


def test_both_config_dialects_read_the_same():
    adapter = get_adapter("llama")
    hub = {**adapter.tiny_hf_config(), "torch_dtype": "bfloat16"}
    hub["rope_scaling"] = {"type": "llama3", **{k: v for k, v in hub["rope_scaling"].items() if k != "rope_type"}}
    v5 = {k: v for k, v in hub.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
    v5["dtype"] = "bfloat16"
    v5["rope_parameters"] = {"rope_type": "llama3", "rope_theta": hub["rope_theta"],
                             **{k: v for k, v in hub["rope_scaling"].items() if k != "type"}}
    a, b = adapter.to_config(hub), adapter.to_config(v5)
    assert not config_diff(a, b)
    assert a.position.scaling.type == "llama3" and a.position.theta == 500000.0


@pytest.mark.parametrize("model_type", [t for t in TYPES if not get_adapter(t).remote_code])
def test_config_transformers_writes_reads_the_same(model_type, tmp_path):
    """transformers' own config.json (its dialect, after its defaults) gives the same ModelConfig."""
    from transformers import AutoConfig

    adapter = get_adapter(model_type)
    hf = adapter.tiny_hf_config()
    AutoConfig.for_model(model_type, **{k: v for k, v in hf.items() if k != "model_type"}).save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert not config_diff(adapter.to_config(hf), adapter.to_config(written))


# ----------------------------------------------------------------------------- bad checkpoints


@pytest.fixture
def llama_ckpt(tiny_checkpoint):
    folder, _ = tiny_checkpoint("llama")
    return folder


def _index(folder):
    return json.loads((folder / "model.safetensors.index.json").read_text())


def _rewrite(folder, edit):
    """Apply edit(dict of all tensors) and rewrite the checkpoint as one model.safetensors."""
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            tensors.update({k: h.get_tensor(k) for k in h.keys()})
        f.unlink()
    (folder / "model.safetensors.index.json").unlink()
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_missing_tensor(llama_ckpt):
    _rewrite(llama_ckpt, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor.*'blocks\.1\.mlp\.up\.weight'"):
        llmzoo.from_pretrained(llama_ckpt)


def test_unexpected_tensor(llama_ckpt):
    _rewrite(llama_ckpt, lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.extra\.weight'"):
        llmzoo.from_pretrained(llama_ckpt)
    with pytest.warns(UserWarning, match="skipped 1"):
        assert llmzoo.from_pretrained(llama_ckpt, strict=False) is not None


def test_wrong_shape(llama_ckpt):
    _rewrite(llama_ckpt, lambda t: t.update({"model.layers.2.self_attn.k_proj.weight": torch.zeros(16, 64)}))
    with pytest.raises(CheckpointError, match=r"wrong shape: 'model\.layers\.2\.self_attn\.k_proj\.weight'"):
        llmzoo.from_pretrained(llama_ckpt)


def test_unsupported_model_type(llama_ckpt):
    cfg = json.loads((llama_ckpt / "config.json").read_text())
    (llama_ckpt / "config.json").write_text(json.dumps({**cfg, "model_type": "llamma"}))
    with pytest.raises(ValueError, match=r"'llamma' is not supported; supported: .*gemma.*llama.*mistral"):
        llmzoo.from_pretrained(llama_ckpt)


def test_config_contradicts_weights(llama_ckpt):
    cfg = json.loads((llama_ckpt / "config.json").read_text())
    (llama_ckpt / "config.json").write_text(json.dumps({**cfg, "num_key_value_heads": 4, "num_hidden_layers": 4}))
    with pytest.raises(CheckpointError, match="does not match config.json") as e:
        llmzoo.from_pretrained(llama_ckpt)
    msg = str(e.value)
    assert "'model.layers.0.self_attn.k_proj.weight'" in msg and "config.json implies [64, 64]" in msg
    assert "'blocks.3.attn.q.weight'" in msg  # the 4th layer config.json promises is absent


def test_truncated_safetensors(llama_ckpt):
    shard = sorted(llama_ckpt.glob("*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: not a readable safetensors file"):
        llmzoo.from_pretrained(llama_ckpt)


def test_corrupt_safetensors_header(llama_ckpt):
    shard = sorted(llama_ckpt.glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[8:16] = b"\x00garbag"
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{shard.name}: not a readable safetensors file"):
        llmzoo.from_pretrained(llama_ckpt)


def test_missing_shard(llama_ckpt):
    shard = sorted(llama_ckpt.glob("*.safetensors"))[2]
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"missing: {shard.name}"):
        llmzoo.from_pretrained(llama_ckpt)


def test_index_disagrees_with_shards(llama_ckpt):
    index = _index(llama_ckpt)
    name = "model.norm.weight"
    files = sorted(set(index["weight_map"].values()))
    index["weight_map"][name] = next(f for f in files if f != index["weight_map"][name])
    (llama_ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="index does not match the shards: 'model.norm.weight'"):
        llmzoo.from_pretrained(llama_ckpt)


def test_no_weights_and_no_source(tmp_path, llama_ckpt):
    shutil.copy(llama_ckpt / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        llmzoo.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no such folder or file"):
        llmzoo.from_pretrained(str(tmp_path / "nope"))
