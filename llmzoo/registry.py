"""Components registered by name: the YAML names them, the builder looks them up.

A component is a pair (config class, module class) filed under a kind ("norm", "position",
"attention", "mlp", "activation") and a name. `Component("norm")` is the pydantic type of a config
field holding any registered norm: it validates the mapping with the config class its `type` names,
so a new component registered from user code is usable from YAML without touching llmzoo.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable

from pydantic import BaseModel, ConfigDict, SerializeAsAny, WrapValidator


class Spec(BaseModel):
    """Base of every config model: unknown keys are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
        if name not in _REGISTRY.get(kind, {}):
            raise ValueError(f"type: {name!r} is not one of {', '.join(names(kind))}")
        return lookup(kind, name)[0].model_validate(value)

    return validate


def Component(kind: str) -> Any:  # noqa: N802 - reads as a type in annotations
    """Annotated pydantic type for a field that holds any registered component of `kind`."""
    return Annotated[SerializeAsAny[ComponentSpec], WrapValidator(_validator(kind))]
