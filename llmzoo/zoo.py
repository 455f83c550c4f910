"""The zoo: named configs shipped as YAML under configs/<family>/<name>.yaml."""

from __future__ import annotations

import difflib
from typing import Any
import fnmatch
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .config import ModelConfig, load_config, read_yaml
from .errors import ConfigError, NotFoundError


def zoo_dir() -> Path:
    """The installed `llmzoo.configs` package, or the checkout's configs/ folder."""
    try:
        return Path(str(resources.files("llmzoo.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


@lru_cache(maxsize=None)
def _index() -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in sorted(zoo_dir().rglob("*.yaml")):
        data = read_yaml(path)
        name = data.get("name", path.stem) if isinstance(data, dict) else path.stem
        if name in index:
            raise ConfigError(f"zoo name {name!r} is defined twice: {index[name]} and {path}")
        index[name] = path
    return index


def families() -> list[str]:
    """Every zoo family (the folder names under configs/), sorted."""
    return sorted({p.parent.name for p in _index().values()})


def _matches(pattern: str, text: str) -> bool:
    """A shell-style glob (`*llama*`, `gpt-?-*`), case-insensitive; a plain word matches as a substring."""
    pattern, text = pattern.lower(), text.lower()
    return fnmatch.fnmatchcase(text, pattern) if any(c in pattern for c in "*?[") else pattern in text


def _family_matches(family: str) -> set[str]:
    """Families an argument names: that exact folder, else a glob or prefix of folder names ("llama"
    → llama-2, llama-3.1); none at all is a ConfigError that suggests the closest names."""
    known = families()
    if family in known:
        return {family}
    hits = {f for f in known if fnmatch.fnmatchcase(f.lower(), family.lower())
            or (not any(c in family for c in "*?[") and f.lower().startswith(family.lower()))}
    if not hits:
        close = difflib.get_close_matches(family, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"families: {', '.join(known)}"
        raise NotFoundError(f"no zoo family matches {family!r}; {hint}")
    return hits


def list_models(pattern: str | None = None, *, family: str | None = None) -> list[str]:
    """Names of zoo entries, sorted by file: all, those matching `pattern` (a glob such as `*llama*`,
    or a plain word matched as a substring, case-insensitive), and/or of `family` (a folder name,
    glob or prefix; an unknown family raises ConfigError with the closest names)."""
    fams = _family_matches(family) if family is not None else None
    return [n for n, p in _index().items()
            if (pattern is None or _matches(pattern, n)) and (fams is None or p.parent.name in fams)]


def config_path(name: str) -> Path:
    index = _index()
    if name not in index:
        close = difflib.get_close_matches(name, list(index), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see llmzoo.list_models()"
        raise NotFoundError(f"no zoo model named {name!r}{hint}")
    return index[name]


@lru_cache(maxsize=None)
def _cached(name: str) -> ModelConfig:
    return load_config(config_path(name))


def get_config(source: str | Path | dict | ModelConfig) -> ModelConfig:
    """A ModelConfig from a zoo name, a YAML path, a mapping or a ModelConfig (returned as a copy)."""
    if isinstance(source, str) and not source.endswith((".yaml", ".yml")):
        return _cached(source).model_copy(deep=True)
    return load_config(source)


# ------------------------------------------------------------------------------ comparing configs

METADATA_FIELDS = ("name", "family", "reference", "published_params", "published_active_params", "notes")


def arch_dict(config: ModelConfig) -> dict[str, Any]:
    """The architecture part of a config (metadata such as name and reference dropped)."""
    return {k: v for k, v in config.to_dict().items() if k not in METADATA_FIELDS}


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            _diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k), out)
    elif a != b:
        out.append(f"{path}: {a!r} became {b!r}")


def config_diff(a: ModelConfig, b: ModelConfig) -> list[str]:
    out: list[str] = []
    _diff(arch_dict(a), arch_dict(b), "", out)
    return out


def _shape_key(config: ModelConfig) -> tuple:
    a = config.block.attention
    return (
        config.vocab_size, config.d_model, config.n_layers, a.n_heads,
        getattr(a, "n_kv_heads", None), getattr(a, "head_dim", None), getattr(config.block.mlp, "d_ff", None),
    )


@lru_cache(maxsize=1)
def _zoo_shapes() -> dict[tuple, list[str]]:
    out: dict[tuple, list[str]] = {}
    for name in list_models():
        try:
            out.setdefault(_shape_key(get_config(name)), []).append(name)
        except Exception:  # a broken zoo entry must not stop a checkpoint from loading
            continue
    return out


def closest_zoo_entry(config: ModelConfig) -> tuple[str | None, list[str]]:
    """The zoo entry whose shapes match (name, architecture differences), or (None, [])."""
    names = _zoo_shapes().get(_shape_key(config), [])
    best = None
    for name in names:
        diff = config_diff(get_config(name), config)
        if best is None or len(diff) < len(best[1]):
            best = (name, diff)
    return best if best else (None, [])
