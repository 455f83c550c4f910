"""llmzoo: published LLM architectures from config, as plain PyTorch modules, proved against the reference."""

from .builder import build
from .config import ModelConfig, load_config
from .model import CausalLM
from .registry import register
from .zoo import get_config, list_models

__all__ = ["CausalLM", "ModelConfig", "build", "get_config", "list_models", "load_config", "register"]
__version__ = "0.1.0"
