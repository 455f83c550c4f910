"""llmzoo.linear: the split few-row product equals F.linear, and is taken exactly where its policy says."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmzoo
from llmzoo import linear as lin


@pytest.fixture
def policy(monkeypatch):
    """Split every float32 CPU product up to 64 rows (min_numel 0) on two threads; returns a setter."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)

    def set_policy(**kw):
        monkeypatch.setattr(lin, "SPLIT", dataclasses.replace(lin.SplitPolicy(min_numel=0), **kw))

    set_policy()
    yield set_policy
    torch.set_num_threads(threads)


def _weight(n_out: int, n_in: int, column_major: bool, g: torch.Generator) -> torch.Tensor:
    w = torch.randn(n_out, n_in, generator=g) / n_in**0.5
    return w.t().contiguous().t() if column_major else w


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # the policy is constant
@given(n_out=st.integers(128, 700), n_in=st.integers(1, 80), lead=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       column_major=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_split_equals_f_linear(policy, n_out, n_in, lead, column_major, bias, seed):
    g = torch.Generator().manual_seed(seed)
    w = _weight(n_out, n_in, column_major, g)
    b = torch.randn(n_out, generator=g) if bias else None
    x = torch.randn(*lead, n_in, generator=g)
    assert lin._blocks(x, w, b) >= 2  # the split path, not F.linear
    y = lin.linear(x, w, b)
    assert y.shape == (*lead, n_out) and y.is_contiguous()
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_blocks_per_layout(policy):
    x = torch.randn(1, 256)
    assert lin._blocks(x, torch.randn(4096, 256), None) == 2 * 4  # row-major: blocks_per_thread per thread
    assert lin._blocks(x, torch.randn(256, 4096).t(), None) == 2  # column-major view: one per thread
    assert lin._blocks(x, torch.randn(192, 256), None) == 3  # at least 64 output features a block


@pytest.mark.parametrize("case", ["bfloat16", "rows", "small", "disabled", "one thread", "grad", "compiling"])
def test_plain_f_linear_outside_the_policy(policy, monkeypatch, case):
    w, x = torch.randn(512, 64), torch.randn(3, 64)
    if case == "bfloat16":
        w, x = w.bfloat16(), x.bfloat16()
    elif case == "rows":
        x = torch.randn(65, 64)
    elif case == "small":
        policy(min_numel=512 * 64 + 1)
    elif case == "disabled":
        policy(enabled=False)
    elif case == "one thread":
        torch.set_num_threads(1)
    elif case == "grad":
        w.requires_grad_(True)
    elif case == "compiling":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert lin._blocks(x, w, None) == 1
    with torch.no_grad() if case != "grad" else torch.enable_grad():
        assert torch.equal(lin.linear(x, w), F.linear(x, w))


def test_linear_module_is_nn_linear(policy):
    m = lin.Linear(64, 300)
    assert isinstance(m, torch.nn.Linear) and set(m.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 1, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), F.linear(x, m.weight, m.bias), rtol=1e-5, atol=1e-5)
    y = m(x)  # with gradients: F.linear, differentiable as ever
    y.sum().backward()
    assert m.weight.grad is not None and m.weight.grad.shape == m.weight.shape


@pytest.mark.parametrize("name", ["gpt-2-small", "qwen-2.5-0.5b", "deepseek-v2-lite"])
def test_model_logits_and_generation_with_split(policy, monkeypatch, loud, name):
    """A tiny model with every linear (and the tied head) split: the logits of F.linear, the same greedy tokens."""
    model = loud(llmzoo.build(name, scale="tiny"), seed=5).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    split_weights = set()
    real = lin._blocks

    def spy(x, w, bias):
        blocks = real(x, w, bias)
        if blocks >= 2:
            split_weights.add(id(w))
        return blocks

    policy(enabled=False)
    with torch.no_grad():
        plain = model(ids)
    want = llmzoo.generate(model, ids[:1], max_new_tokens=6)
    policy()
    monkeypatch.setattr(lin, "_blocks", spy)
    with torch.no_grad():
        split = model(ids)
    got = llmzoo.generate(model, ids[:1], max_new_tokens=6)
    wide = {id(w) for w in model.linear_weights() if w.shape[0] >= 128}  # ≥ 2 blocks of 64 features
    assert wide and split_weights == wide  # every such matrix, the tied head included, went through the split
    torch.testing.assert_close(split, plain, rtol=1e-4, atol=1e-4)
    assert torch.equal(got, want)
