"""Memory per rank of a `parallelize` split, from the config alone (meta device)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..builder import build
from ..errors import ConfigError
from ..params import count_params, dtype_bytes, kv_cache_bytes
from ..zoo import get_config
from .plan import local_config
from .styles import ColwiseParallel, ExpertShards, RowwiseParallel, ShardParams


def _chunk(n: int, parts: int, rank: int) -> int:
    """Rows of rank `rank` when n rows are split like torch.chunk (DTensor Shard, FSDP2)."""
    c = -(-n // parts)
    return max(0, min(n, (rank + 1) * c) - rank * c)


def _tp_dims(model: nn.Module, tp: int, ep: bool) -> dict[str, int | None]:
    """Parameter name → the dim its tensor-parallel style shards (None: replicated), from the plans."""
    dims: dict[str, int | None] = {}
    for fqn, style in model.tp_plan(tp, ep=ep).items():
        module = model.get_submodule(fqn)
        for n, _ in module.named_parameters(recurse=False):
            if isinstance(style, ExpertShards):
                d = style.dim(n)
            elif isinstance(style, ShardParams):
                d = style.dims.get(n)
            elif isinstance(style, ColwiseParallel):
                d = 1 if isinstance(module, nn.Embedding) else 0
            elif isinstance(style, RowwiseParallel):
                d = 0 if isinstance(module, nn.Embedding) else (1 if n == "weight" else None)
            else:
                d = None
            dims[f"{fqn}.{n}"] = d
    if model.head is None and getattr(model, "head_bias", None) is not None:
        dims["head_bias"] = 0
    return dims


def memory_estimate(source, *, tp: int = 1, dp: int = 1, ep: bool | str = False, dtype: str | torch.dtype = "bfloat16",
                    seq_len: int = 4096, batch: int = 1) -> dict[str, int]:
    """Bytes per rank of a (dp × tp) `parallelize` split, from the config alone (meta device).

    params: the largest rank's parameter shards (tensor-parallel plans, then FSDP2 over dp), exactly
    what `param_bytes` measures on that rank; params_ideal: count_params / (tp · dp);
    ep: as in `parallelize` (True: experts over the tp ranks; "dp": over the dp ranks, outside FSDP2);
    kv_cache: kv_cache_bytes of the rank's heads (local_config) for ⌈batch / dp⌉ sequences."""
    for flag, value in (("tp", tp), ("dp", dp), ("batch", batch), ("seq_len", seq_len)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"memory_estimate: {flag}={value!r} must be a positive integer")
    config = get_config(source)
    itemsize = dtype_bytes(dtype)
    model = build(config, device="meta")
    if isinstance(ep, str) and ep != "dp":
        raise ValueError(f"ep: {ep!r} is not one of True, False, 'dp'")
    dims = _tp_dims(model, tp, ep is True) if tp > 1 else {}
    a2a = {n for n, _ in model.named_parameters() if ".experts." in n} if ep == "dp" else set()
    per_rank = [[0] * dp for _ in range(tp)]
    for name, p in model.named_parameters():
        for t in range(tp):
            shape = list(p.shape)
            d = dims.get(name) if name not in a2a else None
            if d is not None:
                shape[d] = _chunk(shape[d], tp, t)
            for r in range(dp):  # FSDP2's dim-0 shard, or the all-to-all expert split
                local = shape[:]
                if local:
                    local[0] = _chunk(local[0], dp, r)
                per_rank[t][r] += math.prod(local)
    total = count_params(config).total
    return {
        "params": math.ceil(max(max(r) for r in per_rank) * itemsize),
        "params_ideal": math.ceil(total * itemsize / (tp * dp)),
        "params_total": math.ceil(total * itemsize),
        "kv_cache": kv_cache_bytes(local_config(config, tp), seq_len, -(-batch // dp), dtype),
    }

