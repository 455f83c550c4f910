"""Distributed checkpoints: torch.distributed.checkpoint (DCP) save / load across any split, and
export of a parallelized model as a Hugging Face checkpoint."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

from ..builder import build_meta
from ..hf import save_pretrained


def save_checkpoint(model: nn.Module, path) -> None:
    """Save a parallelized model with torch.distributed.checkpoint (each rank writes its shards)."""
    dcp.save(get_model_state_dict(model), checkpoint_id=str(path))


def load_checkpoint(model: nn.Module, path) -> None:
    """Load a `save_checkpoint` directory into a model parallelized in any other way (DCP reshards)."""
    if any(p.is_meta for p in model.parameters()):
        model.to_empty(device="cpu")
    state = get_model_state_dict(model)
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state)


def save_hf(model: nn.Module, folder, max_shard_size: int | str = "2GB") -> None:
    """Export a parallelized model as a Hugging Face checkpoint (the adapter's table read backwards).

    Every rank takes part in gathering each tensor (DTensor / FSDP2 all-gathers); rank 0 holds the
    gathered state on CPU and writes it. Needs host memory for the whole model on rank 0."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        plain = build_meta(model.config)
        plain.load_state_dict(state, assign=True)
        if getattr(model, "hf_model_type", None):
            plain.hf_model_type = model.hf_model_type
        save_pretrained(plain, folder, max_shard_size=max_shard_size)
    dist.barrier()
