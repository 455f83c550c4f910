"""Weight layouts chosen by measurement: row- or column-major storage for each matrix a linear reads.

`F.linear(x, W)` computes x Wᵀ from a (out, in) matrix stored either way — row-major (strides
(in, 1), as a checkpoint stores it) or column-major (strides (1, out): the (in, out) transpose,
contiguous) — and gives the same values (summation order aside). The BLAS kernels behind it are not
equally fast on both: on a Zen 4 CPU (docs/performance.md), MKL's fp32 product of one row with a
(151936, 896) matrix streamed a column-major matrix at ~22 GB/s and a row-major one at ~12 GB/s, while
a (896, 4864) matrix was faster row-major. No rule of thumb holds across CPUs, BLAS builds, dtypes
and thread counts, so `tune_layout` times both storages of every distinct (shape, dtype) with the
product the forward runs (`llmzoo.linear`: few-row float32 products split across threads) at the
row counts a caller will run (decode: its batch) and keeps the faster. Only strides change: a parameter
keeps its shape, name, dtype and values, so state_dict, export and parity read it as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .hugepages import empty
from .linear import linear


@dataclass(frozen=True)
class LayoutChoice:
    """One (out, in, dtype) shape's timings (median seconds per product, summed over the row counts)."""

    shape: tuple[int, int]
    dtype: torch.dtype
    row_major_s: float
    column_major_s: float
    column_major: bool
    count: int  # matrices of this shape and dtype in the model


def _median_time(x: Tensor, w: Tensor, repeats: int) -> float:
    linear(x, w)  # warm: first-call allocations, BLAS dispatch
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        linear(x, w)
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def column_major(w: Tensor) -> Tensor:
    """The same (out, in) values stored as their contiguous (in, out) transpose."""
    return empty((w.shape[1], w.shape[0]), w.dtype).copy_(w.t()).t()


def _is_column_major(w: Tensor) -> bool:
    return w.dim() == 2 and w.stride() == (1, w.shape[0])


@torch.no_grad()
def tune_layout(
    model: nn.Module, rows: tuple[int, ...] = (1,), repeats: int = 3, min_gain: float = 0.1
) -> list[LayoutChoice]:
    """Store each CPU matrix of `model.linear_weights()` in the faster of its two layouts, timed per
    distinct (shape, dtype) with the product the forward runs (llmzoo.linear) on `rows`-row inputs (decode: the batch sizes it will run;
    the sum over them decides). A matrix goes column-major only when that is `min_gain` faster;
    otherwise it is stored row-major. Tied matrices (a head that is the embedding) move together.
    Returns one LayoutChoice per shape. Matrices off the CPU are left as they are."""
    weights = {id(w): w for w in model.linear_weights() if w.device.type == "cpu" and w.dim() == 2}
    by_shape: dict[tuple, list[nn.Parameter]] = {}
    for w in weights.values():
        by_shape.setdefault((tuple(w.shape), w.dtype), []).append(w)
    choices, new = [], {}
    for (shape, dtype), ws in by_shape.items():
        w = ws[0]
        row = w if not _is_column_major(w) else w.contiguous()
        col = w if _is_column_major(w) else column_major(w)
        xs = [torch.randn(n, shape[1], dtype=dtype) for n in rows]
        t_row = sum(_median_time(x, row, repeats) for x in xs)
        t_col = sum(_median_time(x, col, repeats) for x in xs)
        use_col = t_col < (1 - min_gain) * t_row
        choices.append(LayoutChoice(shape, dtype, t_row, t_col, use_col, len(ws)))
        timed = col if use_col else row  # the first matrix's copy in the chosen layout: kept, not made again
        for p in ws:
            if use_col != _is_column_major(p):
                stored = timed if p is w else column_major(p) if use_col else p.contiguous()
                new[id(p)] = nn.Parameter(stored, requires_grad=p.requires_grad)
        del row, col, timed
    for module in model.modules():  # every reference to a moved parameter, tied ones included
        for name, p in module._parameters.items():
            if p is not None and id(p) in new:
                module._parameters[name] = new[id(p)]
    return choices
