"""Fuzz targets shared by tests/test_fuzz.py (a bounded profile in CI) and scripts/fuzz.py (a long run).

Each target draws one hostile input with hypothesis and feeds it to llmzoo. The contract: either a
model comes back that runs a tiny forward with finite logits ("ran"; a model too big to run on a
laptop is built on the meta device only: "meta"), or an LLMZooError is raised ("rejected"). Any
other exception escapes the target: the test fails on it, the script counts it.

Targets: zoo configs (mutated mappings and mutated YAML text), config.json of every adapter,
index files and safetensors headers of a real sharded checkpoint.
"""

from __future__ import annotations

import copy
import json
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from hypothesis import strategies as st

import llmzoo
from llmzoo.errors import LLMZooError

CURRENT: list[str] = [""]  # a short description of the case being run (scripts/fuzz.py reports slow ones)
RUN_LIMIT = 20_000_000  # parameters: an accepted model at most this big runs a forward on CPU

HOSTILE = [
    0, -1, 1, 2, 3, 7, 2**31, 2**31 - 1, 2**53 + 1, 2**63, 2**64, 10**30, -(2**63),
    0.0, -0.0, 0.5, 1e-300, 1e308, -1e308, float("nan"), float("inf"), float("-inf"),
    True, False, None, "", "false", "true", "0", "1e5", "x" * 3000, "\x00", "é", "../etc/passwd",
    [], {}, [1, 2], [[1]], {"type": "x"}, {"type": None}, {"a": {"b": {}}},
]
VALUE = st.one_of(
    st.sampled_from(HOSTILE),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.booleans(),
    st.lists(st.integers(-3, 3), max_size=3),
)


def paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into nested dicts and lists (the root excluded)."""
    out = []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out.extend(paths(v, (*prefix, k)))
    return out


def mutate(data: st.DataObject, tree: Any, max_ops: int = 3) -> Any:
    """1..max_ops edits: set a value, delete a key, add an unknown key, or copy one subtree over another."""
    tree = json.loads(json.dumps(tree, default=str, allow_nan=True))
    for _ in range(data.draw(st.integers(1, max_ops), label="ops")):
        ps = paths(tree)
        if not ps:
            return copy.deepcopy(data.draw(VALUE, label="root"))
        path = data.draw(st.sampled_from(ps), label="path")
        *parents, last = path
        node = tree
        for p in parents:
            node = node[p]
        op = data.draw(st.sampled_from(["set", "set", "set", "delete", "add", "copy"]), label="op")
        if op == "set":
            node[last] = copy.deepcopy(data.draw(VALUE, label="value"))  # HOSTILE's lists stay unshared
        elif op == "delete":
            del node[last]
        elif op == "add" and isinstance(node, dict):
            node[data.draw(st.sampled_from(["extra", "type", "n_heads", "tied", "bias", "window"]))] = copy.deepcopy(
                data.draw(VALUE))
        elif op == "copy":
            src = data.draw(st.sampled_from(ps), label="source")
            value = tree
            for p in src:
                value = value[p]
            node[last] = json.loads(json.dumps(value, allow_nan=True))
    return tree


def outcome(fn: Callable[[], Any]) -> str:
    """'rejected' for an LLMZooError, else what `fn` returned ('ran' or 'meta'); other exceptions escape."""
    try:
        return fn()
    except LLMZooError as e:
        assert len(str(e)) <= 2100, "an error message echoes more than the cap"
        return "rejected"


def run_model(model: torch.nn.Module) -> str:
    from llmzoo.parity import forward_logits

    vocab, n = model.config.vocab_size, min(6, model.config.max_seq_len)
    ids = torch.arange(n).remainder(vocab)[None].repeat(2, 1)  # two rows, the second left-padded
    mask = torch.ones_like(ids)
    mask[1, : n // 3] = 0
    logits = forward_logits(model, ids, mask)
    assert torch.isfinite(logits[mask.bool()]).all(), f"{model.config.name}: non-finite logits"
    return "ran"


def build_and_run(config: llmzoo.ModelConfig) -> str:
    if llmzoo.count_params(config).total > RUN_LIMIT:
        llmzoo.build(config, device="meta")
        return "meta"
    return run_model(llmzoo.build(config))


# ------------------------------------------------------------------------------ targets


def zoo_config(data: st.DataObject) -> str:
    """A zoo entry (full size or already scaled to tiny) with 1-3 edits: validate, bound its size,
    build (meta, or CPU + forward) and scale it to tiny (CPU + forward, ≤ 50 M parameters)."""
    from llmzoo.builder import check_size
    from llmzoo.scaling import MAX_PARAMS

    name = data.draw(st.sampled_from(llmzoo.list_models()), label="entry")
    tiny_first = data.draw(st.booleans(), label="tiny first")
    base = llmzoo.scale_down(name) if tiny_first else llmzoo.get_config(name)
    tree = mutate(data, base.to_dict())
    CURRENT[0] = f"{name} tiny_first={tiny_first}: {json.dumps(tree, allow_nan=True)[:3000]}"

    def go() -> str:
        config = llmzoo.get_config(tree) if isinstance(tree, dict) else llmzoo.load_config(tree)
        check_size(config)
        tiny = llmzoo.scale_down(config)
        assert llmzoo.count_params(tiny).total <= MAX_PARAMS["tiny"]
        result = run_model(llmzoo.build(tiny))
        return build_and_run(config) if tiny_first else result

    return outcome(go)


def yaml_text(data: st.DataObject) -> str:
    """A zoo YAML file with byte-level edits (duplicated lines, anchors and aliases, cut, bad bytes)."""
    from llmzoo.zoo import config_path

    name = data.draw(st.sampled_from(llmzoo.list_models()), label="entry")
    lines = config_path(name).read_bytes().splitlines()
    for _ in range(data.draw(st.integers(1, 3), label="ops")):
        i = data.draw(st.integers(0, max(len(lines) - 1, 0)), label="line")
        op = data.draw(st.sampled_from(["dup", "drop", "bytes", "alias", "cut", "indent"]), label="op")
        if not lines:
            break
        if op == "dup":
            lines.insert(i, lines[i])
        elif op == "drop":
            del lines[i]
        elif op == "bytes":
            lines[i] = lines[i] + data.draw(st.binary(max_size=8), label="bytes")
        elif op == "alias":
            lines[:0] = [b"x0: &a0 [1, 1, 1, 1, 1, 1, 1, 1]"] + [
                f"x{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 8)}]".encode() for k in range(1, 8)]
            lines.append(b"notes: *a7")
        elif op == "cut":
            lines = lines[:i]
        else:
            lines[i] = b"  " + lines[i]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.yaml"
        path.write_bytes(b"\n".join(lines) + b"\n")
        CURRENT[0] = f"{name}.yaml: {path.read_bytes()[:1500]!r}"

        def go() -> str:
            from llmzoo.builder import check_size

            config = llmzoo.load_config(path)
            check_size(config)
            return run_model(llmzoo.build(llmzoo.scale_down(config)))

        return outcome(go)


def hf_config(data: st.DataObject) -> str:
    """An adapter's tiny config.json with 1-3 edits: to_config, build and run (or meta)."""
    from llmzoo.hf import get_adapter, supported_model_types

    adapter = get_adapter(data.draw(st.sampled_from(supported_model_types()), label="model_type"))
    hf = mutate(data, adapter.tiny_hf_config())
    CURRENT[0] = f"{adapter.model_type}: {json.dumps(hf, allow_nan=True)[:2000]}"
    return outcome(lambda: build_and_run(adapter.to_config(hf)))


class CheckpointCase:
    """A real tiny sharded checkpoint (transformers' llama, 4 safetensors shards + index) and a fresh
    folder per case: shards symlinked in (as the hub cache lays them out), the edited file written."""

    def __init__(self, root: Path, model_type: str = "llama"):
        from conftest import save_tiny_checkpoint

        self.root = root
        self.base = root / f"base-{model_type}"
        if not (self.base / "config.json").is_file():
            save_tiny_checkpoint(model_type, self.base)
        self.index = json.loads((self.base / "model.safetensors.index.json").read_text())
        self.shards = sorted(p.name for p in self.base.glob("*.safetensors"))
        self.n = 0

    def folder(self, replace: dict[str, bytes]) -> Path:
        self.n += 1
        case = self.root / f"case-{self.n}"
        if case.exists():
            shutil.rmtree(case)
        case.mkdir()
        for p in self.base.iterdir():
            if p.name not in replace:
                (case / p.name).symlink_to(p)
        for name, content in replace.items():
            (case / name).write_bytes(content)
        return case

    def load(self, folder: Path) -> str:
        def go() -> str:
            return run_model(llmzoo.from_pretrained(folder))

        try:
            return outcome(go)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def index_file(data: st.DataObject, ckpt: CheckpointCase) -> str:
    """model.safetensors.index.json with 1-3 edits (shard names, tensor names, types), or raw bytes."""
    if data.draw(st.integers(0, 9), label="raw") == 0:
        content = data.draw(st.binary(max_size=64), label="bytes")
    else:
        tree = dict(ckpt.index)
        tree["weight_map"] = dict(tree["weight_map"])
        if data.draw(st.booleans(), label="path-like"):
            key = data.draw(st.sampled_from(sorted(tree["weight_map"])), label="tensor")
            tree["weight_map"][key] = data.draw(st.sampled_from([
                "../" + ckpt.shards[0], "/" + ckpt.shards[0], "./" + ckpt.shards[0], "sub/" + ckpt.shards[0],
                ckpt.shards[0] + "\x00", "..", ".", "", "config.json", "C:" + ckpt.shards[0],
                ckpt.shards[-1], "missing.safetensors", "\\" + ckpt.shards[0]]), label="shard")
            if data.draw(st.booleans(), label="rename"):  # a huge expert / layer index in a tensor name
                tree["weight_map"][key.replace(".0.", ".99999999999.", 1)] = tree["weight_map"].pop(key)
        else:
            tree = mutate(data, tree)
        content = json.dumps(tree, allow_nan=True).encode()
    CURRENT[0] = f"index: {content[:1500]!r}"
    return ckpt.load(ckpt.folder({"model.safetensors.index.json": content}))


def _header(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def safetensors_header(data: st.DataObject, ckpt: CheckpointCase) -> str:
    """One shard with its JSON header edited (dtype, shape, offsets, names, metadata) or its bytes
    cut, its length prefix changed, or bytes flipped."""
    shard = data.draw(st.sampled_from(ckpt.shards), label="shard")
    raw = (ckpt.base / shard).read_bytes()
    header, body = _header(raw)
    kind = data.draw(st.sampled_from(["field", "field", "tree", "prefix", "cut", "flip"]), label="kind")
    if kind == "field":
        name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")), label="tensor")
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "name"]), label="field")
        if field == "dtype":
            header[name]["dtype"] = data.draw(st.sampled_from(
                ["I64", "I32", "BOOL", "U8", "F8_E4M3", "F8_E5M2", "F64", "U64", "F4", "XX", "", 7]))
        elif field == "shape":
            header[name]["shape"] = data.draw(st.one_of(
                st.lists(st.integers(-2, 2**40), max_size=4), st.sampled_from([[2**62, 2**62], [0], [], "x"])))
        elif field == "data_offsets":
            a, b = header[name]["data_offsets"]
            header[name]["data_offsets"] = data.draw(st.sampled_from(
                [[b, a], [a, a], [0, 2**63], [-1, b], [a, b + 1], [a + 1, b + 1], [a], "x"]))
        else:
            new = data.draw(st.sampled_from([name.replace(".0.", ".99999999999.", 1), name + ".qweight",
                                             name + "_scale_inv", "", "x" * 5000]))
            header[new] = header.pop(name)
        raw = _pack(header, body)
    elif kind == "tree":
        raw = _pack(mutate(data, header), body)
    elif kind == "prefix":
        n = data.draw(st.sampled_from([0, 1, 7, 2**32, 2**63, 2**64 - 1, len(raw)]), label="length")
        raw = struct.pack("<Q", n) + raw[8:]
    elif kind == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]
    else:
        i = data.draw(st.integers(0, min(len(raw), 8 + 400) - 1), label="at")
        raw = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255), label="xor")]) + raw[i + 1 :]
    CURRENT[0] = f"{shard} ({kind}): {raw[:600]!r}"
    return ckpt.load(ckpt.folder({shard: raw}))


def _pack(header: Any, body: bytes) -> bytes:
    text = json.dumps(header, allow_nan=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


TARGETS = {"zoo_config": zoo_config, "yaml_text": yaml_text, "hf_config": hf_config}
CHECKPOINT_TARGETS = {"index_file": index_file, "safetensors_header": safetensors_header}

