"""Export: an llmzoo model → config.json + safetensors in the original Hugging Face layout.

The adapter's rule table is read backwards (every transform is reversible), so a checkpoint
loaded and exported again has byte-identical tensors, and transformers loads what we write.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from . import adapter_for_config, get_adapter
from .rules import plan_export

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes from 5000, "40KB" (10^3) or "2GiB" (2^30), as transformers reads max_shard_size."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(size))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"max_shard_size {size!r} is not a size such as 500MB, 2GiB or 40000")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def write_shards(
    folder: str | Path,
    entries: list[tuple[list[str], int, Callable[[], list[Tensor]]]],
    max_shard_size: int | str,
) -> list[Path]:
    """Write groups of tensors (names, bytes, producer) to model.safetensors or numbered shards with an
    index; a group is produced only while its shard is written, so peak memory is one shard."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    limit = parse_size(max_shard_size)
    shards: list[list[int]] = [[]]
    size = 0
    for k, (_, nbytes, _) in enumerate(entries):
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += nbytes
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{j + 1:05d}-of-{n:05d}.safetensors" for j in range(n)]
    for old in list(folder.glob("model*.safetensors")) + list(folder.glob("model.safetensors.index.json")):
        old.unlink()
    weight_map: dict[str, str] = {}
    for file, members in zip(names, shards):
        tensors: dict[str, Tensor] = {}
        for k in members:
            hf_names, _, produce = entries[k]
            for name, t in zip(hf_names, produce()):
                if name in weight_map or name in tensors:
                    raise ValueError(f"tensor {name!r} would be written twice")
                tensors[name] = t.detach().to("cpu").contiguous()
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update({t: file for t in tensors})
        del tensors
    if n > 1:
        total = sum(nbytes for _, nbytes, _ in entries)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return [folder / f for f in names]


def save_pretrained(
    model: nn.Module,
    folder: str | Path,
    format: str = "hf",
    max_shard_size: int | str = "2GB",
    model_type: str | None = None,
) -> Path:
    """Write `model` as a Hugging Face checkpoint (config.json + safetensors) that transformers loads.

    model_type: the HF type to write; by default the type it was loaded from, else the adapter
    whose `families` names the config's family, else the first adapter that can express it."""
    if format != "hf":
        raise ValueError(f"format {format!r} is not supported; supported: hf")
    config = model.config
    if model_type is not None:
        adapter = get_adapter(model_type)
    elif getattr(model, "hf_model_type", None):
        adapter = get_adapter(model.hf_model_type)
    else:
        adapter = adapter_for_config(config)
    hf_config = adapter.export_config(config)
    state = model.state_dict()
    floats = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(floats) == 1 and next(iter(floats)) in DTYPE_NAMES:
        hf_config["torch_dtype"] = DTYPE_NAMES[next(iter(floats))]
    groups, problems = plan_export(adapter.rules(config), state)
    if problems:
        raise ValueError(f"cannot export to {adapter.model_type!r}:\n  " + "\n  ".join(problems))

    entries = []
    for g in groups:
        metas = [torch.empty(state[n].shape, dtype=state[n].dtype, device="meta") for n in g.our_names]
        shapes = g.rule.to_hf(metas)
        hf_names = g.rule.hf_names(g.bindings, len(shapes))
        nbytes = sum(t.numel() * t.element_size() for t in shapes)

        def produce(g=g) -> list[Tensor]:
            return g.rule.to_hf([state[n] for n in g.our_names])

        entries.append((hf_names, nbytes, produce))
    folder = Path(folder)
    write_shards(folder, entries, max_shard_size)
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    return folder


def write_reference_checkpoint(
    folder: str | Path, hf_config: dict[str, Any], state: dict[str, Tensor], max_shard_size: int | str
) -> Path:
    """Save a plain state dict in HF layout (used by remote-code reference models in tests/verify)."""
    entries = [([n], t.numel() * t.element_size(), (lambda t=t: [t])) for n, t in state.items()]
    folder = Path(folder)
    write_shards(folder, entries, max_shard_size)
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    return folder
