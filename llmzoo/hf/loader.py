"""One way in for weights: source → plan → read (whole or sliced) → transform → place.

A registered `Source` (HF folder or hub id here; others register themselves, see `register_source`)
opens a checkpoint into a `Checkpoint`: tensor names, shapes and dtypes from the headers, the rule
table, the architecture. `load` then checks everything before a byte is read (`check_plan`: a
missing, unexpected or mis-shaped tensor fails first), reads each tensor whole (file by file, one
copy at a time) or only the region a rank holds (`SliceReader`, safetensors get_slice), pushes it
through the rule's declared, reversible transforms and places it in the model.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import safe_open
from torch import Tensor, nn

from ..builder import build_meta, resolve_dtype
from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError, LLMZooError, UnsupportedError, clip
from ..model import CausalLM
from ..progress import progress
from ..zoo import closest_zoo_entry, get_config
from . import get_adapter, load_plugins
from ..hugepages import copy_to
from .fp8 import Dequantize, dequantize_loaded, fp8_block_size, split_scales
from .jsontypes import check_hf_types
from .rules import Group, Lazy, plan_load

Adapter = Any  # an llmzoo.hf.adapter.Adapter: its `rules(config)` and `model_type` (adapter.py imports this module)

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


# ------------------------------------------------------------------------------ locating files


def resolve_source(source: str | os.PathLike) -> tuple[Path, Path | None]:
    """(folder, single weights file or None) for a folder, a .safetensors file or a hub repo id."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path, None
    if path.is_file():
        if path.suffix not in (".safetensors", ".bin"):
            raise CheckpointError(f"{path}: expected a checkpoint folder or a .safetensors file")
        return path.parent, path
    text = str(source)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", text):  # "owner/name", or a legacy bare name ("gpt2")
        return _snapshot(text), None
    raise CheckpointError(f"{source}: no such folder or file, and not a hub repo id (owner/name)")


def _snapshot(repo_id: str) -> Path:
    """A hub repo from the HF cache (or the hub, unless HF_HUB_OFFLINE=1): config + weights only."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors"]
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.bin"]))
    except Exception as e:  # offline with an empty cache, unknown repo, no network
        raise CheckpointError(
            f"{repo_id}: not a local path, and the hub copy could not be resolved "
            f"(HF cache: {os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}; "
            f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): {type(e).__name__}: {e}"
        ) from None
    return folder


def read_json(path: Path) -> Any:
    """A JSON file's data; CheckpointError names the file when it is unreadable, not UTF-8 or not JSON."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply") from None


# quantisation methods whose checkpoints every adapter reads (fp8: DeepSeek-V3's block-wise e4m3, see
# fp8.py); an adapter adds its own in `quant_methods` (gpt_oss: mxfp4)
READABLE_QUANTIZATION = ("fp8",)
# tensor-name suffixes of quantised layouts llmzoo cannot read (GPTQ/AWQ packing, bitsandbytes states)
QUANTIZED_SUFFIXES = (".qweight", ".qzeros", ".g_idx", ".scales", ".absmax", ".quant_map",
                      ".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4", ".SCB")


def check_quantization(hf: dict[str, Any], path: Path, readable: tuple[str, ...] = ()) -> None:
    """UnsupportedError in one line for a quantisation method llmzoo cannot read."""
    q = hf.get("quantization_config")
    if q is None:
        return
    method = q.get("quant_method")
    if method in (*READABLE_QUANTIZATION, *readable):
        return
    hint = method if method is not None else ("bitsandbytes" if any("load_in" in k for k in q) else None)
    raise UnsupportedError(
        f"{path}: quantization_config.quant_method {clip(repr(hint), 80)}: llmzoo reads unquantised checkpoints "
        f"and {', '.join((*READABLE_QUANTIZATION, *readable))} only; load the original (unquantised) weights instead"
    )


def read_hf_config(folder: Path) -> dict[str, Any]:
    """config.json as a dict, its value types checked (adapter.check_hf_types) and its quantisation
    method one llmzoo reads; every error names the file and the key."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json")
    hf = read_json(path)
    if not isinstance(hf, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level, got {type(hf).__name__}")
    if "model_type" not in hf:
        raise CheckpointError(f"{path}: no model_type key")
    check_hf_types(hf, str(path))
    return hf


@dataclass
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int | None = None  # safetensors: byte offset of the data in `file` (None: a torch .bin entry)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Every tensor of one safetensors file from its header: safetensors validates the header (offsets
    contiguous, inside the file, sized by shape × dtype); the raw header gives each data offset."""
    if not path.is_file():
        raise CheckpointError(f"{path}: shard is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for name in f.keys():
                sl = f.get_slice(name)
                dt = sl.get_dtype()
                if dt not in SAFETENSORS_DTYPES:
                    raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dt}")
                out[name] = TensorInfo(path, tuple(sl.get_shape()), SAFETENSORS_DTYPES[dt])
    except CheckpointError:
        raise
    except Exception as e:  # SafetensorError: truncated, corrupt header, bad offsets
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None
    with open(path, "rb") as f:  # the layout safetensors just accepted: u64 header size, JSON, data
        size = int.from_bytes(f.read(8), "little")
        raw = json.loads(f.read(size))
        end = os.fstat(f.fileno()).st_size
    for name, info in out.items():
        entry = raw.get(name) if isinstance(raw, dict) else None
        start, stop = (entry.get("data_offsets") or (-1, -1)) if isinstance(entry, dict) else (-1, -1)
        if not (0 <= start and stop - start == info.nbytes and 8 + size + stop <= end):
            raise CheckpointError(f"{path}: tensor {name!r}: data_offsets {clip(repr(entry), 100)} do not match "
                                  f"its shape {list(info.shape)} and dtype, or lie outside the file")
        info.offset = 8 + size + start
    return out


def _bin_file(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: shard is missing")
    try:  # never unpickle code: plain tensors only; mmap needs the zip format (torch >= 1.6 saves)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable weights-only torch file: {clip(e, 500)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict (name → tensor)")
    bad = [f"{clip(repr(k), 100)} ({type(v).__name__})" for k, v in state.items()
           if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not named tensors: {', '.join(bad[:10])}"
                              + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""))
    return state


def checkpoint_index(folder: Path, single: Path | None = None) -> dict[str, TensorInfo]:
    """Every tensor of the checkpoint: name → (file, shape, dtype), read from headers only."""
    if single is not None:
        files = [single]
    elif (folder / "model.safetensors.index.json").is_file():
        files = _files_from_index(folder / "model.safetensors.index.json")
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif (folder / "pytorch_model.bin.index.json").is_file():
        files = _files_from_index(folder / "pytorch_model.bin.index.json")
    elif (folder / "pytorch_model.bin").is_file():
        files = [folder / "pytorch_model.bin"]
    else:
        have = sorted(p.name for p in folder.iterdir())
        raise CheckpointError(
            f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin (found: {have})"
        )
    infos: dict[str, TensorInfo] = {}
    expected = getattr(files, "expected", None)
    for path in files:
        if path.suffix == ".bin":
            header = {n: TensorInfo(path, tuple(t.shape), t.dtype) for n, t in _bin_file(path).items()}
        else:
            header = _safetensors_header(path)
        for name, info in header.items():
            if name in infos:
                raise CheckpointError(f"tensor {name!r} is stored twice: {infos[name].file} and {path}")
            infos[name] = info
    if expected:
        wrong = [f"{n!r} (index: {f.name}, found in: {infos[n].file.name if n in infos else 'no shard'})"
                 for n, f in expected.items() if n not in infos or infos[n].file != f]
        if wrong:
            raise CheckpointError(f"{folder}: index does not match the shards: {', '.join(wrong[:20])}")
    return infos


class _Files(list):
    expected: dict[str, Path]


def shard_name_problem(name: Any, suffix: str) -> str | None:
    """Why `name` is not a plain shard file name inside the folder, or None. The name is checked,
    not its resolved path: the hub cache's shards are symlinks into its blob store, and fine."""
    if not isinstance(name, str):
        return f"{clip(repr(name), 80)} is a {type(name).__name__}, not a file name"
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or Path(name).name != name or Path(name).is_absolute() or re.match(r"^[A-Za-z]:", name)):
        return f"{clip(repr(name), 200)} is not a plain file name inside the checkpoint folder"
    if not name.endswith(suffix):
        return f"{clip(repr(name), 200)} does not end in {suffix}"
    return None


def _files_from_index(index: Path) -> list[Path]:
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        got = type(weight_map).__name__ if isinstance(data, dict) and "weight_map" in data else "nothing"
        raise CheckpointError(f"{index}: weight_map: expected an object of tensor name → shard file, got {got}")
    suffix = ".bin" if index.name.startswith("pytorch_model") else ".safetensors"
    problems = {p for p in (shard_name_problem(f, suffix) for f in weight_map.values()) if p}
    if problems:
        raise CheckpointError(f"{index}: weight_map: {'; '.join(sorted(problems)[:5])}")
    names = sorted(set(weight_map.values()))
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise CheckpointError(f"{index}: shard(s) named in the index are missing: {', '.join(missing)}")
    files = _Files(index.parent / n for n in names)
    files.expected = {t: index.parent / f for t, f in weight_map.items()}
    return files


# ------------------------------------------------------------------------------ checking


def check_plan(
    adapter: Adapter, config: ModelConfig, model: nn.Module, infos: dict[str, TensorInfo], strict: bool = True
) -> list[Group]:
    """Match checkpoint names to the model; raise one CheckpointError listing every problem."""
    quantized = [n for n in infos if n.endswith(QUANTIZED_SUFFIXES)]
    if quantized:
        raise UnsupportedError(
            f"checkpoint holds quantised tensors ({', '.join(quantized[:3])}{', …' if len(quantized) > 3 else ''}: "
            f"GPTQ/AWQ/bitsandbytes layout); llmzoo reads unquantised and fp8 checkpoints only"
        )
    rules = adapter.rules(config)
    groups, problems = plan_load(rules, infos)
    targets = model.state_dict(keep_vars=True)
    if not strict:
        skipped = [p for p in problems if p.startswith("unexpected")]
        skipped += [g.hf_names for g in groups if any(o not in targets for o in g.our_names)]
        groups = [g for g in groups if all(o in targets for o in g.our_names)]
        problems = [p for p in problems if not p.startswith("unexpected")]
        if skipped:
            warnings.warn(f"strict=False: skipped {len(skipped)} checkpoint tensor(s): {skipped[:10]}")
    written: dict[str, str] = {}
    for g in groups:
        for ours in g.our_names:
            if ours not in targets:
                problems.append(
                    f"unexpected tensor {g.hf_names[0]!r} → {ours!r}: the model config.json describes has no such tensor"
                )
            elif ours in written:
                problems.append(f"{ours!r} written twice: from {written[ours]!r} and {g.hf_names[0]!r}")
            else:
                written[ours] = g.hf_names[0]
        if any(o not in targets for o in g.our_names):
            continue
        metas = [torch.empty(infos[n].shape, dtype=infos[n].dtype, device="meta") for n in g.hf_names]
        try:
            outs = g.rule.to_ours(metas)
        except Exception as e:
            problems.append(f"wrong shape: {g.hf_names} {[tuple(m.shape) for m in metas]} do not fit "
                            f"{g.rule!r}: {e}")
            continue
        for ours, t in zip(g.our_names, outs):
            want = tuple(targets[ours].shape)
            src = g.hf_names[0] if len(g.hf_names) == 1 else g.hf_names
            if tuple(t.shape) != want:
                problems.append(
                    f"wrong shape: {src!r} {[list(infos[n].shape) for n in g.hf_names]} → {ours!r} "
                    f"{list(t.shape)}, config.json implies {list(want)}"
                )
            elif targets[ours].is_floating_point() and not t.is_floating_point():
                problems.append(f"wrong dtype: {src!r} → {ours!r} is stored as {t.dtype}; the model needs "
                                f"floating-point values there")
    missing = [n for n in targets if n not in written]
    problems.extend(f"missing tensor: {_hf_name_for(rules, n)}{n!r}: nothing in the checkpoint writes it"
                    for n in missing)
    if problems:
        raise CheckpointError(
            f"checkpoint does not match config.json (model_type {adapter.model_type!r}), "
            f"{len(problems)} problem(s):\n  " + "\n  ".join(problems)
        )
    return groups


def _hf_name_for(rules: list, ours: str) -> str:
    """'<checkpoint name> → ' for a model tensor, from the first rule that writes it ('' if none)."""
    for rule in rules:
        if rule.ours is None or rule.ours.alternatives or rule.hf.alternatives or rule.gather_slots:
            continue
        b = rule.ours.match(ours)
        if b is not None:
            try:
                return f"{rule.hf.format(b)!r} → "
            except KeyError:
                continue
    return ""


# ------------------------------------------------------------------------------ loading


class ShardReader:
    """Whole reads: each safetensors file mapped once, copy-on-write (writes to a tensor stay in this
    process), every tensor a zero-copy view of the mapping. A tensor that is only a view (as stored,
    or transposed/split: `Transform`s return views where they can) keeps its pages in the page cache
    and costs RSS only once touched. `release` drops the pages of a tensor that was copied away (cast,
    stacked, concatenated, dequantised), so a shard never sits in RSS next to the copy made of it."""

    def __init__(self):
        self.maps: dict[Path, mmap.mmap] = {}

    def read(self, name: str, info: TensorInfo) -> Tensor:
        if info.offset is None:  # a torch .bin shard: torch.load's own (mmap'd) tensors
            raise CheckpointError(f"{info.file}: {name!r} is not in a safetensors file")
        if math.prod(info.shape) == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        m = self.maps.get(info.file)
        if m is None:
            try:
                with open(info.file, "rb") as f:
                    m = self.maps[info.file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{info.file}: cannot map the file for reading ({e})") from None
        t = torch.frombuffer(m, dtype=info.dtype, count=math.prod(info.shape), offset=info.offset)
        if info.offset % info.dtype.itemsize:  # a misaligned tensor (allowed by the format): aligned copy
            t = t.clone()
        return t.view(info.shape)

    def release(self, info: TensorInfo) -> None:
        """Drop this tensor's whole pages from RSS (they stay in the page cache; a later touch maps them
        again). Only for a tensor no model tensor views."""
        m = self.maps.get(info.file)
        if m is None or info.offset is None or not hasattr(m, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start = -(-info.offset // page) * page
        stop = (info.offset + info.nbytes) // page * page
        if stop > start:
            m.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def close(self, path: Path) -> None:
        """Forget a file's mapping; tensors that view it keep it alive."""
        self.maps.pop(path, None)


def _read_file(path: Path, names: list[str], infos: dict[str, TensorInfo] | None = None,
               reader: ShardReader | None = None) -> Iterator[tuple[str, Tensor]]:
    if path.suffix == ".bin":
        state = _bin_file(path)
        for n in names:
            yield n, state.pop(n)
        return
    infos = infos if infos is not None else _safetensors_header(path)
    reader = reader or ShardReader()
    for n in names:
        yield n, reader.read(n, infos[n])


def read_state_dict(folder: str | os.PathLike) -> dict[str, Tensor]:
    """Every tensor of a checkpoint folder by its stored name (references in tests and verify)."""
    by_file: dict[Path, list[str]] = {}
    infos = checkpoint_index(Path(folder))
    for name, info in infos.items():
        by_file.setdefault(info.file, []).append(name)
    return {n: t for path, names in by_file.items() for n, t in _read_file(path, names, infos)}


def _assign(modules: dict[str, nn.Module], name: str, value: Tensor) -> Tensor:
    """Put `value` in the model as tensor `name` (modules: model.named_modules()); returns what was placed."""
    module_name, _, leaf = name.rpartition(".")
    module = modules[module_name]
    if leaf in getattr(module, "keep_float32", ()) and value.is_floating_point():
        value = value.float()  # e.g. the MoE router: kept in float32 whatever dtype was asked for
    if leaf in module._parameters:
        old = module._parameters[leaf]
        module._parameters[leaf] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        module._buffers[leaf] = value
    return value


def load_weights(
    model: nn.Module, groups: list[Group], infos: dict[str, TensorInfo], dtype: torch.dtype | None, device: Any,
    hf: dict[str, Any] | None = None, scales: dict | None = None,
) -> None:
    """Stream every group's tensors file by file, transform, cast and assign (one group in memory).
    A tensor that stays a view of the file (right dtype, view-only transforms) is never copied; the
    pages of one that was copied are released once its group is placed (`ShardReader.release`).
    scales: fp8 weight → its block scales (fp8.split_scales); those weights are dequantised as read."""
    owner = {n: g for g in groups for n in g.hf_names}
    by_file: dict[Path, list[str]] = {}
    for name, info in infos.items():
        if name in owner:
            by_file.setdefault(info.file, []).append(name)
    modules = dict(model.named_modules())
    reader = ShardReader()
    pending: dict[int, dict[str, Tensor]] = {}
    bar = progress(total=sum(infos[n].nbytes for names in by_file.values() for n in names),
                   desc="loading weights", unit="B", unit_scale=True)
    for path, names in by_file.items():
        for name, tensor in _read_file(path, names, infos, reader):
            bar.update(infos[name].nbytes)
            if scales and name in scales:
                tensor = dequantize_loaded(name, tensor, scales, hf or {}, dtype,
                                           scale_inv=reader.read(*scales[name]))
            g = owner[name]
            got = pending.setdefault(id(g), {})
            got[name] = tensor
            if len(got) < len(g.hf_names):
                continue
            del pending[id(g)]
            sources = [got.pop(n) for n in g.hf_names]
            outs = g.rule.to_ours(sources)
            placed = set()
            for ours, t in zip(g.our_names, outs):
                target_dtype = dtype if dtype is not None and t.is_floating_point() else t.dtype
                placed.add(_assign(modules, ours, copy_to(t, target_dtype, device)).untyped_storage().data_ptr())
            del outs
            for n, src in zip(g.hf_names, sources):
                if src.untyped_storage().data_ptr() not in placed:  # copied away: its pages are not needed
                    reader.release(infos[n])
                    if scales and n in scales:
                        reader.release(scales[n][1])
            del sources
    bar.close()
    reader.maps.clear()
    left = [n for n, p in model.state_dict(keep_vars=True).items() if p.is_meta]
    if left:
        raise CheckpointError(f"tensors never written: {left}")


# ------------------------------------------------------------------------------ sources


@dataclass
class Checkpoint:
    """An opened source, before any weight is read: the tensors' names, shapes and dtypes (from
    headers), the rule table that maps them, the architecture, and config.json ({} if there is none)."""

    folder: Path
    infos: dict[str, TensorInfo]
    adapter: Adapter
    config: ModelConfig
    hf: dict[str, Any]
    scales: dict = field(default_factory=dict)  # fp8 weight → its block scales (fp8.split_scales)
    model_type: str | None = None  # stamped on the model as hf_model_type (export writes it back)


class Source:
    """A kind of checkpoint location: `claims(path)` says whether it is one, `open` reads its headers
    and config (never a weight). Register with `register_source`; the first claiming source wins."""

    name = ""

    def claims(self, source: str | os.PathLike) -> bool:
        raise NotImplementedError

    def open(self, source: str | os.PathLike, config: ModelConfig | str | None = None) -> Checkpoint:
        raise NotImplementedError


SOURCES: list[Source] = []


def register_source(cls: type) -> type:
    """Class decorator: file a Source subclass; sources registered later are asked first."""
    SOURCES.insert(0, cls())
    return cls


@register_source
class HFCheckpoint(Source):
    """A Hugging Face folder (config.json + safetensors or torch .bin shards), a .safetensors / .bin
    file next to its config.json, or a hub repo id (resolved through the HF cache)."""

    name = "hf"

    def claims(self, source: str | os.PathLike) -> bool:
        return True  # the fallback: resolve_source and read_hf_config name what is missing

    def open(self, source: str | os.PathLike, config: ModelConfig | str | None = None) -> Checkpoint:
        folder, single = resolve_source(source)
        hf = read_hf_config(folder)
        adapter = get_adapter(hf["model_type"])
        check_quantization(hf, folder / "config.json", adapter.quant_methods)
        if config is None:
            config = _config_from_hf(adapter, hf, folder, source)
        elif not isinstance(config, ModelConfig):
            config = get_config(config)
        infos = checkpoint_index(folder, single)
        try:
            scales = split_scales(hf, infos)  # fp8: the rules see dequantised weights
        except ValueError as e:
            raise CheckpointError(f"{folder}: {e}") from None
        return Checkpoint(folder, infos, adapter, config, hf, scales, adapter.model_type)


def _config_from_hf(adapter: Adapter, hf: dict[str, Any], folder: Path, source: Any) -> ModelConfig:
    try:
        config = adapter.to_config(hf)
    except LLMZooError as e:  # "config.json: <key>: …" from the adapter: give the whole path
        msg = str(e)
        raise type(e)(f"{folder}{os.sep}{msg}" if msg.startswith("config.json") else f"{folder / 'config.json'}: {msg}") from None
    except ValueError as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None
    match, diff = closest_zoo_entry(config)
    updates: dict[str, Any] = {"reference": {"hf_repo": str(source)}}
    if match is not None:
        updates["notes"] = f"shapes match zoo entry {match}" + (f" (differs: {'; '.join(diff)})" if diff else "")
        if not diff:
            updates["name"] = match
    return ModelConfig.model_validate({**config.to_dict(), **updates})


def open_checkpoint(source: str | os.PathLike, config: ModelConfig | str | None = None) -> Checkpoint:
    """The first registered source that claims `source`, opened (headers and config only)."""
    load_plugins()
    for s in SOURCES:
        if s.claims(source):
            return s.open(source, config)
    raise CheckpointError(f"{source}: no registered checkpoint source claims it")


# ------------------------------------------------------------------------------ the pipeline


@torch.no_grad()
def load(
    model: nn.Module,
    ckpt: Checkpoint,
    *,
    dtype: torch.dtype | None = None,
    device: Any = "cpu",
    strict: bool = True,
    local: Callable[[Tensor], tuple[tuple, Tensor]] | None = None,
) -> dict[str, int]:
    """plan → read → transform → place, for every source and both kinds of read.

    plan: names and shapes checked against the model before any read (`check_plan`). Whole reads
    (local=None) stream file by file through the rules' transforms and assign each tensor (one group
    in memory). Sliced reads: `local(target)` gives (region, local tensor) of each model tensor this
    rank holds; only that region is read (safetensors get_slice through each transform's `lazy`
    form) and copied in place. Returns {"bytes_read", "bytes_total"} (bytes_read: sliced reads only)."""
    groups = check_plan(ckpt.adapter, ckpt.config, model, ckpt.infos, strict)
    total = sum(math.prod(i.shape) * i.dtype.itemsize for i in ckpt.infos.values())
    if local is None:
        load_weights(model, groups, ckpt.infos, dtype, device, ckpt.hf, ckpt.scales)
        return {"bytes_read": total, "bytes_total": total}
    if any(p.is_meta for p in model.parameters()) or any(b.is_meta for b in model.buffers()):
        model.to_empty(device=device)
    reader = SliceReader()
    targets = model.state_dict(keep_vars=True)
    block = fp8_block_size(ckpt.hf) if ckpt.scales else None
    for g in progress(groups, desc="loading weight slices", unit="tensor"):
        xs = []
        for n in g.hf_names:
            x = reader.lazy(n, ckpt.infos[n])
            if n in ckpt.scales:
                x = Dequantize(block).lazy([x, reader.lazy(*ckpt.scales[n])])[0]
            xs.append(x)
        for t in g.rule.transforms:
            xs = t.lazy(xs)
        for ours, x in zip(g.our_names, xs):
            region, dst = local(targets[ours])
            dst.copy_(x.read(region))
    return {"bytes_read": reader.bytes_read, "bytes_total": total}


class SliceReader:
    """Reads blocks of checkpoint tensors with safetensors `get_slice`, counting the bytes it reads."""

    def __init__(self):
        self.files: dict[Any, Any] = {}
        self.bytes_read = 0

    def lazy(self, name: str, info: TensorInfo) -> Lazy:
        def read(region: tuple) -> Tensor:
            if info.file.suffix != ".safetensors":  # a torch .bin shard cannot be sliced on disk
                t = _bin_file(info.file)[name][region]
            else:
                f = self.files.get(info.file)
                if f is None:
                    f = self.files[info.file] = safe_open(str(info.file), framework="pt")
                t = f.get_slice(name)[region] if region else f.get_tensor(name)
            self.bytes_read += t.numel() * t.element_size()
            return t

        return Lazy(info.shape, info.dtype, read)


def from_pretrained(
    source: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
    config: ModelConfig | str | None = None,
) -> CausalLM:
    """An llmzoo model with a checkpoint's weights, from any registered source.

    source: a checkpoint folder, a .safetensors file next to its config.json, a hub repo id
    (resolved through the HF cache; honours HF_HUB_OFFLINE), or a folder another registered source
    claims (a tensor-parallel folder with no config.json: see `SOURCES`). dtype: cast floating
    tensors (None keeps each tensor's stored dtype). config: use this ModelConfig (or zoo name)
    instead of converting config.json. strict=False skips (with a warning) checkpoint tensors no
    rule or model parameter wants; missing and mis-shaped tensors are always an error."""
    ckpt = open_checkpoint(source, config)
    model = build_meta(ckpt.config)
    load(model, ckpt, dtype=resolve_dtype(dtype), device=device, strict=strict)
    if ckpt.model_type is not None:
        model.hf_model_type = ckpt.model_type
        model.hf_config = ckpt.hf
    return model.eval()
