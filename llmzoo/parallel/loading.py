"""Sharded loading: each rank reads only the blocks of each checkpoint tensor it holds, through the
one load pipeline (llmzoo.hf.loader: plan → sliced read → the rules' transforms in `lazy` form → place)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh

from ..builder import build_meta, resolve_dtype
from ..hf.loader import SliceReader, load, open_checkpoint  # noqa: F401  (SliceReader: its old home)
from .sharding import _local, local_region, parallelize


def _local_block(t: Tensor) -> tuple[tuple, Tensor]:
    """(region of the global tensor, local tensor) of the block this rank holds: the pipeline's `local`."""
    _, offset, local = local_region(t)
    return tuple(slice(o, o + n) for o, n in zip(offset, local)), _local(t)


@torch.no_grad()
def load_hf_sharded(model: nn.Module, source, device: str | torch.device = "cpu", strict: bool = True) -> dict:
    """Fill a parallelized (meta or materialised) model from a checkpoint, each rank reading only the
    blocks of each tensor it holds: llmzoo.hf.loader's pipeline with sliced reads (the rules'
    transforms in their `lazy` forms; block-quantised weights dequantised per block).
    Returns {"bytes_read": this rank's bytes, "bytes_total": the checkpoint's bytes}."""
    ckpt = open_checkpoint(source, model.config)
    return load(model, ckpt, device=device, strict=strict, local=_local_block)


def from_pretrained_sharded(source, mesh: DeviceMesh, *, tp: str | None = "tp", fsdp: str | None = "dp",
                            ep: bool = False, dtype: str | torch.dtype | None = None,
                            device: str | torch.device = "cpu") -> nn.Module:
    """config → meta model → `parallelize` → sliced load: no rank ever holds the whole model."""
    ckpt = open_checkpoint(source)
    model = build_meta(ckpt.config)
    if dtype is not None:
        model = model.to(resolve_dtype(dtype))
    parallelize(model, mesh, tp=tp, fsdp=fsdp, ep=ep)
    model.load_stats = load(model, ckpt, device=device, local=_local_block)
    if ckpt.model_type is not None:
        model.hf_model_type = ckpt.model_type
    return model.eval()

