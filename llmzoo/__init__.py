"""llmzoo: published LLM architectures from config, as plain PyTorch modules, proved against the reference."""

from .builder import build
from .config import ModelConfig, load_config
from .model import CausalLM
from .params import ParamCount, count_params, kv_cache_bytes
from .registry import register
from .scaling import scale_down
from .zoo import get_config, list_models

__all__ = [
    "CausalLM",
    "ModelConfig",
    "ParamCount",
    "build",
    "count_params",
    "get_config",
    "kv_cache_bytes",
    "list_models",
    "load_config",
    "register",
    "scale_down",
]
__version__ = "0.1.0"
