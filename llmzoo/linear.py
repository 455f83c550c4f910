"""y = x Wᵀ + b, with few-row float32 products on the CPU split across threads.

Decode multiplies one row per sequence by every matrix of the model, so on a CPU its step is a
stream of few-row products, memory-bound: at best each reads its matrix once at the bandwidth the
threads can pull. MKL's float32 sgemm does not get there for a handful of rows: on the Zen 3 CPU of
docs/performance.md a (1, 768) × (768, 50257)ᵀ product runs on one thread (the same time with 1 or 2
threads) at ~10 GB/s where a `sum` over the same bytes reads 22 GB/s. Cutting W into blocks of
output features and running them as one `bmm` (each block its own small sgemm, the blocks spread
over the threads) reads the same bytes faster: median 1.2–1.8× over the matrices it splits at 1–64
rows (up to 2.8×; scripts/bench_linear.py). `linear` does that where it
pays (float32 on a CPU, at most `SPLIT.max_rows` rows, a weight of at least `SPLIT.min_numel`
elements, more than one thread, plain tensors, no autograd, not under torch.compile) and is
`F.linear` everywhere else; each output element is the same dot product, summed in another order.
bfloat16 goes to oneDNN, which already threads few-row products: it is left alone.

`Linear` is `nn.Linear` with that forward: same parameters, names and init, so checkpoints, export,
tensor parallelism (DTensor weights take `F.linear`) and `isinstance(m, nn.Linear)` see no change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class SplitPolicy:
    """When `linear` splits a product into output-feature blocks (measured in docs/performance.md).

    enabled: False makes `linear` plain F.linear. max_rows: rows of x (all dims but the last) up to
    which it splits (decode and short prompts; bigger products are compute-bound and MKL threads them).
    min_numel: smallest weight it splits (below, the extra ops cost more than they save).
    blocks_per_thread: blocks per intra-op thread for a row-major weight; a column-major one (a
    transposed view, e.g. GPT-2's Conv1D) gets one block per thread, its blocks' columns being
    strided reads that get shorter as the blocks get narrower."""

    enabled: bool = True
    max_rows: int = 64
    min_numel: int = 1 << 20
    blocks_per_thread: int = 4


SPLIT = SplitPolicy()


def _blocks(x: Tensor, w: Tensor, bias: Tensor | None) -> int:
    """How many output-feature blocks to split x Wᵀ into; 1 = don't."""
    p = SPLIT
    if not p.enabled or x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32:
        return 1
    if w.dim() != 2 or w.numel() < p.min_numel or x.numel() > p.max_rows * x.shape[-1]:
        return 1
    if type(w) not in (Tensor, nn.Parameter) or (bias is not None and type(bias) not in (Tensor, nn.Parameter)):
        return 1  # DTensor, subclasses: their own dispatch
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        return 1
    if torch.compiler.is_compiling():
        return 1  # the compiler picks its own kernels
    threads = torch.get_num_threads()
    if threads < 2:
        return 1
    blocks = threads * (p.blocks_per_thread if w.stride(1) == 1 else 1)
    return min(blocks, w.shape[0] // 64)


def linear(x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, w, bias): x (..., in), w (out, in) → (..., out); see the module docstring."""
    c = _blocks(x, w, bias)
    if c < 2:
        return F.linear(x, w, bias)
    n_out, n_in = w.shape
    rows = x.reshape(-1, n_in)  # (R, in)
    n = n_out // c * c
    blocks = w[:n].unflatten(0, (c, n // c)).transpose(1, 2)  # (c, in, out/c), a view
    y = torch.bmm(rows.expand(c, *rows.shape), blocks)  # (c, R, out/c)
    y = y.transpose(0, 1).reshape(rows.shape[0], n)  # (R, n)
    if n < n_out:  # the last out % c features
        y = torch.cat([y, F.linear(rows, w[n:])], dim=1)
    if bias is not None:
        y += bias
    return y.view(*x.shape[:-1], n_out)


class Linear(nn.Linear):
    """nn.Linear whose forward is `linear` (few-row float32 CPU products split across threads)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
