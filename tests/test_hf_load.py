"""Loading and exporting checkpoints: round trips, sources (folder, file, hub cache, .bin), memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

import llmzoo
from llmzoo.hf import get_adapter, supported_model_types
from llmzoo.parity import forward_logits, make_batch

TYPES = supported_model_types()


def read_all(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def logits(model, ids, mask, like=None):
    return forward_logits(model, ids, mask, like=like)


@pytest.mark.parametrize("model_type", TYPES)
def test_reference_save_load_export_is_byte_identical(model_type, tiny_checkpoint, tmp_path):
    folder, ref = tiny_checkpoint(model_type)
    ours = llmzoo.from_pretrained(folder)
    out = llmzoo.save_pretrained(ours, tmp_path / "export", max_shard_size="20KB")
    assert len(list(out.glob("*.safetensors"))) >= 3
    a, b = read_all(folder), read_all(out)
    ignored = {n for n in a if n.endswith("inv_freq")}
    assert set(a) - ignored == set(b)
    for name in b:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].contiguous().view(torch.uint8).equal(b[name].view(torch.uint8)), name


@pytest.mark.parametrize("model_type", TYPES)
def test_export_loads_in_reference(model_type, tiny_checkpoint, tmp_path, hf_warnings):
    """llmzoo export → the reference implementation (transformers, or the published-code reference)
    loads it without a warning → same logits."""
    folder, _ = tiny_checkpoint(model_type)
    ours = llmzoo.from_pretrained(folder)
    ours.hf_model_type = None  # export must find the type from the config's family / content
    out = llmzoo.save_pretrained(ours, tmp_path / "export", model_type=model_type)
    with hf_warnings() as said:
        ref = get_adapter(model_type).load_reference(str(out), torch.float32)
    assert not said, f"transformers warned loading the export: {said[:3]}"
    ids, mask = make_batch(ours.config.vocab_size, 20, seed=3)
    keep = mask.bool()
    assert (logits(ours, ids, mask)[keep] - logits(ref, ids, mask, like=ours)[keep]).abs().max() <= 1e-4


def _one_zoo_entry_per_family():
    """(zoo name, model_type): the first zoo entry of each family an adapter exports to."""
    seen, out = set(), []
    for name in llmzoo.list_models():
        try:
            family = llmzoo.get_config(name).family
        except Exception:
            continue
        for t in TYPES:
            if family in get_adapter(t).families and family not in seen:
                seen.add(family)
                out.append((name, t))
    return out


@pytest.mark.parametrize("name, model_type", _one_zoo_entry_per_family())
def test_tiny_zoo_export_loads_in_reference(name, model_type, tmp_path, hf_warnings):
    """`llmzoo tiny NAME --out DIR`: a scaled-down zoo config becomes a checkpoint that transformers
    itself (or the published-code reference) loads without a warning, with the same logits."""
    from llmzoo.cli import main
    from llmzoo.scaling import scale_down

    assert main(["tiny", name, "--out", str(tmp_path), "--seed", "1"]) == 0
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == model_type
    ours = llmzoo.from_pretrained(tmp_path)
    assert ours.config.d_model == scale_down(llmzoo.get_config(name), preset="tiny").d_model
    with hf_warnings() as said:
        ref = get_adapter(model_type).load_reference(str(tmp_path), torch.float32)
    assert not said, f"transformers warned loading the tiny {name}: {said[:3]}"
    ids, mask = make_batch(ours.config.vocab_size, 20, seed=4)
    keep = mask.bool()
    assert (logits(ours, ids, mask)[keep] - logits(ref, ids, mask, like=ours)[keep]).abs().max() <= 1e-4


def test_closest_zoo_entry_is_named(tmp_path):
    from llmzoo.hf.adapter import closest_zoo_entry

    adapter = get_adapter("mistral")
    config = adapter.to_config(adapter.export_config(llmzoo.get_config("mistral-7b")))
    assert closest_zoo_entry(config) == ("mistral-7b", [])
    hf = adapter.export_config(llmzoo.get_config("mistral-7b"))
    config = adapter.to_config({**hf, "rope_theta": 1e6})
    name, diff = closest_zoo_entry(config)
    assert name == "mistral-7b" and diff == ["position.theta: 10000.0 became 1000000.0"]


def test_single_safetensors_file_and_dtype(tiny_checkpoint, tmp_path):
    folder, ref = tiny_checkpoint("gemma")
    llmzoo.save_pretrained(llmzoo.from_pretrained(folder), tmp_path, max_shard_size="1GB")
    assert (tmp_path / "model.safetensors").is_file()
    ours = llmzoo.from_pretrained(tmp_path / "model.safetensors", dtype="bfloat16")
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    assert ours.config.head.tied and not any(n.startswith("head") for n, _ in ours.named_parameters())


def test_pickle_bin_checkpoint_loads_weights_only(tiny_checkpoint, tmp_path):
    folder, ref = tiny_checkpoint("qwen2")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    ours = llmzoo.from_pretrained(tmp_path)
    ids, mask = make_batch(ours.config.vocab_size, 20, seed=5)
    keep = mask.bool()
    assert (logits(ours, ids, mask)[keep] - logits(ref, ids, mask)[keep]).abs().max() <= 1e-4

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model.norm.weight": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(llmzoo.hf.loader.CheckpointError, match="weights-only"):
        llmzoo.from_pretrained(tmp_path)


def test_hub_id_from_prefilled_cache(tiny_checkpoint, tmp_path):
    """A hub id resolves through the HF cache layout with HF_HUB_OFFLINE=1 (no network)."""
    folder, _ = tiny_checkpoint("llama")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = textwrap.dedent("""
        import llmzoo
        m = llmzoo.from_pretrained("acme/tiny-llama")
        print("OK", m.config.n_layers, m.config.reference.hf_repo)
        try:
            llmzoo.from_pretrained("acme/not-cached")
        except Exception as e:
            print("ERR", type(e).__name__, "HF_HUB_OFFLINE=1" in str(e))
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "OK 3 acme/tiny-llama" in out.stdout, out.stderr
    assert "ERR CheckpointError True" in out.stdout, out.stderr


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    """A ~355 MB float32 llama checkpoint in 60 MB shards, written by a separate process."""
    folder = tmp_path_factory.mktemp("big")
    writer = textwrap.dedent(f"""
        import json, torch, llmzoo
        hf = {{"model_type": "llama", "vocab_size": 8000, "hidden_size": 1024, "intermediate_size": 2560,
              "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 8,
              "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": False}}
        config = llmzoo.hf.get_adapter("llama").to_config(hf)
        llmzoo.save_pretrained(llmzoo.build(config), {str(folder)!r}, model_type="llama", max_shard_size="60MB")
    """)
    subprocess.run([sys.executable, "-c", writer], check=True, timeout=300)
    return folder


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_peak_memory_is_one_copy(big_checkpoint, dtype):
    """Load a few-hundred-MB checkpoint in a fresh process and touch every weight: peak RSS stays
    within 1.3x the model's bytes above the baseline measured in that process before loading (the
    interpreter plus one-time library set-up: imports, the zoo index, a first meta build)."""
    loader = textwrap.dedent(f"""
        import json, resource, torch, llmzoo
        from llmzoo.hf import get_adapter
        from llmzoo.hf.adapter import closest_zoo_entry
        hf = json.load(open({str(big_checkpoint / "config.json")!r}))
        config = get_adapter("llama").to_config(hf)
        closest_zoo_entry(config)
        with torch.device("meta"):
            llmzoo.CausalLM(config)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        m = llmzoo.from_pretrained({str(big_checkpoint)!r}, dtype={dtype!r})
        with torch.no_grad():  # fault every page in: mmap-backed weights count once touched
            total = sum(float(p.sum()) for p in m.parameters())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        nbytes = sum(p.numel() * p.element_size() for p in m.parameters())
        print(base, peak, nbytes)
    """)
    out = subprocess.run([sys.executable, "-c", loader], capture_output=True, text=True, timeout=300)
    base, peak, nbytes = map(int, out.stdout.split())
    assert nbytes > (300e6 if dtype is None else 150e6)
    print(f"dtype {dtype}: peak RSS above baseline {(peak - base) / 1e6:.0f} MB for {nbytes / 1e6:.0f} MB "
          f"of weights ({(peak - base) / nbytes:.2f}x)")
    assert peak - base <= 1.3 * nbytes, f"peak {peak / 1e6:.0f} MB, baseline {base / 1e6:.0f} MB, model {nbytes / 1e6:.0f} MB"
