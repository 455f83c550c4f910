"""Parallelism with PyTorch's own distributed stack, as a package that layers can see:

- `plan`: the vocabulary of tensor-parallel plans (a leaf; components import it at top level),
  `styles`: the DTensor styles it names;
- `sharding`: meshes, `parallelize`, local blocks, `init_sharded`, `sharded_cache`;
- `loading`: `load_hf_sharded`, `from_pretrained_sharded` (the load pipeline with sliced reads);
- `memory`: `memory_estimate`; `checkpoint`: DCP `save_checkpoint` / `load_checkpoint`, `save_hf`.

Every name stays importable from `llmzoo.parallel`; all but the plan's are resolved on first use,
so importing a component does not import sharding (which sits above the model).
"""

from __future__ import annotations

import importlib

from .plan import STYLES, head_split, local_config  # noqa: F401

_HOME = {
    **dict.fromkeys(STYLES, "styles"),
    **dict.fromkeys(["make_mesh", "parallelize", "init_sharded", "normal_region", "param_bytes", "local_region",
                     "sharded_cache", "BLOCK_ELEMENTS", "_local", "_dim_mesh"], "sharding"),
    **dict.fromkeys(["load_hf_sharded", "from_pretrained_sharded", "SliceReader"], "loading"),
    **dict.fromkeys(["memory_estimate", "_tp_dims", "_chunk"], "memory"),
    **dict.fromkeys(["save_checkpoint", "load_checkpoint", "save_hf"], "checkpoint"),
}
__all__ = sorted(["head_split", "local_config", *(n for n in _HOME if not n.startswith("_"))])


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
