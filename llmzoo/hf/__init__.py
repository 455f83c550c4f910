"""Hugging Face interop: one adapter per `model_type`, a shared loader and exporter.

    llmzoo.from_pretrained(folder | file.safetensors | "owner/name", dtype=..., device=...)
    llmzoo.save_pretrained(model, folder, format="hf", max_shard_size="2GB")

How to add an adapter, and what the suite then checks with no new test code: docs/extending.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import UnsupportedError, clip

if TYPE_CHECKING:
    from .adapter import Adapter

ADAPTER_MODULES = [
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "olmo2",
    "smollm3",
    "phi3",
    "gemma",
    "gemma2",
    "t5",
    "deepseek",
    "mixtral",
    "chatglm",
    "internlm2",
    "baichuan",
    "gpt2",
    "gpt_neo",
    "bloom",
    "opt",
    "gpt_neox",
    "falcon",
    "mpt",
    "gptj",
    "gpt_oss",
    "qwen3_moe",
    "glm4_moe",
    "llama4",
    "deberta_v2",
]
# modules that register other checkpoint sources (loader.register_source) and their verify rows
SOURCE_MODULES = ["glm"]

_ADAPTERS: dict[str, "Adapter"] = {}
_ALIASES: dict[str, str] = {}
_loaded = False


def register_adapter(cls: type) -> type:
    """Class decorator: file an Adapter subclass under its model_type and aliases."""
    adapter = cls()
    for name in (adapter.model_type, *adapter.aliases):
        if name in _ADAPTERS or name in _ALIASES:
            raise ValueError(f"model_type {name!r} already has an adapter")
    _ADAPTERS[adapter.model_type] = adapter
    for alias in adapter.aliases:
        _ALIASES[alias] = adapter.model_type
    return cls


def load_plugins() -> None:
    """Import every adapter and source module once (each registers itself)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in [*ADAPTER_MODULES, *SOURCE_MODULES]:
            importlib.import_module(f"{__name__}.{mod}")


_load_all = load_plugins  # the old private name


def supported_model_types() -> list[str]:
    """Every model_type with an adapter (aliases excluded), sorted."""
    load_plugins()
    return sorted(_ADAPTERS)


def get_adapter(model_type: str) -> "Adapter":
    load_plugins()
    name = _ALIASES.get(model_type, model_type) if isinstance(model_type, str) else None
    if name not in _ADAPTERS:
        known = sorted([*_ADAPTERS, *_ALIASES])
        raise UnsupportedError(f"config.json: model_type {clip(repr(model_type), 100)} is not supported; "
                               f"supported: {', '.join(known)}")
    return _ADAPTERS[name]


def adapter_for_config(config) -> "Adapter":
    """The adapter that exports a ModelConfig: by zoo family, else the first that expresses it."""
    load_plugins()
    for adapter in _ADAPTERS.values():
        if config.family in adapter.families:
            return adapter
    errors: list[tuple[str, str]] = []
    for adapter in _ADAPTERS.values():
        try:
            adapter.export_config(config)
            return adapter
        except (ValueError, NotImplementedError, AttributeError, KeyError) as e:
            errors.append((adapter.model_type, str(e)))

    # one short message: the closest type (fewest differing fields) and its first differences
    # (a field-by-field diff counts its differences; a structural refusal counts as far)
    closest, why = min(errors, key=lambda e: e[1].count(";") if "cannot express" in e[1] else 99)
    diffs = why.split(": ", 1)[-1].split("; ") if "cannot express" in why else [why]
    more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
    raise UnsupportedError(
        f"no Hugging Face model_type can express {config.name} (family {config.family!r}, tried {len(errors)}); "
        f"closest is {closest}: {clip('; '.join(diffs[:3]), 300)}{more}. It builds and runs in llmzoo but "
        "has no checkpoint format to be written in")


# the loader and the exporter import the registry above: they come last
from .export import save_pretrained  # noqa: E402
from .loader import from_pretrained  # noqa: E402
