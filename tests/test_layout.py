"""tune_layout: a weight's storage order changes, nothing else (values, names, ties, export)."""

from __future__ import annotations

import pytest
import torch

import llmzoo
from llmzoo.layout import tune_layout

ALWAYS_COLUMN = -1e9  # min_gain: column-major wins whatever the timings
NEVER_COLUMN = 1.0  # column-major would have to take no time


def _column_major(w: torch.Tensor) -> bool:
    return w.stride() == (1, w.shape[0])


def _row_major(w: torch.Tensor) -> bool:
    return w.stride() == (w.shape[1], 1)


@pytest.mark.parametrize("name", ["gpt-2-small", "qwen-2.5-0.5b", "llama-2-7b", "deepseek-v2-lite"])
def test_layout_changes_strides_not_logits(name, loud):
    model = loud(llmzoo.build(name, scale="tiny"), seed=3).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids)
    names = {n for n, _ in model.named_parameters()}
    n_matrices = len({id(w) for w in model.linear_weights()})

    choices = tune_layout(model, rows=(1, 3), repeats=1, min_gain=ALWAYS_COLUMN)
    assert sum(c.count for c in choices) == n_matrices
    assert all(c.column_major and c.row_major_s > 0 and c.column_major_s > 0 for c in choices)
    assert all(_column_major(w) for w in model.linear_weights())
    assert {n for n, _ in model.named_parameters()} == names
    with torch.no_grad():
        torch.testing.assert_close(model(ids), before, rtol=1e-5, atol=1e-5)

    tune_layout(model, rows=(1,), repeats=1, min_gain=NEVER_COLUMN)
    assert all(_row_major(w) for w in model.linear_weights())
    with torch.no_grad():
        torch.testing.assert_close(model(ids), before, rtol=1e-5, atol=1e-5)


def test_tied_head_moves_with_the_embedding(loud):
    model = loud(llmzoo.build("qwen-2.5-0.5b", scale="tiny"), seed=1).eval()
    assert model.config.head.tied and model.head is None
    tune_layout(model, repeats=1, min_gain=ALWAYS_COLUMN)
    assert _column_major(model.embed.weight)
    assert any(w is model.embed.weight for w in model.linear_weights())  # the head reads the same tensor
    ids = torch.tensor([[5, 7, 9]])
    expected = model.embed.weight.detach().contiguous()[ids]
    torch.testing.assert_close(model.embed(ids), expected, rtol=0, atol=0)


def test_column_major_model_exports_and_reloads(tmp_path, loud):
    model = loud(llmzoo.build("llama-2-7b", scale="tiny"), seed=2).eval()
    tune_layout(model, repeats=1, min_gain=ALWAYS_COLUMN)
    llmzoo.save_pretrained(model, tmp_path / "out")
    again = llmzoo.from_pretrained(tmp_path / "out")
    ids = torch.randint(0, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["mistral-7b", "deepseek-v2-lite"])  # deepseek: the absorbed MLA path reads kv_b raw
def test_generation_after_tuning_is_the_same(name, loud):
    model = loud(llmzoo.build(name, scale="tiny"), seed=4).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(2))
    before = llmzoo.generate(model, ids, max_new_tokens=6)
    tune_layout(model, rows=(1, 2), repeats=1, min_gain=ALWAYS_COLUMN)
    assert torch.equal(llmzoo.generate(model, ids, max_new_tokens=6), before)


@pytest.mark.parametrize("variant, arms", [("layout", ("loaded", "tuned")), ("split", ("plain", "split"))])
def test_ab_script_runs(tmp_path, loud, variant, arms):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_ab.py"
    spec = importlib.util.spec_from_file_location("bench_ab", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    llmzoo.save_pretrained(loud(llmzoo.build("llama-2-7b", scale="tiny"), seed=5), tmp_path / "ckpt")
    res = script.main([str(tmp_path / "ckpt"), "--variant", variant, "--batches", "1", "2", "--prompt-len", "4",
                       "--new-tokens", "3", "--rounds", "2", "--out", str(tmp_path / "ab.json")])
    assert res["arms"] == list(arms) and set(res["batches"]) == {"1", "2"} and (tmp_path / "ab.json").exists()
    for r in res["batches"].values():
        assert r[f"{arms[0]}_ms"] > 0 and r[f"{arms[1]}_ms"] > 0 and r["spread"][0] <= r["spread"][1]
    assert llmzoo.linear.SPLIT.enabled  # the split arm's switch is put back
