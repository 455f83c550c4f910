"""The adapter contract (one per HF `model_type`) and the config.json helpers adapters share."""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import MAX_LAYERS, ModelConfig
from ..errors import ConfigError, LLMZooError, clip
from ..errors import require as require_extra
from ..zoo import METADATA_FIELDS, arch_dict, closest_zoo_entry, config_diff  # noqa: F401  (their old home)
from .export import write_reference_checkpoint
from .loader import read_hf_config, read_state_dict
from .jsontypes import check_hf_types
from .rules import Rule


def _checked_to_config(to_config):
    """Wrap an adapter's to_config: types checked first, any failure a ConfigError naming config.json."""

    @functools.wraps(to_config)
    def wrapper(self, hf: Any, *args: Any, **kwargs: Any) -> ModelConfig:
        check_hf_types(hf)
        try:
            return to_config(self, hf, *args, **kwargs)
        except LLMZooError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, ZeroDivisionError,
                OverflowError, RecursionError) as e:
            what = f"missing key {e}" if type(e) is KeyError else f"{clip(e, 1500)}"
            raise ConfigError(f"config.json (model_type {hf.get('model_type')!r}): {what}") from None

    wrapper._types_checked = True
    return wrapper


class Adapter:
    """config.json ↔ ModelConfig and the weight-name table for one HF model_type.

    Subclasses set `model_type` (plus `aliases`, and `families`: zoo family folders that export to
    this type by default) and implement `to_config`, `from_config`, `rules` and `tiny_hf_config`.
    Remote-code types (no transformers class) also override `reference` with a small nn.Module
    written from the published modeling file, whose parameter names are the checkpoint's."""

    model_type: str = ""
    aliases: tuple[str, ...] = ()
    families: tuple[str, ...] = ()
    remote_code: bool = False
    # remote-code types: the hub repo's configuration/modeling files, written with every export (hub_code.py)
    hub_code: Any = None
    # quantization_config.quant_method values this type reads besides fp8 (which every type reads)
    quant_methods: tuple[str, ...] = ()
    # tiny_hf_config() keys the half-precision parity row (`llmzoo verify --dtype bfloat16`, tests)
    # replaces, and why: a discrete choice that rounding flips on both sides (DeepSeek-V3.2's top-k)
    half_precision_overrides: dict[str, Any] = {}
    half_precision_reason: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # every adapter's config.json reading goes through one type check and one error type
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("to_config")
        if fn is not None and not getattr(fn, "_types_checked", False):
            cls.to_config = _checked_to_config(fn)

    # ------------------------------------------------------------------ to implement
    def to_config(self, hf: dict[str, Any]) -> ModelConfig:
        raise NotImplementedError

    def from_config(self, config: ModelConfig) -> dict[str, Any]:
        raise NotImplementedError

    def rules(self, config: ModelConfig) -> list[Rule]:
        raise NotImplementedError

    def tiny_hf_config(self) -> dict[str, Any]:
        """A small config.json (a few layers, d_model ≤ 64) exercising every quirk of the type."""
        raise NotImplementedError

    # ------------------------------------------------------------------ references (tests, parity)
    # transformers' class and attention implementation for the reference (tests, parity, verify)
    reference_class = "AutoModelForCausalLM"
    reference_attention = "eager"

    def reference(self, hf_config: dict[str, Any]) -> nn.Module:
        """A randomly initialised reference model (transformers' own class by default)."""
        return transformers_reference(self.model_type, hf_config, self.reference_class, self.reference_attention)

    def load_reference(self, folder: str, dtype: torch.dtype) -> nn.Module:
        """The reference model with the checkpoint's weights."""
        return transformers_load(folder, dtype, self.reference_class, self.reference_attention)

    def save_reference(self, model: nn.Module, folder: str, max_shard_size: str | int) -> None:
        model.save_pretrained(folder, max_shard_size=max_shard_size)

    @property
    def reference_name(self) -> str:
        """What parity compares against: transformers' own class, or (remote-code types, which
        transformers does not ship) llmzoo's in-repo reference written from the published modeling file."""
        return "in-repo remote-code ref" if self.remote_code else "transformers"

    # ------------------------------------------------------------------ shared behaviour
    def export_config(self, config: ModelConfig) -> dict[str, Any]:
        """config.json for `config`; an error names every field this model_type cannot express."""
        hf = {"model_type": self.model_type, **self.from_config(config)}
        diff = config_diff(config, self.to_config(hf))
        if diff:
            raise ValueError(
                f"model_type {self.model_type!r} cannot express {config.name}: " + "; ".join(diff)
            )
        return hf


def transformers_reference(model_type: str, hf_config: dict, auto_class: str, attention: str) -> nn.Module:
    """transformers' model for a config.json dict, randomly initialised, fp32, eval mode."""
    transformers = require_extra("transformers", "parity", "a transformers reference model")  # the oracle, lazily

    kwargs = {k: v for k, v in hf_config.items() if k not in ("model_type", "architectures")}
    cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
    auto = getattr(transformers, auto_class)
    return auto.from_config(cfg, dtype=torch.float32, attn_implementation=attention).eval()


def transformers_load(folder: str, dtype: torch.dtype, auto_class: str, attention: str) -> nn.Module:
    """transformers' model with a checkpoint folder's weights."""
    transformers = require_extra("transformers", "parity", "parity against transformers")

    return getattr(transformers, auto_class).from_pretrained(folder, dtype=dtype, attn_implementation=attention).eval()


# ------------------------------------------------------------------------------ helpers


def require(hf: dict[str, Any], key: str, file: str = "config.json") -> Any:
    if key not in hf or hf[key] is None:
        raise ConfigError(f"{file}: missing key {key!r} (model_type {hf.get('model_type')!r})")
    return hf[key]


def layer_count(hf: dict[str, Any], key: str = "num_hidden_layers") -> int:
    """The number of layers, bounded before any per-layer list is built from it."""
    n = require(hf, key)
    if not isinstance(n, int) or not 0 < n <= MAX_LAYERS:
        raise ConfigError(f"config.json: {key}: expected an integer in 1..{MAX_LAYERS}, got {clip(repr(n), 80)}")
    return n


def clean_name(hf: dict[str, Any], fallback: str) -> str:
    raw = str(hf.get("_name_or_path") or fallback or hf.get("model_type", "model"))
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", raw.rstrip("/").split("/")[-1]).strip("-")
    return name or str(hf.get("model_type", "model"))


def config_base(hf: dict[str, Any], family: str, tied: bool = True, name: str | None = None) -> dict[str, Any]:
    """The ModelConfig fields config.json states alike for every type: name, family, vocab, tied head."""
    return {"name": clean_name(hf, name or family), "family": family, "vocab_size": int(require(hf, "vocab_size")),
            "head": {"tied": bool(hf.get("tie_word_embeddings", tied))}}


# config.json's names for (d_model, n_layers, n_heads) in most types
HF_DIMS = ("hidden_size", "num_hidden_layers", "num_attention_heads")


def config_json_base(config: ModelConfig, architecture: str,
                     dims: tuple[str, str, str] | None = None) -> dict[str, Any]:
    """config_base backwards: architectures, vocab_size, tie_word_embeddings; with `dims`, the type's
    names for d_model, n_layers and the base block's attention heads, with their values."""
    out = {"architectures": [architecture], "vocab_size": config.vocab_size, "tie_word_embeddings": config.head.tied}
    if dims is not None:
        out.update(zip(dims, (config.d_model, config.n_layers, config.block.attention.n_heads)))
    return out


def activation_name(hf_act: str, key: str = "hidden_act") -> str:
    """llmzoo's activation for a transformers ACT2FN name. gelu_new, gelu_fast and gelu_pytorch_tanh
    are one function, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), written three ways (transformers'
    activations.py; gelu_fast factors x out: 0.7978845608·x·(1 + 0.044715·x²)); they differ in float
    rounding only. gelu_python is the exact erf form. EleutherAI/gpt-neox-20b's config says gelu_fast."""
    table = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_python": "gelu",
             "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
             "gelu_tanh": "gelu_tanh", "relu": "relu"}
    if hf_act not in table:
        raise ValueError(f"config.json: {key} {hf_act!r} is not one of {', '.join(table)}")
    return table[hf_act]


# token ids belong to the tokenizer, not the architecture (ModelConfig does not hold them); a class
# default such as SmolLM3's pad 128004 or Phi-3's 32000 would fall outside a scaled-down vocabulary,
# where nn.Embedding rejects it as padding_idx
NO_TOKEN_IDS = {"pad_token_id": None, "bos_token_id": None, "eos_token_id": None}

HF_ACTIVATION = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


def rope_from_hf(hf: dict[str, Any], default_theta: float = 10000.0) -> dict[str, Any]:
    """RopeSpec mapping from either dialect: transformers 5 `rope_parameters` or the hub's
    `rope_theta` + `rope_scaling` (whose kind is under `type` or `rope_type`)."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", default_theta))
    source = scaling or params
    kind = source.get("rope_type", source.get("type", "default"))
    spec: dict[str, Any] = {"type": "rope", "theta": float(theta)}
    max_pos = hf.get("max_position_embeddings")
    orig = source.get("original_max_position_embeddings", max_pos)
    if kind == "default":
        return spec
    if kind == "linear":
        spec["scaling"] = {"type": "linear", "factor": float(source["factor"])}
    elif kind == "dynamic":  # transformers' base length is max_position_embeddings, whatever else is given
        spec["scaling"] = {"type": "dynamic", "factor": float(source["factor"]),
                           "original_max_positions": int(require(hf, "max_position_embeddings"))}
    elif kind == "llama3":
        spec["scaling"] = {
            "type": "llama3",
            "factor": float(source["factor"]),
            "low_freq_factor": float(source.get("low_freq_factor", 1.0)),
            "high_freq_factor": float(source.get("high_freq_factor", 4.0)),
            "original_max_positions": int(orig),
        }
    elif kind == "yarn":
        s = {"type": "yarn", "factor": float(source["factor"]), "original_max_positions": int(orig)}
        for key in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "truncate"):
            if source.get(key) is not None:  # the same names on both sides
                s[key] = source[key]
        spec["scaling"] = s
    elif kind in ("longrope", "su"):  # "su": the name in the first Phi-3 config.json files
        factor = source.get("factor") or (max_pos / orig if max_pos and orig else 1.0)
        attention = source.get("attention_factor")
        if attention is None:  # LongRoPE's default temperature (transformers _compute_longrope_parameters)
            if factor > 1 and not orig > 1:
                raise ValueError(f"config.json: original_max_position_embeddings {orig!r} must exceed 1 to derive "
                                 "the longrope attention_factor (ln of it divides)")
            attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
        spec["scaling"] = {"type": "longrope", "short_factor": [float(x) for x in source["short_factor"]],
                           "long_factor": [float(x) for x in source["long_factor"]],
                           "original_max_positions": int(orig), "attention_factor": float(attention)}
    else:
        raise ValueError(
            f"config.json: rope scaling type {kind!r} is not supported (default, linear, dynamic, llama3, yarn, longrope)"
        )
    return spec


def rope_to_hf(position: Any) -> dict[str, Any]:
    """The hub dialect (rope_theta + rope_scaling with both `type` and `rope_type`): transformers 4 and 5 read it."""
    if position.type != "rope":
        return {}
    out: dict[str, Any] = {"rope_theta": position.theta, "rope_scaling": None}
    s = position.scaling
    if s is None:
        return out
    if s.type == "longrope":
        out["rope_scaling"] = {"rope_type": "longrope", "type": "longrope", "short_factor": s.short_factor,
                               "long_factor": s.long_factor, "attention_factor": s.attention_factor,
                               "original_max_position_embeddings": s.original_max_positions}
        return out
    d: dict[str, Any] = {"rope_type": s.type, "type": s.type, "factor": s.factor}
    if s.type in ("llama3", "yarn"):  # dynamic's length is max_position_embeddings (export_config checks it)
        d["original_max_position_embeddings"] = s.original_max_positions
    if s.type == "llama3":
        d.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor)
    if s.type == "yarn":
        d.update(beta_fast=s.beta_fast, beta_slow=s.beta_slow)
        for k in ("mscale", "mscale_all_dim", "attention_factor"):
            if getattr(s, k) is not None:
                d[k] = getattr(s, k)
        if not s.truncate:
            d["truncate"] = False
    out["rope_scaling"] = d
    return out


def attention_kind(n_heads: int, n_kv: int) -> str:
    return "mha" if n_kv == n_heads else "mqa" if n_kv == 1 else "gqa"


def one_window(config: ModelConfig, model_type: str, every_layer: bool = False) -> int | None:
    """The sliding window of `config`'s windowed layers (None: every layer full). config.json holds one
    `sliding_window`: an error names several, and with every_layer (it windows every layer: Mistral,
    Phi-3) a mix of windowed and full layers."""
    windows = {b.attention.window for b in config.blocks}
    used = sorted(w for w in windows if w is not None)
    if every_layer and len(windows) > 1:
        raise ValueError(f"{model_type} has one sliding_window for all layers, not {sorted(windows, key=str)}")
    if len(used) > 1:
        raise ValueError(f"{model_type} has one sliding_window, not {used}")
    return used[0] if used else None


class RemoteCodeAdapter(Adapter):
    """An adapter for a type with no transformers class: `reference(hf_config)` returns a small
    nn.Module written from the published modeling file, parameter names equal to the checkpoint's."""

    remote_code = True
    skipped_on_load: tuple[str, ...] = ()  # name endings of checkpoint buffers the reference has no place for

    def load_reference(self, folder: str, dtype: torch.dtype) -> nn.Module:
        model = self.reference(read_hf_config(Path(folder)))
        tied = set(_tied_copies(model))  # a tied copy is saved once, as transformers does; a stored one is skipped
        state = {k: v for k, v in read_state_dict(folder).items()
                 if k not in tied and not k.endswith(self.skipped_on_load)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - tied:
            model.load_state_dict(state, strict=True)  # raises, naming them
        return model.to(dtype).eval()

    def save_reference(self, model: nn.Module, folder: str, max_shard_size: str | int) -> None:
        tied = set(_tied_copies(model))
        state = {n: t for n, t in model.state_dict().items() if n not in tied}
        write_reference_checkpoint(folder, {"model_type": self.model_type, **model.hf_config}, state, max_shard_size)


def _tied_copies(model: nn.Module) -> list[str]:
    """State-dict names whose tensor is an earlier name's (tied weights), in order."""
    seen, copies = set(), []
    for name, t in model.state_dict(keep_vars=True).items():
        if t.data_ptr() in seen:
            copies.append(name)
        seen.add(t.data_ptr())
    return copies
