"""The plan vocabulary of tensor parallelism: what a component's `tp_plan` may name.

A leaf that components import at top level (`from .parallel import plan`; `plan.ColwiseParallel()`).
The styles themselves (`ColwiseParallel`, `RowwiseParallel`, `Replicate`, `ReplicatedHeads`,
`SumGradColumns`, `ExpertShards`, `ExpertAllToAll`: llmzoo.parallel.styles) need torch's DTensor,
whose import costs about a second, so they load on first use: building or running a model never
pays for it, only planning a split does. `head_split` and `local_config` give a rank's heads.
"""

from __future__ import annotations

import importlib

STYLES = ("ColwiseParallel", "ExpertAllToAll", "ExpertShards", "ParallelStyle", "Replicate", "ReplicatedHeads",
          "RowwiseParallel", "ShardParams", "SumGradColumns")
__all__ = [*STYLES, "head_split", "local_config"]


def __getattr__(name: str):
    if name in STYLES:
        return getattr(importlib.import_module(f"{__package__}.styles"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def head_split(n_heads: int, n_kv_heads: int, tp: int, where: str = "attention") -> tuple[int, int]:
    """(query heads, KV heads) per rank: heads split evenly; with fewer KV heads than ranks
    (MQA, GQA with n_kv_heads < tp) every rank keeps the one KV head its queries share."""
    if n_heads % tp:
        raise ValueError(f"{where}: n_heads ({n_heads}) is not divisible by tp ({tp})")
    if n_kv_heads % tp and tp % n_kv_heads:
        raise ValueError(f"{where}: n_kv_heads ({n_kv_heads}) neither divides nor is a multiple of tp ({tp})")
    return n_heads // tp, max(1, n_kv_heads // tp)


def local_config(config, tp: int):
    """The config as one tensor-parallel rank sees its attention: per-rank query and KV heads (MLA's
    latent stays whole). Used to size a rank's KV cache (StaticCache, kv_cache_bytes)."""
    blocks = [b.model_copy(update={"attention": b.attention.tp_local(tp, f"blocks.{i}.attention")})
              for i, b in enumerate(config.blocks)]  # each attention spec states its per-rank form
    local = config.model_copy()
    local._blocks = blocks
    return local

