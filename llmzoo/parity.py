"""Parity with the reference implementation: same weights, same batch, compare logits.

`parity(source)` loads a checkpoint twice (transformers and llmzoo), runs one padded batch through
both with forward hooks on the module boundaries that the adapter's rules pair up (embedding,
each layer's norms / attention / MLP, final norm, head) and reports max / mean |Δlogits|, top-1
agreement and KL. When logits disagree the report names the first boundary, in execution order,
whose output diverges. `verify()` does this for a tiny random reference of every supported type.
transformers is imported lazily, here only.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# logits tolerance: |Δ| ≤ atol + rtol · max|reference logits|; layer outputs diverge when
# |Δ| > layer_rtol · (1 + max|reference output|).  fp32 only sees summation-order noise;
# bf16/fp16 round every activation, so differences of a few ulps of the logit scale are expected.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"atol": 1e-4, "rtol": 1e-5, "layer_rtol": 1e-5},
    torch.bfloat16: {"atol": 0.0, "rtol": 6e-2, "layer_rtol": 6e-2},
    torch.float16: {"atol": 0.0, "rtol": 1e-2, "layer_rtol": 1e-2},
}


@torch.no_grad()
def loud_init_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw every parameter loudly, so a wrong mapping cannot hide behind default inits:
    1-D weights (norm gains) 1 ± 0.3, biases N(0, 0.1²), matrices N(0, 1/fan_in) (fan_in = last dim).
    Works on any nn.Module; buffers are left alone. Returns the model."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim == 1 and "bias" in leaf:
            value = torch.randn(p.shape, generator=g) * 0.1
        elif p.ndim == 1:
            value = 1.0 + (torch.rand(p.shape, generator=g) * 2 - 1) * 0.3
        else:
            value = torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1])
        p.copy_(value.to(p.dtype))
    return model


# ------------------------------------------------------------------------------ boundaries

SUBLAYER = {"embed": "embedding", "embed_in": "embedding", "embed_norm": "norm", "attn": "attention",
            "mlp": "MLP", "attn_norm": "norm", "mlp_norm": "norm", "attn_out_norm": "norm",
            "mlp_out_norm": "norm", "final_norm": "norm", "embed_out": "head", "head": "head"}


def boundary_pairs(rules: list, ours: nn.Module, ref: nn.Module) -> list[tuple[str, str]]:
    """(llmzoo module, reference module) pairs at sub-layer granularity, derived from the rules:
    `blocks.{i}.attn.q.weight` ↔ `model.layers.{i}.self_attn.q_proj.weight` pairs `blocks.{i}.attn`
    with `model.layers.{i}.self_attn` (the same number of trailing names dropped on both sides)."""
    ours_mods, ref_mods = dict(ours.named_modules()), dict(ref.named_modules())
    candidates: dict[str, set[str]] = {}
    for rule in rules:
        if rule.ours is None:
            continue
        o, h = rule.ours.text.split("."), rule.hf.text.split(".")
        depth = 3 if o[0] == "blocks" else 1
        drop = len(o) - depth
        if drop < 1 or drop >= len(h):
            continue
        ob, hb = ".".join(o[:depth]), ".".join(h[:-drop])
        if "," in ob or "," in hb:
            continue
        candidates.setdefault(ob, set()).add(hb)
    n_layers = len(getattr(ours, "blocks", []))
    pairs = []
    for ob, hbs in candidates.items():
        for i in range(n_layers) if "{i}" in ob else [None]:
            name = ob.replace("{i}", str(i))
            if name not in ours_mods:
                continue
            options = sorted((hb.replace("{i}", str(i)) for hb in hbs), key=len)
            options = [x for x in options if "{" not in x and x in ref_mods]
            if options:
                pairs.append((name, options[0]))
    return pairs


def _first(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    return getattr(out, "last_hidden_state", None)


def _logits(out: Any) -> Tensor:
    return out if isinstance(out, Tensor) else out.logits


def forward_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, like: nn.Module | None = None) -> Tensor:
    """Logits of an llmzoo model or a reference on one batch. An encoder-decoder (T5; judged from
    `like`, the llmzoo model) reads the batch as source and as target; the logits are the target's."""
    like = model if like is None else like
    seq2seq = getattr(getattr(like, "config", None), "encoder", None) is not None
    extra = dict(decoder_input_ids=input_ids, decoder_attention_mask=attention_mask) if seq2seq else {}
    with torch.no_grad():
        return _logits(model(input_ids=input_ids, attention_mask=attention_mask, **extra))


@dataclass
class Divergence:
    module: str  # llmzoo module name
    reference_module: str
    layer: int | None
    sublayer: str
    delta: float

    def __str__(self) -> str:
        where = f"layer {self.layer} {self.sublayer}" if self.layer is not None else self.sublayer
        return f"{where} ({self.module} ↔ {self.reference_module}): max|Δ| {self.delta:.3g}"


@dataclass
class ParityReport:
    model_type: str
    dtype: str
    max_abs: float
    mean_abs: float
    top1: float
    kl: float
    tolerance: float
    passed: bool
    first_divergence: Divergence | None = None
    boundaries: list[tuple[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        lines = [
            f"parity {self.model_type} ({self.dtype}): {'PASS' if self.passed else 'FAIL'}",
            f"  max|Δlogits| {self.max_abs:.3g} (tolerance {self.tolerance:.3g}), mean {self.mean_abs:.3g}",
            f"  top-1 agreement {self.top1:.2%}, KL(ref‖ours) {self.kl:.3g}",
        ]
        if self.first_divergence is not None:
            lines.append(f"  first divergence: {self.first_divergence}")
        return "\n".join(lines)


def make_batch(vocab: int, seq_len: int = 24, pad: int = 5, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two random sequences, the second right-padded by `pad` tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, seq_len), generator=g)
    mask = torch.ones(2, seq_len, dtype=torch.long)
    mask[1, seq_len - pad :] = 0
    return ids, mask


@torch.no_grad()
def compare(
    ours: nn.Module,
    ref: nn.Module,
    rules: list,
    input_ids: Tensor,
    attention_mask: Tensor,
    dtype: torch.dtype = torch.float32,
    model_type: str = "",
    tolerance: dict[str, float] | None = None,
) -> ParityReport:
    """Run both models on one batch with hooks on paired boundaries; compare at non-pad positions.
    tolerance: {atol, rtol, layer_rtol} overriding TOLERANCES[dtype] (an adapter's `tolerances`)."""
    tol = tolerance or TOLERANCES.get(dtype, TOLERANCES[torch.bfloat16])
    pairs = boundary_pairs(rules, ours, ref)
    got_ours: dict[str, Tensor] = {}
    got_ref: dict[str, Tensor] = {}
    order: list[str] = []
    handles = []

    def hook(store: dict, name: str, record: bool):
        def fn(module, args, out):
            t = _first(out)
            if t is not None and name not in store:
                store[name] = t.detach()
                if record:
                    order.append(name)
        return fn

    for o, h in pairs:
        handles.append(ours.get_submodule(o).register_forward_hook(hook(got_ours, o, True)))
        handles.append(ref.get_submodule(h).register_forward_hook(hook(got_ref, h, False)))
    try:
        a = forward_logits(ours, input_ids, attention_mask, like=ours).float()
        b = forward_logits(ref, input_ids, attention_mask, like=ours).float()
    finally:
        for hd in handles:
            hd.remove()
    keep = attention_mask.bool()
    a, b = a[keep], b[keep]  # (N, vocab) at real tokens
    diff = (a - b).abs()
    max_abs = float(diff.max())
    bound = tol["atol"] + tol["rtol"] * float(b.abs().max())
    top1 = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    kl = float(F.kl_div(a.log_softmax(-1), b.log_softmax(-1), log_target=True, reduction="batchmean"))
    passed = bool(max_abs <= bound and math.isfinite(max_abs))
    ref_of = dict(pairs)
    boundaries, first = [], None
    for name in order:
        x, y = got_ours[name], got_ref.get(ref_of[name])
        if y is None:
            continue
        if x.shape != y.shape:
            delta = float("inf")
        else:
            x, y = x.float(), y.float()
            if x.shape[:2] == keep.shape:
                x, y = x[keep], y[keep]
            delta = float((x - y).abs().max())
        boundaries.append((name, delta))
        scale = 1.0 + (float(y.float().abs().max()) if y.numel() else 0.0)
        if first is None and not passed and delta > tol["layer_rtol"] * scale:
            parts = name.split(".")
            layer = int(parts[1]) if parts[0] == "blocks" else None
            sub = SUBLAYER.get(parts[2] if layer is not None else parts[0], parts[-1])
            first = Divergence(name, ref_of[name], layer, sub, delta)
    return ParityReport(model_type, str(dtype).removeprefix("torch."), max_abs, float(diff.mean()), top1, kl,
                        bound, passed, first, boundaries)


def parity(
    source: str | None = None,
    dtype: str | torch.dtype = "float32",
    *,
    model: nn.Module | None = None,
    reference: nn.Module | None = None,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    seq_len: int = 24,
    seed: int = 0,
) -> ParityReport:
    """Compare llmzoo and the reference on a checkpoint (folder, .safetensors file or hub id).

    model / reference: already loaded models to use instead of loading `source` (e.g. a model with a
    deliberately broken component). The batch defaults to two random sequences, one right-padded."""
    from .builder import resolve_dtype
    from .hf import get_adapter
    from .hf.loader import from_pretrained, read_hf_config, resolve_source

    t0 = time.perf_counter()
    dt = resolve_dtype(dtype)
    if model is not None and source is None:
        adapter = get_adapter(model.hf_model_type)
        folder = None
    else:
        folder, _ = resolve_source(source)
        adapter = get_adapter(read_hf_config(folder)["model_type"])
    if model is None:
        model = from_pretrained(source, dtype=dt)
    if reference is None:
        if folder is None:
            raise ValueError("parity: give a checkpoint source or a reference model")
        reference = adapter.load_reference(str(folder), dt)
    model, reference = model.to(dt).eval(), reference.to(dt).eval()
    if input_ids is None:
        input_ids, mask = make_batch(model.config.vocab_size, seq_len, seed=seed)
        attention_mask = mask if attention_mask is None else attention_mask
    elif attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    report = compare(model, reference, adapter.rules(model.config), input_ids, attention_mask, dt,
                     adapter.model_type, (adapter.tolerances or {}).get(dt))
    report.seconds = time.perf_counter() - t0
    return report


def tiny_reference(model_type: str, seed: int = 0, overrides: dict[str, Any] | None = None) -> nn.Module:
    """The adapter's tiny reference model for `model_type` (config.json keys in `overrides` replace
    those of `tiny_hf_config()`), with loud seeded weights."""
    from .hf import get_adapter

    adapter = get_adapter(model_type)
    torch.manual_seed(seed)
    return loud_init_(adapter.reference({**adapter.tiny_hf_config(), **(overrides or {})}), seed)


def shard_size_for(model: nn.Module, n_shards: int = 4) -> int:
    """A max_shard_size (bytes) that splits the model into about n_shards files."""
    total = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    return max(total // n_shards, 1)


def verify(model_types: list[str] | None = None, seed: int = 0, dtype: str = "float32", file: Any = None) -> list[ParityReport]:
    """For each supported model_type: a tiny loud random reference, saved sharded, loaded by llmzoo,
    compared; prints one table. Returns the reports (all passed → every r.passed)."""
    from .hf import get_adapter, supported_model_types

    file = file or sys.stdout
    reports = []
    try:  # the table is the output: no per-model progress bars from transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    print(f"{'model_type':<12} {'dtype':<9} {'max|Δlogits|':>13} {'tol':>9} {'top-1':>7} {'KL':>9} {'time':>6}  result",
          file=file)
    for mt in model_types or supported_model_types():
        t0 = time.perf_counter()
        adapter = get_adapter(mt)
        try:
            ref = tiny_reference(mt, seed)
            with tempfile.TemporaryDirectory() as d:
                adapter.save_reference(ref, d, shard_size_for(ref))
                r = parity(d, dtype, reference=ref)
        except Exception as e:  # a family that cannot even load is a failure row, not a crash
            r = ParityReport(mt, dtype, float("nan"), float("nan"), 0.0, float("nan"), 0.0, False)
            r.first_divergence = Divergence("-", "-", None, f"error: {type(e).__name__}: {e}", float("nan"))
        r.seconds = time.perf_counter() - t0
        reports.append(r)
        status = "PASS" if r.passed else f"FAIL {r.first_divergence or ''}"
        print(f"{mt:<12} {r.dtype:<9} {r.max_abs:>13.3g} {r.tolerance:>9.2g} {r.top1:>7.1%} {r.kl:>9.2g} "
              f"{r.seconds:>5.1f}s  {status}", file=file)
    n_fail = sum(not r.passed for r in reports)
    print(f"{len(reports) - n_fail}/{len(reports)} model types match the reference", file=file)
    return reports
