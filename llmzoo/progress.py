"""Progress bars (tqdm) for loading, converting, exporting and verifying.

A bar appears only once its work has run for a second, only when stderr is a terminal, and never
under `quiet()` (the CLI's `--quiet`). tqdm is a runtime dependency (huggingface_hub needs it too).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterable, Iterator

_QUIET = [False]


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """No llmzoo progress bars inside the block (on=False: the state outside it, unchanged)."""
    before = _QUIET[0]
    _QUIET[0] = before or bool(on)
    try:
        yield
    finally:
        _QUIET[0] = before


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
             unit: str = "it", **kwargs: Any):
    """A tqdm bar on stderr, shown after 1 s, disabled when stderr is not a TTY or when quiet.
    Use as an iterable wrapper or, with `total`, as a context manager calling `.update(n)`."""
    from tqdm import tqdm

    disable = _QUIET[0] or not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, delay=1.0, leave=False, file=sys.stderr,
                disable=disable, dynamic_ncols=True, **kwargs)
