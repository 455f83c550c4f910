"""Remote-code types (chatglm, baichuan, internlm2): `llmzoo tiny NAME --out DIR` writes the hub repo's
configuration_/modeling_ files and `auto_map`, so transformers itself opens the folder with
trust_remote_code, offline, without a warning, and computes llmzoo's logits."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
import torch

import llmzoo
from llmzoo.cli import main
from llmzoo.hf import get_adapter, supported_model_types
from llmzoo.parity import forward_logits, loud_init_, make_batch

REMOTE = [t for t in supported_model_types() if get_adapter(t).remote_code]


def remote_entries() -> list[tuple[str, str]]:
    """(zoo name, model_type) for every zoo entry a remote-code type exports (both Baichuan 2 layouts)."""
    out = []
    for name in llmzoo.list_models():
        family = llmzoo.get_config(name).family
        out += [(name, t) for t in REMOTE if family in get_adapter(t).families]
    return out


def test_every_remote_code_type_writes_hub_code():
    assert set(REMOTE) == {"chatglm", "baichuan", "internlm2"}
    assert all(get_adapter(t).hub_code is not None for t in REMOTE)
    assert {t for _, t in remote_entries()} == set(REMOTE)


@pytest.mark.parametrize("model_type", REMOTE)
def test_modeling_file_is_the_reference_verbatim(model_type):
    code = get_adapter(model_type).hub_code
    files = code.files(model_type)
    assert inspect.getsource(code.module) in files[f"modeling_{model_type}.py"]  # one source of truth
    assert "import llmzoo" not in "".join(files.values()) and "from llmzoo" not in "".join(files.values())


@pytest.mark.parametrize("name, model_type", remote_entries())
def test_tiny_folder_opens_in_transformers(name, model_type, tmp_path, monkeypatch, hf_warnings, capsys):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / name
    assert main(["tiny", name, "--out", str(folder), "--seed", "2", "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "note:" not in said and f"modeling_{model_type}.py" in said
    hf = json.loads((folder / "config.json").read_text())
    assert hf["auto_map"]["AutoModelForCausalLM"] == f"modeling_{model_type}.{hf['architectures'][0]}"
    with hf_warnings() as warned:
        ref = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
    assert not warned, f"transformers warned opening the tiny {name}: {warned[:3]}"
    assert type(ref).__name__ == hf["architectures"][0] and not hasattr(transformers, type(ref).__name__)

    # loud weights (norm gains 1 ± 0.3, biases, 1/sqrt(fan_in) matrices) through save_pretrained's files
    ours = loud_init_(llmzoo.from_pretrained(folder), seed=3)
    llmzoo.save_pretrained(ours, tmp_path / "loud", max_shard_size="200KB")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "loud", trust_remote_code=True,
                                                            dtype=torch.float32).eval()
    ids, mask = make_batch(ours.config.vocab_size, 24, pad=5, seed=5)  # padded batch past the tiny windows
    with torch.no_grad():
        theirs = ref(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    mine = forward_logits(ours, ids, mask)
    assert mine[keep].abs().max() > 1.0  # loud: 1e-4 is a real bound
    assert (mine[keep] - theirs[keep]).abs().max() <= 1e-4  # fp32


def test_generate_runs_on_a_remote_code_tiny_folder(tmp_path):
    folder = tmp_path / "chatglm"
    assert main(["tiny", "chatglm-6b", "--out", str(folder), "--quiet"]) == 0
    run = subprocess.run([sys.executable, "-m", "llmzoo", "generate", str(folder), "--prompt", "hello",
                          "--max-new-tokens", "4", "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert run.stdout.strip()
