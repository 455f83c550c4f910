"""The loader's huge-page copies: same values and layout as the plain torch ops they replace."""

from __future__ import annotations

import torch

from llmzoo import hugepages
from llmzoo.hf.rules import Concat, StackExperts


def test_cast_keeps_values_and_layout():
    src = torch.randn(1536, 1024).t()  # a transposed view, as GPT-2's Conv1D weights load
    out = hugepages.copy_to(src, torch.bfloat16, "cpu")
    assert out.stride() == src.to(torch.bfloat16).stride() == (1, 1024)
    assert torch.equal(out, src.to(torch.bfloat16))
    same = torch.randn(8, 8)
    assert hugepages.copy_to(same, torch.float32, "cpu") is same  # nothing to copy: no copy


def test_joining_transforms_equal_cat_and_stack():
    xs = [torch.randn(700, 1024) for _ in range(3)]  # > 4 MiB out: the huge-page buffer is used
    assert torch.equal(Concat(dim=0).forward(xs)[0], torch.cat(xs, 0))
    assert torch.equal(Concat(dim=-1).forward(xs)[0], torch.cat(xs, -1))
    assert torch.equal(StackExperts().forward(xs)[0], torch.stack(xs))
    mixed = [torch.randn(4, 3), torch.randn(4, 3, dtype=torch.float64)]
    assert Concat().forward(mixed)[0].dtype == torch.cat(mixed).dtype  # promotion as torch.cat


def test_joining_under_autograd_keeps_the_graph():
    xs = [torch.randn(4, 3, requires_grad=True) for _ in range(2)]
    y = Concat().forward(xs)[0]
    y.sum().backward()
    assert all(torch.equal(x.grad, torch.ones(4, 3)) for x in xs)


def test_advise_reports_what_the_kernel_said():
    big = hugepages.empty((2048, 2048), torch.float32)  # 16 MiB: spans huge pages
    assert big.shape == (2048, 2048) and big.dtype == torch.float32
    small = torch.empty(16)
    assert hugepages.advise_huge(small) is False  # no whole 2 MiB page inside: nothing asked
