"""Shared test helpers: loud seeded re-initialisation and tiny sharded reference checkpoints.

Generic on purpose: any HF adapter (llmzoo/hf/<type>.py) gets its tiny reference from
`adapter.tiny_hf_config()` / `adapter.reference()`, so these helpers need no per-type code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmzoo.parity import loud_init_, shard_size_for, tiny_reference


@pytest.fixture
def loud():
    """loud_init_(module, seed): re-draw every parameter loudly (see llmzoo.parity.loud_init_)."""
    return loud_init_


def save_tiny_checkpoint(
    model_type: str, folder: Path, seed: int = 0, n_shards: int = 4, overrides: dict | None = None,
    loud_buffers: tuple[str, ...] = (),
) -> torch.nn.Module:
    """Build the adapter's tiny reference (loud, seeded; `overrides` replace config.json keys of
    tiny_hf_config(); buffers whose names end with one of `loud_buffers`, which loud_init_ leaves
    alone, re-drawn N(0, 0.3²)), save it sharded into ~n_shards safetensors."""
    from llmzoo.hf import get_adapter

    from transformers.utils import logging

    logging.disable_progress_bar()
    ref = tiny_reference(model_type, seed, overrides)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, b in ref.named_buffers():
            if loud_buffers and name.endswith(tuple(loud_buffers)):
                b.copy_(0.3 * torch.randn(b.shape, generator=g))
    get_adapter(model_type).save_reference(ref, str(folder), shard_size_for(ref, n_shards))
    return ref


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """tiny_checkpoint(model_type, seed=0, overrides=None, loud_buffers=()) -> (folder, reference), ≥ 3 shards."""

    def make(model_type: str, seed: int = 0, name: str = "ckpt", overrides: dict | None = None,
             loud_buffers: tuple[str, ...] = ()):
        folder = tmp_path / f"{name}-{model_type}-{seed}-{len(list(tmp_path.iterdir()))}"
        ref = save_tiny_checkpoint(model_type, folder, seed, overrides=overrides, loud_buffers=loud_buffers)
        return folder, ref

    return make


@pytest.fixture
def hf_warnings(caplog):
    """hf_warnings() as a context manager yields a list that, on exit, holds every warning transformers
    logged or raised inside the block. warning_once's cache is cleared first, so a warning an earlier
    test already triggered is seen again."""
    import contextlib
    import logging
    import warnings

    @contextlib.contextmanager
    def collect():
        for once in ("warning_once", "info_once"):
            cached = getattr(logging.Logger, once, None)
            if hasattr(cached, "cache_clear"):
                cached.cache_clear()
        said: list[str] = []
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="transformers"), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield said
        said += [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        said += [f"{w.category.__name__}: {w.message}" for w in caught]

    return collect
