"""The zoo: named configs shipped as YAML under configs/<family>/<name>.yaml."""

from __future__ import annotations

import difflib
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


def list_models(family: str | None = None) -> list[str]:
    """Names of every zoo entry (optionally of one family, the folder name)."""
    return [n for n, p in _index().items() if family is None or p.parent.name == family]


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
