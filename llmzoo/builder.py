"""config → nn.Module: build on meta, then materialise and initialise on the requested device."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from .config import ModelConfig
from .errors import ConfigError
from .masked_lm import MaskedLM
from .model import CausalLM
from .protocol import init_module
from .scaling import scale_down
from .params import DTYPE_ALIASES, count_params, dtype_bytes, resolve_dtype  # noqa: F401  (dtype helpers: their old home)
from .seq2seq import EncoderDecoderLM
from .zoo import get_config


@torch.no_grad()
def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """GPT-2 style init: N(0, std) matrices and embeddings, zero biases, unit norms (each module's
    `init_weights`, llmzoo.protocol); DeepNorm's β (block.init_beta) scales what `Block.beta_scaled`
    names: value, output and FFN weights (arXiv:2203.00555, Fig. 2)."""
    for module in model.modules():
        init_module(module, std)
    for block, spec in zip(getattr(model, "blocks", []), model.config.blocks):
        if spec.init_beta != 1.0:
            for m in block.beta_scaled():
                for name, p in m.named_parameters(recurse=False):
                    if not name.endswith("bias"):
                        p.mul_(spec.init_beta)


# No config describing more parameters than this is built, not even on the meta device (a meta
# model of 10^15 parameters still costs a module per layer and tables per tensor). DeepSeek-V3,
# the zoo's largest, has 6.7e11; every tensor of a model under the bound has < 2^63 elements.
MAX_PARAMS = 10**13


def check_size(config: ModelConfig) -> None:
    """ConfigError when the analytic parameter count exceeds MAX_PARAMS (nothing allocated)."""
    n = count_params(config)
    if n.total > MAX_PARAMS:
        parts = ", ".join(f"{k} {v:.3g}" for k, v in n.parts.items() if v)
        raise ConfigError(f"{config.name}: {n.total:.3g} parameters exceed the bound of {MAX_PARAMS:.0e} "
                          f"({parts}); check vocab_size, d_model, n_layers, head and expert sizes")


def model_class(config: ModelConfig) -> type[CausalLM] | type[EncoderDecoderLM] | type[MaskedLM]:
    """The module class a config describes: EncoderDecoderLM with an `encoder` section, MaskedLM when
    encoder_only, else CausalLM. Refuses (ConfigError) a config beyond MAX_PARAMS before anything is built."""
    check_size(config)
    if config.encoder_only:
        return MaskedLM
    return EncoderDecoderLM if config.encoder is not None else CausalLM


# torch.nn.init's in-place fills, which nn.Linear / nn.Embedding / … call from __init__
TORCH_INITS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
               "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")


def _unchanged(tensor, *args, **kwargs):
    return tensor


@contextmanager
def _meta_init() -> Iterator[None]:
    """The meta device, with torch.nn.init's fills skipped: a meta tensor holds no value to fill, yet
    the fills (kaiming_uniform_ dispatched through the device mode) cost ~60 % of building a model.
    The skip is process-wide while the block runs (as transformers' no_init_weights)."""
    saved = {n: getattr(nn.init, n) for n in TORCH_INITS if hasattr(nn.init, n)}
    try:
        for n in saved:
            setattr(nn.init, n, _unchanged)
        with torch.device("meta"):
            yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def build_meta(config: ModelConfig) -> CausalLM | EncoderDecoderLM:
    """The module tree `config` describes on the meta device: shapes only, no memory and no values
    (a loader places the checkpoint's tensors, `build` materialises and initialises)."""
    cls = model_class(config)
    with _meta_init():
        return cls(config)


def build(
    source: str | Path | dict | ModelConfig,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    scale: str | None = None,
    seed: int | None = 0,
) -> CausalLM | EncoderDecoderLM | MaskedLM:
    """Build a model from a zoo name, YAML path, mapping or ModelConfig (with an `encoder` section:
    an EncoderDecoderLM; encoder_only: a MaskedLM).

    device="meta" allocates nothing; scale="tiny" builds the scaled-down config instead; weights are
    initialised from `seed` (None keeps the global RNG state)."""
    config = get_config(source)
    if scale is not None:
        config = scale_down(config, preset=scale)
    model = build_meta(config)
    if str(device) != "meta":
        model = model.to_empty(device=device)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            init_weights(model)
    dtype = resolve_dtype(dtype)
    return model.to(dtype) if dtype is not None else model
