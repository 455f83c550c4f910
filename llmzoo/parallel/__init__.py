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

MODULES = ("styles", "sharding", "loading", "memory", "checkpoint")


def __getattr__(name: str):
    for module in MODULES if not name.startswith("__") else ():
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name, importlib)
        if value is not importlib:
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
