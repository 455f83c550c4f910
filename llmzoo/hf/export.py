"""Export: an llmzoo model → config.json + safetensors in the original Hugging Face layout.

The adapter's rule table is read backwards (every transform is reversible), so a checkpoint
loaded and exported again has byte-identical tensors, and transformers loads what we write.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..errors import UnsupportedError
from ..progress import progress
from . import adapter_for_config, get_adapter
from .hub_code import write_hub_code
from .rules import plan_export
from ..builder import build
from ..tokenizer import save_tiny_tokenizer

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


def make_readable(path: Path) -> None:
    """Give a written file the permissions the umask allows (safetensors writes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


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
    bar = progress(total=sum(nbytes for _, nbytes, _ in entries), desc=f"writing {folder.name}", unit="B",
                   unit_scale=True)
    for file, members in zip(names, shards):
        tensors: dict[str, Tensor] = {}
        for k in members:
            hf_names, nbytes, produce = entries[k]
            bar.update(nbytes)
            for name, t in zip(hf_names, produce()):
                if name in weight_map or name in tensors:
                    raise ValueError(f"tensor {name!r} would be written twice")
                tensors[name] = t.detach().to("cpu").contiguous()
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        make_readable(folder / file)
        weight_map.update({t: file for t in tensors})
        del tensors
    bar.close()
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
    if any(t.is_meta for t in model.state_dict().values()):  # refused before the folder exists
        raise UnsupportedError(f"save_pretrained: {config.name} has no weights (built on the meta device); "
                               f"load or initialise it on a real device first. Nothing was written to {folder}")
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
    if adapter.hub_code is not None:  # a remote-code type: the modeling files transformers needs to open it
        write_hub_code(folder, adapter.model_type, adapter.hub_code)
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


def save_config(config, folder: str | Path, model_type: str | None = None) -> Path:
    """Write a ModelConfig (e.g. a full-size zoo entry) as a Hugging Face config.json in `folder`."""
    adapter = get_adapter(model_type) if model_type else adapter_for_config(config)
    hf_config = adapter.export_config(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    return folder / "config.json"


def save_tiny(config, folder: str | Path, seed: int = 0, model_type: str | None = None) -> Path:
    """A complete random checkpoint folder for a (scaled-down) config, ready for `llmzoo generate`,
    transformers' AutoTokenizer and AutoModel: config.json and generation_config.json naming the
    tokenizer's special ids, model.safetensors, tokenizer.json (character level, exactly
    vocab_size ids: tokenizer.tiny_tokenizer) and tokenizer_config.json."""

    adapter = get_adapter(model_type) if model_type else adapter_for_config(config)  # refuse before writing
    with progress(total=3, desc=f"writing {config.name}", unit="step") as bar:
        model = build(config, seed=seed)
        bar.update()
        folder = save_pretrained(model, folder, model_type=adapter.model_type)
        bar.update()
        seq2seq = config.encoder is not None
        ids = save_tiny_tokenizer(folder, config.vocab_size, bos=not seq2seq, max_len=config.max_seq_len)
        special = {k: v for k, v in ids.items() if k != "unk_token_id"}
        if seq2seq:  # T5: the decoder starts from pad
            special["decoder_start_token_id"] = ids["pad_token_id"]
        hf_config = json.loads((folder / "config.json").read_text())
        hf_config.update(special)
        (folder / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        generation = dict(special)
        (folder / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
        bar.update()
    return folder
