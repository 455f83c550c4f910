"""One way out for errors: every failure llmzoo reports is an `LLMZooError`.

Each message names the file and the field or tensor at fault (in the checkpoint's names and
llmzoo's) and stays short: `clip` caps anything echoed from the input. The subclasses also derive
from the builtin a caller would have caught before (ValueError, ImportError), so no old `except`
stops working.
"""

from __future__ import annotations
import importlib

MAX_ECHO = 2000  # characters of user input a message may repeat


def clip(text: object, limit: int = MAX_ECHO) -> str:
    """`text` as a string of at most `limit` characters (a long tail is cut and counted)."""
    s = str(text)
    return s if len(s) <= limit else f"{s[:limit]}… ({len(s) - limit} more characters)"


class LLMZooError(Exception):
    """Base of every error llmzoo raises on purpose; the CLI prints it in one line and exits 2."""

    def __init__(self, message: object = ""):
        super().__init__(clip(message))

    def __str__(self) -> str:  # the message as given (KeyError would print its repr)
        return str(self.args[0]) if self.args else ""


class ConfigError(LLMZooError, ValueError):
    """A config (YAML, mapping or config.json) that does not validate; names the file and field."""


class NotFoundError(ConfigError, KeyError):
    """A name that is not there (a zoo entry); the message lists the close matches."""


class CheckpointError(LLMZooError, ValueError):
    """A checkpoint that cannot be loaded; names the file and every tensor at fault."""


class RuleError(CheckpointError):
    """Checkpoint names that do not fit an adapter's rule table; lists every one."""


class UnsupportedError(LLMZooError, ValueError):
    """A valid input that llmzoo refuses by name (a quantisation method, a flag it cannot honour)."""


class MissingExtraError(LLMZooError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency, or raise MissingExtraError naming `pip install "llmzoo[extra]"`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{purpose} needs the {module!r} package: pip install \"llmzoo[{extra}]\""
        ) from None
