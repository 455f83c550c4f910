"""llmzoo: published LLM architectures from config, as plain PyTorch modules, proved against the reference."""

import warnings as _warnings

with _warnings.catch_warnings():
    # torch's import warns "Failed to initialize NumPy" when numpy is absent, as on a base install;
    # llmzoo never hands tensors to NumPy, so for llmzoo's users the warning is only noise.
    _warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    import torch  # noqa: F401

# the built-in components register themselves; the schema (config.py) finds them in the registry
from . import attention, mlp, moe, norms, positions  # noqa: F401
from .builder import build
from .cache import StaticCache
from .config import ModelConfig, load_config
from .errors import CheckpointError, ConfigError, LLMZooError
from .generation import generate, stream
from .hf import from_pretrained, save_pretrained
from .layout import tune_layout
from .model import CausalLM
from . import parallel
from .params import ParamCount, count_params, kv_cache_bytes
from .parity import parity, verify
from .registry import register
from .scaling import scale_down
from .seq2seq import EncoderDecoderLM
from .zoo import get_config, list_models

__all__ = [
    "CausalLM",
    "CheckpointError",
    "ConfigError",
    "EncoderDecoderLM",
    "LLMZooError",
    "ModelConfig",
    "ParamCount",
    "StaticCache",
    "build",
    "count_params",
    "from_pretrained",
    "generate",
    "get_config",
    "kv_cache_bytes",
    "list_models",
    "load_config",
    "parity",
    "register",
    "save_pretrained",
    "scale_down",
    "stream",
    "tune_layout",
    "verify",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # llmzoo.parallelize without importing the sharding code for every user of llmzoo
    if name == "parallelize":
        return parallel.parallelize
    raise AttributeError(f"module 'llmzoo' has no attribute {name!r}")
