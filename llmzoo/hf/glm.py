"""GLM-130B's official checkpoint: SwissArmyTransformer format, split for tensor parallelism.

The released folder holds `latest` (the iteration, e.g. 49300) and `<iteration>/mp_rank_0X_model_states.pt`
(8 ranks), each `{"module": state_dict}` in fp16 with names such as
`transformer.layers.N.attention.query_key_value.weight`; there is no config file. The shards merge
exactly as THUDM/GLM-130B `tools/convert_tp.py` splits them:

- `word_embeddings.weight` (vocab rows), `attention.query_key_value.{weight,bias}` (per-head [q|k|v]
  blocks, whole heads per rank) and `mlp.dense_h_to_4h.{weight,bias}` concatenate on dim 0 — the
  last one per GeGLU half: rank r holds [linear_r | gelu_r], the merge is [linear_0..n | gelu_0..n];
- `attention.dense.weight` and `mlp.dense_4h_to_h.weight` (row-parallel) concatenate on dim 1;
- LayerNorms, `attention.dense.bias`, `mlp.dense_4h_to_h.bias` and any `rotary_emb.inv_freq` are
  replicated (rank 0's copy is taken; the official RotaryEmbedding ignores a loaded inv_freq).

`convert_to_safetensors` merges once and writes safetensors shards (official names) into the folder,
so later loads are mmap'd; `load_glm` maps the merged names onto llmzoo's (see `rules`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..builder import build_meta, resolve_dtype
from ..config import ModelConfig
from ..errors import CheckpointError, LLMZooError, clip
from ..parity import check_report, register_check
from ..reference.glm130b import glm130b_masks_and_position_ids, glm_forward, random_official_state
from ..zoo import get_config
from .adapter import Adapter
from .loader import Checkpoint, Source, checkpoint_index, load, register_source
from .chatglm import glm_rules
from .rules import IGNORE, Rule, Split

REPLICATED = (
    "input_layernorm.weight",
    "input_layernorm.bias",
    "attention.dense.bias",
    "post_attention_layernorm.weight",
    "post_attention_layernorm.bias",
    "mlp.dense_4h_to_h.bias",
    "attention.rotary_emb.inv_freq",
    "final_layernorm.weight",
    "final_layernorm.bias",
)
GLU = ("mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias")
CONCAT_DIM = {"attention.dense.weight": 1, "mlp.dense_4h_to_h.weight": 1}
SAFETENSORS_DIR = "safetensors"  # where convert_to_safetensors writes, inside the checkpoint folder
INDEX = "model.safetensors.index.json"


def short_name(key: str) -> str:
    """convert_tp.py's key for the split rule: the part after `transformer.layers.N.` or the first dot."""
    return ".".join(key.split(".")[3 if key.startswith("transformer.layers") else 1 :])


def _replicated(key: str) -> bool:
    return short_name(key) in REPLICATED or key.endswith("rotary_emb.inv_freq")


def merge_tp(shards: list[dict[str, Tensor]], key: str) -> Tensor:
    """One merged tensor from its per-rank pieces (convert_tp.py with target_tp = 1)."""
    if len(shards) == 1 or _replicated(key):
        return shards[0][key]
    name = short_name(key)
    dim = CONCAT_DIM.get(name, 0)
    if name in GLU:  # rank r holds [linear_r | gelu_r]: gather all linear halves, then all gelu halves
        halves = [sd[key].chunk(2, dim=dim) for sd in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=dim)
    return torch.cat([sd[key] for sd in shards], dim=dim)


def _names(shards: list[dict[str, Tensor]]) -> list[str]:
    """The tensor names every rank holds (the same for all, else an error naming the difference)."""
    names = list(shards[0])
    for r, sd in enumerate(shards[1:], 1):
        if set(sd) != set(names):
            raise ValueError(f"mp_rank_{r:02d} and mp_rank_00 hold different tensors: {sorted(set(sd) ^ set(names))[:8]}")
    return names


def merge_state_dicts(shards: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The unsharded state dict; every rank must hold the same names."""
    return {k: merge_tp(shards, k) for k in _names(shards)}


def split_tp(state: dict[str, Tensor], tp: int) -> list[dict[str, Tensor]]:
    """Per-rank state dicts of an unsharded one (convert_tp.py with original_tp = 1, target_tp = tp)."""
    out: list[dict[str, Tensor]] = [{} for _ in range(tp)]
    for key, x in state.items():
        if _replicated(key):
            for sd in out:
                sd[key] = x.clone()
            continue
        name = short_name(key)
        dim = CONCAT_DIM.get(name, 0)
        if name in GLU:
            chunks = x.chunk(2 * tp, dim=dim)
            for r, sd in enumerate(out):
                sd[key] = torch.cat([chunks[r], chunks[tp + r]], dim=dim).clone()
        else:
            if x.shape[dim] % tp:
                raise ValueError(f"{key}: dim {dim} of size {x.shape[dim]} does not split into {tp} ranks")
            for r, piece in enumerate(x.chunk(tp, dim=dim)):
                out[r][key] = piece.clone()
    return out


# ------------------------------------------------------------------------------- the folder


def is_sat_checkpoint(folder: str | Path) -> bool:
    """A SwissArmyTransformer checkpoint folder: `latest` beside `<iteration>/mp_rank_XX_model_states.pt`,
    or one already converted by `convert_to_safetensors`."""
    folder = Path(folder)
    return (folder / "latest").is_file() or (folder / SAFETENSORS_DIR / INDEX).is_file()


def rank_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    latest = folder / "latest"
    if not latest.is_file():
        raise CheckpointError(f"{folder}: no `latest` file (a SwissArmyTransformer checkpoint has one)")
    try:
        iteration = latest.read_bytes()[:256].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CheckpointError(f"{latest}: not UTF-8 text (it names the iteration folder)") from None
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", iteration) or iteration in (".", ".."):  # a folder inside this one
        raise CheckpointError(f"{latest}: {clip(repr(iteration), 80)} is not the name of an iteration folder "
                              f"inside the checkpoint")
    files = sorted((folder / iteration).glob("mp_rank_*_model_states.pt"))
    if not files:
        raise CheckpointError(f"{folder / iteration}: no mp_rank_XX_model_states.pt files (latest = {iteration!r})")
    ranks = [int(re.search(r"mp_rank_(\d+)_", f.name).group(1)) for f in files]
    if ranks != list(range(len(files))):
        raise CheckpointError(f"{folder / iteration}: ranks {ranks[:10]} are not 0..{len(files) - 1}")
    return files


def read_rank(path: Path) -> dict[str, Tensor]:
    """One rank's state dict: weights_only (no pickled code runs), mmap'd (nothing copied until used)."""
    try:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (pre-zipfile) torch.save cannot be mmap'd
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable weights-only torch file: {clip(e, 300)}") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("module"), dict):
        keys = list(blob)[:5] if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(f"{path}: expected a dict with a 'module' state dict, got {clip(keys, 200)}")
    bad = [clip(repr(k), 80) for k, v in blob["module"].items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: module entries that are not named tensors: {', '.join(bad[:10])}")
    return blob["module"]


def save_sat_checkpoint(shards: list[dict[str, Tensor]], folder: str | Path, iteration: int = 49300) -> Path:
    """Write per-rank state dicts in the official layout (tests, and re-sharding)."""
    folder = Path(folder)
    (folder / str(iteration)).mkdir(parents=True, exist_ok=True)
    (folder / "latest").write_text(str(iteration))
    for r, sd in enumerate(shards):
        torch.save({"module": sd}, folder / str(iteration) / f"mp_rank_{r:02d}_model_states.pt")
    return folder


def convert_to_safetensors(
    folder: str | Path, out: str | Path | None = None, max_shard_bytes: int = 4 << 30
) -> Path:
    """Merge the TP shards once and write them (official names) as safetensors shards plus an index
    into `out` (default `<folder>/safetensors`). Tensors are merged one at a time from mmap'd ranks."""
    out = _output_folder(folder, out)
    shards = [read_rank(f) for f in rank_files(folder)]
    try:
        names = _names(shards)
    except ValueError as e:
        raise CheckpointError(f"{folder}: {e}") from None
    # written into a temporary folder beside `out`, renamed into place when complete: a failed
    # conversion leaves nothing behind, and a later load never sees half an output
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _write_merged(shards, names, tmp, max_shard_bytes)
        if out.is_dir():
            out.rmdir()  # empty (_output_folder checked): replaced by the finished one
        os.rename(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (LLMZooError, KeyboardInterrupt, SystemExit)):
            raise
        if isinstance(e, (ValueError, RuntimeError, OSError)):
            raise CheckpointError(f"{folder}: converting to safetensors failed, nothing written: {clip(e, 500)}") from None
        raise
    return out


def _output_folder(folder: str | Path, out: str | Path | None) -> Path:
    """Where the conversion writes: never through a symlink (a planted `safetensors` link would send
    the write outside the checkpoint), never over files it did not write."""
    folder = Path(folder)
    out = Path(out) if out is not None else folder / SAFETENSORS_DIR
    if out.is_symlink():
        raise CheckpointError(f"{out}: is a symlink (to {clip(os.readlink(out), 200)}); llmzoo writes converted "
                              f"shards only into a real folder (remove it, or pass converted=<folder>)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out}: exists and is not a finished conversion (no {INDEX}); remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _write_merged(shards: list[dict[str, Tensor]], names: list[str], out: Path, max_shard_bytes: int) -> None:
    buckets: list[list[str]] = [[]]
    size = 0
    for k in names:
        nbytes = sum(sd[k].numel() * sd[k].element_size() for sd in shards[:1]) * (
            1 if _replicated(k) else len(shards)
        )
        if buckets[-1] and size + nbytes > max_shard_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(k)
        size += nbytes
    weight_map: dict[str, str] = {}
    for n, keys in enumerate(buckets, 1):
        fname = f"model-{n:05d}-of-{len(buckets):05d}.safetensors"
        tensors, seen = {}, set()
        for k in keys:  # safetensors refuses tensors that share storage: copy any repeat
            t = merge_tp(shards, k).contiguous()
            tensors[k] = t.clone() if t.data_ptr() in seen else t
            seen.add(t.data_ptr())
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in keys})
    meta = {"source": "SwissArmyTransformer", "tp_ranks": len(shards)}
    (out / INDEX).write_text(json.dumps({"metadata": meta, "weight_map": weight_map}, indent=1))


# --------------------------------------------------------------------------------- the table


def rules(config: ModelConfig) -> list[Rule]:
    """Merged official names → llmzoo names. QKV is per head [q|k|v]; dense_h_to_4h is [linear | gelu],
    i.e. [up | gate] for llmzoo's GLU down(act(gate(x)) ⊙ up(x))."""
    # RotaryEmbedding._load_from_state_dict ignores the inv_freq buffers
    return glm_rules(config, "mlp.{up,gate}", Split(dim=0, parts=2)) + [
        Rule("mixins.rotary-embedding.rotary_emb.inv_freq", IGNORE)]


class SATCheckpoint(Adapter):
    """The weight table of a merged GLM-130B checkpoint, for the shared loader's plan and stream.
    Not a registered HF model_type: the official folder has no config.json, so the architecture
    comes from a zoo config."""

    model_type = "glm-130b (SwissArmyTransformer)"

    def rules(self, config: ModelConfig) -> list[Rule]:
        return rules(config)


@register_source
class SATFolder(Source):
    """GLM-130B's official tensor-parallel folder (no config.json; `config` names the zoo entry,
    default glm-130b). The TP shards are merged once into safetensors (`<folder>/safetensors`), so
    this and every later load streams mmap'd tensors."""

    name = "sat"

    def claims(self, source) -> bool:
        folder = Path(source)
        return folder.is_dir() and not (folder / "config.json").is_file() and is_sat_checkpoint(folder)

    def open(self, source, config=None, converted: str | Path | None = None) -> Checkpoint:
        cfg = get_config(config if config is not None else "glm-130b")
        out = Path(converted) if converted is not None else Path(source) / SAFETENSORS_DIR
        if out.is_symlink():  # read nothing through a link planted in the checkpoint folder either
            _output_folder(source, out)
        if not (out / INDEX).is_file():
            convert_to_safetensors(source, out)
        return Checkpoint(out, checkpoint_index(out), SATCheckpoint(), cfg, {})


def load_glm(
    folder: str | Path,
    config: str | ModelConfig | dict | None = "glm-130b",
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
    converted: str | Path | None = None,
) -> torch.nn.Module:
    """An llmzoo model with the weights of an official GLM-130B folder (or one of a scaled config).

    config: the zoo name or config the folder was trained with (the folder has none).
    converted: where the merged safetensors go (default `<folder>/safetensors`)."""
    ckpt = SATFolder().open(folder, config, converted)
    model = build_meta(ckpt.config)
    load(model, ckpt, dtype=resolve_dtype(dtype), device=device, strict=strict)
    return model.eval()


def official_params(config: ModelConfig) -> int:
    """The parameter count the official shapes imply (SAT GLM130B: per layer QKV, dense, GeGLU
    h→2·4h and 4h→h with biases, two LayerNorms; word embeddings; final LayerNorm; tied head)."""
    d, f, v, n = config.d_model, config.block.mlp.d_ff, config.vocab_size, config.n_layers
    hd = config.block.attention.n_heads * config.block.attention.head_dim
    layer = (d * 3 * hd + 3 * hd) + (hd * d + d) + (d * 2 * f + 2 * f) + (f * d + d) + 2 * (2 * d)
    return v * d + n * layer + 2 * d



# ------------------------------------------------------------------------ tiny parity check


def tiny_config(n_layers: int = 3, base: str | ModelConfig = "glm-130b") -> ModelConfig:
    """GLM-130B's structure at toy size: every choice of the zoo entry kept, widths shrunk so that
    heads, vocab rows and GeGLU halves split over 1, 2 and 4 ranks; α = (2N)^½ recomputed for the
    new depth, as the official layer_forward computes it from num_layers."""
    d = get_config(base).to_dict()
    d.update(name="glm-130b-tiny", vocab_size=128, d_model=32, n_layers=n_layers, max_seq_len=64,
             published_params=None)
    d["block"].update(alpha=(2 * n_layers) ** 0.5, init_beta=(2 * n_layers) ** -0.5)
    d["block"]["attention"].update(n_heads=4, n_kv_heads=4, head_dim=8)
    d["block"]["mlp"].update(d_ff=48)
    return ModelConfig.model_validate(d)


def glm_test_batch(config: ModelConfig, seed: int = 0) -> dict[str, dict[str, Tensor]]:
    """Inputs of the three official conventions, two sequences each (context lengths differ):

    context: a pure-context forward ([gMASK] last, no [sop]): everything visible, positions a range;
    gmask: context + [sop] + generated tokens, positions a range (generate.py, gmask=True);
    mask: the same with [MASK], [sop] and generated tokens at the mask token's index.
    Each entry holds llmzoo inputs (input_ids, position_ids, prefix_len) and the official mask."""
    g = torch.Generator().manual_seed(seed)
    V, T, gen = config.vocab_size, 12, 4
    out: dict[str, dict[str, Tensor]] = {}
    for kind in ("context", "gmask", "mask"):
        ids, pos, masks, prefix = [], [], [], []
        for b, ctx_len in enumerate((T - gen - 1, T - gen - 3)):  # tokens before [sop]
            seq = torch.randint(0, V, (T,), generator=g)
            if kind == "context":  # T context tokens, all before a [sop] not yet fed
                m, p = glm130b_masks_and_position_ids(list(range(T + 1)), ctx_len, 0, gmask=True)
                m, p = m[..., :T, :T], p[:, :T]
                prefix.append(T)
            else:
                mask_pos = int(torch.randint(0, ctx_len, (1,), generator=g))
                context = ctx_len + 1  # ... then [sop]
                m, p = glm130b_masks_and_position_ids(list(range(context)), mask_pos, T - context, gmask=kind == "gmask")
                prefix.append(ctx_len)
            ids.append(seq)
            pos.append(p[0])
            masks.append(m[0])
        out[kind] = {
            "input_ids": torch.stack(ids),
            "position_ids": torch.stack(pos),
            "prefix_len": torch.tensor(prefix),
            "official_mask": torch.stack(masks),
        }
    return out


@register_check("glm-130b")
def verify_tiny(tp: int = 2, seed: int = 0) -> dict[str, Any]:
    """GLM-130B (tiny) against the independent reference of the official forward.

    Draws loud random weights with the official names, saves them in the official TP layout
    (`tp` ranks), loads them with `load_glm` and compares fp32 logits with
    `llmzoo.reference.glm130b.glm_forward` run rank by rank, for a pure-context forward and for
    context + generated tokens with the [gMASK] and [MASK] conventions. Returns
    {"model", "reference", "tp", "cases": {kind: max|Δlogits|}, "max_abs_diff", "tolerance", "ok",
    "logits": [(ours, reference)]} (a row of `llmzoo verify`)."""
    cfg = tiny_config()
    a = cfg.block.attention
    state = random_official_state(vocab=cfg.vocab_size, hidden=cfg.d_model, num_layers=cfg.n_layers,
                                  num_heads=a.n_heads, inner=cfg.block.mlp.d_ff, seed=seed)
    shards = split_tp(state, tp)
    cases: dict[str, float] = {}
    pairs: list[tuple[Tensor, Tensor]] = []
    with tempfile.TemporaryDirectory() as tmp:
        save_sat_checkpoint(shards, tmp)
        model = load_glm(tmp, cfg, dtype=torch.float32)
        with torch.no_grad():
            for kind, batch in glm_test_batch(cfg, seed).items():
                ours = model(batch["input_ids"], position_ids=batch["position_ids"], prefix_len=batch["prefix_len"])
                ref = glm_forward(shards, batch["input_ids"], batch["position_ids"], batch["official_mask"],
                                  num_layers=cfg.n_layers, num_heads=a.n_heads)
                cases[kind] = float((ours - ref).abs().max())
                pairs.append((ours.flatten(0, 1), ref.flatten(0, 1)))
    worst = max(cases.values())
    return {"model": "glm-130b (tiny)", "reference": "llmzoo.reference.glm130b (SAT 0.2.12 GLM130B)", "tp": tp,
            "cases": cases, "max_abs_diff": worst, "tolerance": 1e-4, "ok": worst <= 1e-4, "logits": pairs,
            "reference_label": f"SAT tp={tp} vs in-repo ref",
            "tolerance_rule": "float32 always (the SAT reference runs in float32): max|Δ| ≤ 1e-4"}


def verify_report(tp: int = 2, seed: int = 0):
    """`verify_tiny` as an `llmzoo.parity.ParityReport` (the glm-130b row of `llmzoo verify`)."""
    return check_report("glm-130b", verify_tiny(tp, seed))
