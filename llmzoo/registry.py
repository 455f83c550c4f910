"""Components registered by name: the YAML names them, the builder looks them up.

A component is a pair (config class, module class) filed under a kind ("norm", "position",
"attention", "mlp", "activation") and a name. `Component("norm")` is the pydantic type of a config
field holding any registered norm: it validates the mapping with the config class its `type` names,
so a new component registered from user code is usable from YAML without touching llmzoo.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Callable

from pydantic import BaseModel, ConfigDict, SerializeAsAny, WrapValidator, model_validator


def _wants_number(annotation: Any) -> bool:
    """A field whose type includes int or float but not bool: true/false are not numbers there."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = set(typing.get_args(annotation))
        return bool(args & {int, float}) and bool not in args
    return False


def _wants_bool(annotation: Any) -> bool:
    """A field typed `bool` or `bool | None`: only true/false are accepted there."""
    if annotation is bool:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = set(typing.get_args(annotation)) - {type(None)}
        return args == {bool}
    return False


class Spec(BaseModel):
    """Base of every config model: unknown keys are an error, never silently dropped; booleans
    are true/false only (as transformers demands: the string "false" would otherwise mean True);
    NaN and ±inf are refused in every float field."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _strict_bools(cls, data: Any) -> Any:
        if isinstance(data, dict):
            bools, numbers = _bool_fields(cls)
            for name in bools:
                value = data.get(name)
                if value is not None and not isinstance(value, bool):
                    raise ValueError(f"{name}: expected true or false, got {type(value).__name__} {str(value)[:40]!r}")
            for name in numbers:  # pydantic would read true as 1 (a one-row position table)
                if isinstance(data.get(name), bool):
                    raise ValueError(f"{name}: expected a number, got {data[name]}")
        return data


_BOOL_FIELDS: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _bool_fields(cls: type[BaseModel]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(fields that take only booleans, numeric fields that take no booleans) of a spec class."""
    if cls not in _BOOL_FIELDS:
        fields = cls.model_fields.items()
        _BOOL_FIELDS[cls] = (tuple(n for n, f in fields if _wants_bool(f.annotation)),
                             tuple(n for n, f in fields if _wants_number(f.annotation)))
    return _BOOL_FIELDS[cls]


class ComponentSpec(Spec):
    """Config of a registered component; `type` names the registry entry."""

    type: str


_REGISTRY: dict[str, dict[str, tuple[type[ComponentSpec], Any]]] = {}


def register(kind: str, name: str, config: type[ComponentSpec]) -> Callable[[Any], Any]:
    """Decorator filing `obj` (a module class or function) under (kind, name) with its config."""

    def deco(obj: Any) -> Any:
        entries = _REGISTRY.setdefault(kind, {})
        if name in entries:
            raise ValueError(f"{kind} component {name!r} is already registered")
        entries[name] = (config, obj)
        return obj

    return deco


def names(kind: str) -> list[str]:
    return sorted(_REGISTRY.get(kind, {}))


def lookup(kind: str, name: str) -> tuple[type[ComponentSpec], Any]:
    entries = _REGISTRY.get(kind, {})
    if name not in entries:
        raise KeyError(f"{kind} {name!r} is not one of {', '.join(names(kind))}")
    return entries[name]


def build(kind: str, spec: ComponentSpec, *args: Any, **kwargs: Any) -> Any:
    """Instantiate the component a validated spec names."""
    return lookup(kind, spec.type)[1](spec, *args, **kwargs)


def _validator(kind: str) -> Callable[[Any, Any], ComponentSpec]:
    def validate(value: Any, handler: Any) -> ComponentSpec:
        if isinstance(value, ComponentSpec):
            value = value.model_dump()
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping with a 'type' (one of {', '.join(names(kind))})")
        name = value.get("type")
        if not isinstance(name, str) or name not in _REGISTRY.get(kind, {}):
            raise ValueError(f"type: {str(repr(name))[:80]} is not one of {', '.join(names(kind))}")
        return lookup(kind, name)[0].model_validate(value)

    return validate


def Component(kind: str) -> Any:  # noqa: N802 - reads as a type in annotations
    """Annotated pydantic type for a field that holds any registered component of `kind`."""
    return Annotated[SerializeAsAny[ComponentSpec], WrapValidator(_validator(kind))]
