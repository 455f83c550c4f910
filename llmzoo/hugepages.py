"""Fresh CPU tensors backed by transparent huge pages, for the copies a load makes.

A load that casts, stacks or concatenates writes the model's bytes into freshly allocated memory,
and with 4 KiB pages that time is page faults: one per 4 KiB (on a VM each costs an exit). Asking
the kernel for 2 MiB pages (`madvise(MADV_HUGEPAGE)`, Linux transparent huge pages in "madvise"
mode) before the first write makes it 512× fewer faults — what c10's `THP_MEM_ALLOC_ENABLE=1` does
for every allocation of a process, here only for the loader's own copies. Elsewhere, or where the
call fails, the tensor is a plain `torch.empty`.
"""

from __future__ import annotations

import ctypes
import sys

import torch
from torch import Tensor

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14  # <asm-generic/mman-common.h>


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        f = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    f.argtypes, f.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return f


_MADVISE = _madvise()


def advise_huge(t: Tensor) -> bool:
    """Ask for huge pages under the 2 MiB-aligned interior of `t`'s storage (before it is written)."""
    if _MADVISE is None or t.device.type != "cpu":
        return False
    start = t.untyped_storage().data_ptr()
    lo = -(-start // HUGE_PAGE) * HUGE_PAGE
    hi = (start + t.untyped_storage().nbytes()) // HUGE_PAGE * HUGE_PAGE
    return hi > lo and _MADVISE(lo, hi - lo, MADV_HUGEPAGE) == 0


def _advised(t: Tensor) -> Tensor:
    if t.numel() * t.element_size() >= 2 * HUGE_PAGE:
        advise_huge(t)
    return t


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> Tensor:
    """torch.empty on the CPU, huge pages asked for when it spans at least two."""
    return _advised(torch.empty(shape, dtype=dtype))


def copy_to(t: Tensor, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """`t.to(device, dtype)` (same layout: a transposed view stays transposed, as `to` keeps a dense
    tensor's strides); a CPU copy (a cast) lands in huge-page memory."""
    if torch.device(device).type != "cpu" or (t.dtype == dtype and t.device.type == "cpu"):
        return t.to(device=device, dtype=dtype)
    return _advised(torch.empty_like(t, dtype=dtype, device="cpu")).copy_(t)
