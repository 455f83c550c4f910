"""Parity with the reference implementation: same weights, same batch, compare logits.

`parity(source)` loads a checkpoint twice (transformers and llmzoo), runs one padded batch through
both with forward hooks on the module boundaries that the adapter's rules pair up (embedding,
each layer's norms / attention / MLP, final norm, head) and reports max / mean |Δlogits|, the
normalised MSE of the logits, top-k agreement of the greedy tokens, top-1 agreement and KL, judged
by the dtype's row of TOLERANCES. When logits disagree the report names the first boundary, in execution order,
whose output diverges. `verify()` does this for a tiny random reference of every supported type.
transformers is imported lazily, here only.
"""

from __future__ import annotations

import math
import sys
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .builder import resolve_dtype
from .hf import get_adapter, load_plugins, supported_model_types
from .hf.adapter import transformers_load, transformers_reference  # noqa: F401  (their old home)
from .hf.loader import from_pretrained, read_hf_config, resolve_source
from .hf.rules import plan_load
from .errors import UnsupportedError
from .progress import progress, quiet

# Parity tolerances, one row per dtype: the only place they are stated.
#   max|Δ|  ≤ atol + rtol · max|reference logits|; gates only where `gate_max_abs` (float32 sees
#           summation-order noise only, so 1e-4 is a real bound there);
#   nmse    normalised MSE, mean((ours - ref)²) / var(ref) over the real tokens' logits, as llama.cpp's
#           examples/model-conversion check computes it, ≤ `nmse`;
#   top-k   each side's greedy token is within the other side's top_k (vLLM's check_logprobs_close,
#           on one teacher-forced forward), at ≥ `min_top_k` of the real positions.
# bf16/fp16 round every activation on both sides, so max|Δ| is set by the worst token and is reported
# only. A model with a discrete routing decision (a module with `discrete_routing = True`: MoE routers)
# sends a near-tied token to another expert under that rounding, on either side, and attention carries
# the change to later tokens: no faithful implementation avoids it, so such a model gets the ROUTED row.
# Measured with `llmzoo verify`, every family, seeds 0-7 (worst case):
#   bf16  dense nmse 8.2e-4 (t5), top-5 100 %;   routed nmse 2.2e-2 (mixtral, deepseek_v3), top-5 97.7 %
#   fp16  dense nmse 1.7e-5 (t5), top-5 100 %;   routed nmse 1.6e-2 (deepseek_v3), top-5 97.7 %
# layer_rtol: a layer output diverges when |Δ| > layer_rtol · (1 + max|reference output|) (used only
# to name the first divergence of a failing report).
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"atol": 1e-4, "rtol": 1e-5, "gate_max_abs": True, "nmse": 1e-8, "top_k": 1,
                    "min_top_k": 1.0, "layer_rtol": 1e-5},
    torch.bfloat16: {"atol": 0.0, "rtol": 6e-2, "gate_max_abs": False, "nmse": 5e-3, "top_k": 5,
                     "min_top_k": 1.0, "layer_rtol": 6e-2},
    torch.float16: {"atol": 0.0, "rtol": 1e-2, "gate_max_abs": False, "nmse": 2e-4, "top_k": 5,
                    "min_top_k": 1.0, "layer_rtol": 1e-2},
}
ROUTED: dict[torch.dtype, dict[str, float]] = {  # replaces entries of TOLERANCES for routed models
    torch.bfloat16: {"nmse": 5e-2, "min_top_k": 0.95},
    torch.float16: {"nmse": 5e-2, "min_top_k": 0.95},
}


def tolerance_for(dtype: torch.dtype, routed: bool = False) -> dict[str, float]:
    """The tolerance row of a dtype (other dtypes: bfloat16's, the loosest); routed: a model with
    discrete expert routing (see ROUTED)."""
    row = TOLERANCES.get(dtype, TOLERANCES[torch.bfloat16])
    return {**row, **ROUTED.get(dtype, {})} if routed else dict(row)


def is_routed(model: nn.Module) -> bool:
    """Whether any module of the model declares a discrete routing decision (`discrete_routing = True`)."""
    return any(getattr(m, "discrete_routing", False) for m in model.modules())


def nmse(ours: Tensor, ref: Tensor) -> float:
    """Normalised MSE, mean((ours - ref)²) / var(ref), as llama.cpp's model-conversion check computes it."""
    ours, ref = ours.double(), ref.double()
    mse = float((ours - ref).pow(2).mean())
    var = float(ref.var(unbiased=False))
    return mse / var if var > 0 else (0.0 if mse == 0 else math.inf)


def top_k_mutual(ours: Tensor, ref: Tensor, k: int) -> Tensor:
    """(N,) bool over rows of (N, vocab): each side's greedy token is within the other's top-k."""
    k = min(k, ours.shape[-1])
    a_top, b_top = ours.topk(k, dim=-1).indices, ref.topk(k, dim=-1).indices  # (N, k)
    return (b_top == ours.argmax(-1, keepdim=True)).any(-1) & (a_top == ref.argmax(-1, keepdim=True)).any(-1)


def logit_metrics(ours: Tensor, ref: Tensor, dtype: torch.dtype, tolerance: dict | None = None,
                  routed: bool = False) -> dict[str, Any]:
    """Every parity number of two (N, vocab) logit sets, and whether they pass the dtype's tolerance."""
    tol = {**tolerance_for(dtype, routed), **(tolerance or {})}
    a, b = ours.float(), ref.float()
    diff = (a - b).abs()
    max_abs = float(diff.max())
    bound = tol["atol"] + tol["rtol"] * float(b.abs().max())
    k = int(tol["top_k"])
    agree = float(top_k_mutual(a, b, k).float().mean())
    err = nmse(a, b)
    passed = (math.isfinite(max_abs) and (max_abs <= bound or not tol["gate_max_abs"])
              and err <= tol["nmse"] and agree >= tol["min_top_k"])
    return {
        "max_abs": max_abs, "mean_abs": float(diff.mean()), "tolerance": bound,
        "top1": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        # KL ≥ 0 in exact arithmetic; summation noise can make two equal distributions score -1e-9
        "kl": max(0.0, float(F.kl_div(a.log_softmax(-1), b.log_softmax(-1), log_target=True, reduction="batchmean"))),
        "nmse": err, "nmse_tolerance": tol["nmse"], "top_k": k, "top_k_agreement": agree,
        "min_top_k": tol["min_top_k"], "passed": bool(passed),
    }
# why each row of TOLERANCES is what it is (verify's footer prints the ones it used)
TOLERANCE_REASONS = {
    torch.float32: "float32: the two implementations differ only in summation order, so max|Δ| is a real bound",
    torch.bfloat16: "bfloat16 keeps 8 significant bits and both sides round every activation, so the worst "
                    "token sets max|Δ| (reported only); nmse and top-k agreement judge the whole batch",
    torch.float16: "float16 keeps 11 significant bits and both sides round every activation, so the worst "
                   "token sets max|Δ| (reported only); nmse and top-k agreement judge the whole batch",
}
ROUTED_REASON = ("rows marked * route tokens to experts (MoE): a near-tied router score can round to another "
                 "expert on either side, so they use llmzoo.parity.ROUTED")


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
    """(llmzoo module, reference module) pairs derived from the rules, in two granularities.

    Sub-layers: `blocks.{i}.attn.q.weight` ↔ `model.layers.{i}.self_attn.q_proj.weight` pairs
    `blocks.{i}.attn` with `model.layers.{i}.self_attn` (as many trailing names dropped on both
    sides), kept only when the two modules hold the same tensors under the rules. Layers: `blocks.{i}`
    with the longest common prefix of the reference tensors that layer i's rules read."""
    ours_mods, ref_mods = dict(ours.named_modules()), dict(ref.named_modules())
    ours_names = list(ours.state_dict())
    ref_names = list(ref.state_dict())
    candidates: dict[str, set[str]] = {}
    layer_sources: dict[str, set[str]] = {}
    for rule in rules:
        if rule.ours is None or getattr(rule, "variant", False):  # variants: other spellings, not this model's
            continue
        o, h = rule.ours.text.split("."), rule.hf.text.split(".")
        if o[0] == "blocks" and "{i}" in h:
            layer_sources.setdefault("blocks.{i}", set()).add(rule.hf.text)
        depth = 3 if o[0] == "blocks" else 1
        drop = len(o) - depth
        if drop < 1 or drop >= len(h):
            continue
        ob, hb = ".".join(o[:depth]), ".".join(h[:-drop])
        if "," in ob or "," in hb:
            continue
        candidates.setdefault(ob, set()).add(hb)

    def same_tensors(o: str, h: str) -> bool:
        inside = [n for n in ref_names if n.startswith(h + ".")]
        groups, _ = plan_load(rules, inside)
        mapped = {n for g in groups for n in g.our_names}
        return bool(mapped) and mapped == {n for n in ours_names if n.startswith(o + ".")}

    n_layers = len(getattr(ours, "blocks", []))
    pairs = []
    for ob, hbs in candidates.items():
        for i in range(n_layers) if "{i}" in ob else [None]:
            name = ob.replace("{i}", str(i))
            if name not in ours_mods:
                continue
            options = sorted((hb.replace("{i}", str(i)) for hb in hbs), key=len)
            options = [x for x in options if "{" not in x and x in ref_mods and same_tensors(name, x)]
            if options:
                pairs.append((name, options[0]))
    for i in range(n_layers):
        sources = [p.replace("{i}", str(i)).split(".") for p in layer_sources.get("blocks.{i}", ())]
        if not sources:
            continue
        common = []
        for parts in zip(*sources):
            if len(set(parts)) != 1 or "{" in parts[0]:
                break
            common.append(parts[0])
        prefix = ".".join(common)
        if prefix in ref_mods and prefix and f"blocks.{i}" in ours_mods:
            pairs.append((f"blocks.{i}", prefix))
    return pairs


def _first(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    return getattr(out, "last_hidden_state", None)


def _logits(out: Any) -> Tensor:
    return out if isinstance(out, Tensor) else out.logits


def forward_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, like: nn.Module | None = None,
                   decoder_input_ids: Tensor | None = None, decoder_attention_mask: Tensor | None = None) -> Tensor:
    """Logits of an llmzoo model or a reference on one batch. An encoder-decoder (judged from `like`,
    the llmzoo model) reads the batch as source and, unless decoder inputs are given, as target too;
    the logits are the target's."""
    like = model if like is None else like
    seq2seq = getattr(getattr(like, "config", None), "encoder", None) is not None
    if decoder_input_ids is None:
        decoder_input_ids, decoder_attention_mask = input_ids, attention_mask
    extra = dict(decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask) if seq2seq else {}
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
    nmse: float = float("nan")  # mean((ours - ref)²) / var(ref)
    nmse_tolerance: float = float("nan")
    top_k: int = 1
    top_k_agreement: float = float("nan")  # share of positions whose greedy tokens are in each other's top-k
    min_top_k: float = 1.0
    routed: bool = False  # judged with the ROUTED tolerances (discrete expert routing)
    scale: float = float("nan")  # max |reference logits| at the real tokens: loud weights make it ≫ 1
    reference: str = "transformers"  # what the logits were compared against
    tolerance_rule: str = ""  # where the bound came from, e.g. "bfloat16, routed"
    note: str = ""  # how the row's tiny checkpoint differs from tiny_hf_config(), and why (verify's footer)

    def __str__(self) -> str:
        gated = "" if tolerance_for(getattr(torch, self.dtype, torch.float32))["gate_max_abs"] else ", reported"
        lines = [
            f"parity {self.model_type} ({self.dtype}): {'PASS' if self.passed else 'FAIL'}",
            f"  max|Δlogits| {self.max_abs:.3g} (tolerance {self.tolerance:.3g}{gated}), mean {self.mean_abs:.3g}",
            f"  nmse {self.nmse:.3g} (tolerance {self.nmse_tolerance:.0e}); greedy tokens in each other's "
            f"top-{self.top_k}: {self.top_k_agreement:.2%} of positions (≥ {self.min_top_k:.0%} needed)",
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
    decoder_input_ids: Tensor | None = None,
    decoder_attention_mask: Tensor | None = None,
) -> ParityReport:
    """Run both models on one batch with hooks on paired boundaries; compare at non-pad positions.
    tolerance: entries overriding TOLERANCES[dtype] (a test's deliberately different bound).
    decoder_*: an encoder-decoder's own target batch (default: the source batch); positions are its."""
    tol = {**tolerance_for(dtype, is_routed(ours)), **(tolerance or {})}
    pairs = boundary_pairs(rules, ours, ref)
    got_ours: dict[str, Tensor] = {}
    got_ref: dict[str, Tensor] = {}
    order: list[str] = []  # our boundary events in execution order: "name" (output), "in:name" (input)
    handles = []

    def record(store: dict, key: str, t: Any, mine: bool) -> None:
        if isinstance(t, Tensor) and key not in store:
            store[key] = t.detach().clone()  # a later in-place op (Falcon: mlp_out += attn_out) must not reach it
            if mine:
                order.append(key)

    def out_hook(store: dict, name: str, mine: bool):
        return lambda module, args, out: record(store, name, _first(out), mine)

    def in_hook(store: dict, name: str, mine: bool):
        def fn(module, args, kwargs):
            t = args[0] if args else next((v for v in kwargs.values() if isinstance(v, Tensor)), None)
            record(store, "in:" + name, t, mine)
        return fn

    for o, h in pairs:
        om, hm = ours.get_submodule(o), ref.get_submodule(h)
        handles.append(om.register_forward_hook(out_hook(got_ours, o, True)))
        handles.append(hm.register_forward_hook(out_hook(got_ref, o, False)))
        if o.count(".") != 1 and o not in ("embed", "embed_in"):  # sub-layers, final norm, head: inputs too
            handles.append(om.register_forward_pre_hook(in_hook(got_ours, o, True), with_kwargs=True))
            handles.append(hm.register_forward_pre_hook(in_hook(got_ref, o, False), with_kwargs=True))
    try:
        dec = dict(decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask)
        a = forward_logits(ours, input_ids, attention_mask, like=ours, **dec).float()
        b = forward_logits(ref, input_ids, attention_mask, like=ours, **dec).float()
    finally:
        for hd in handles:
            hd.remove()
    keep = (attention_mask if decoder_attention_mask is None else decoder_attention_mask).bool()
    m = logit_metrics(a[keep], b[keep], dtype, tolerance, is_routed(ours))  # (N, vocab) at real tokens
    passed = m["passed"]
    ref_of = dict(pairs)
    ref_of.update({"in:" + o: h for o, h in pairs})
    events, diverged = [], {}
    for key in order:
        x, y = got_ours[key], got_ref.get(key)
        if y is None:
            continue
        if x.shape != y.shape:
            delta = float("inf")
        else:
            x, y = x.float(), y.float()
            if x.shape[:2] == keep.shape:
                x, y = x[keep], y[keep]
            delta = float((x - y).abs().max())
        events.append((key, delta))
        scale = 1.0 + (float(y.float().abs().max()) if y.numel() else 0.0)
        diverged[key] = delta > tol["layer_rtol"] * scale
    boundaries = [(k, d) for k, d in events if not k.startswith("in:")]
    first = None if passed else first_divergence(events, diverged, ref_of)
    report = report_from_metrics(model_type, str(dtype).removeprefix("torch."), m, first, boundaries,
                                 routed=is_routed(ours))
    report.scale = float(b[keep].abs().max())
    return report


def first_divergence(
    events: list[tuple[str, float]], diverged: dict[str, bool], ref_of: dict[str, str]
) -> Divergence | None:
    """The first component, in execution order, whose output really diverges.

    Layer outputs (`blocks.{i}`: the residual stream) mean the same in every implementation, so the
    first diverging layer is found first (the logits, if every layer agrees). Inside it, a sub-layer
    module's output may not be comparable (BLOOM's attention module adds the residual, Gemma's
    embedding module scales), so a diverging output counts only if the next recorded input
    downstream ("in:" events: the residual stream entering the next sub-layer) diverges too; a
    diverging input blames the sub-layer that ran just before it."""

    def describe(key: str, delta: float, sub: str | None = None) -> Divergence:
        name = key.removeprefix("in:")
        parts = name.split(".")
        layer = int(parts[1]) if parts[0] == "blocks" else None
        kind = parts[2] if layer is not None and len(parts) > 2 else "block" if layer is not None else parts[0]
        return Divergence(name, ref_of[key], layer, sub or SUBLAYER.get(kind, kind), delta)

    def locate(pending: list[tuple[str, float]]) -> Divergence | None:
        last_out: tuple[str, float] | None = None
        for k, (key, delta) in enumerate(pending):
            if key.startswith("in:"):
                if diverged[key]:
                    return describe(*last_out) if last_out else None
                continue
            if diverged[key]:
                nxt = next((e for e, _ in pending[k + 1 :] if e.startswith("in:")), None)
                if nxt is None or diverged[nxt]:
                    return describe(key, delta)
            last_out = (key, delta)
        # nothing confirmed downstream: a parallel block (attention and MLP read the same input)
        return next((describe(k, d) for k, d in pending if not k.startswith("in:") and diverged[k]), None)

    pending: list[tuple[str, float]] = []
    for key, delta in events:
        parts = key.split(".")
        if parts[0] == "blocks" and len(parts) == 2:  # a whole layer's output
            if diverged[key]:
                return locate(pending) or describe(key, delta, "block")
            pending = []
            continue
        pending.append((key, delta))
    return locate(pending)


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
        # a learned position table has a last row; computed positions (RoPE, ALiBi, …) go on
        table = getattr(model.config.position, "max_positions", None)
        if seq_len < 6 or (table is not None and seq_len > table):  # one sequence is right-padded by 5
            raise UnsupportedError(f"parity: seq_len {seq_len} is outside 6..{table or '∞'} "
                                   f"({folder or model.config.name}: position.max_positions {table})")
        _check_score_memory(model.config, seq_len, folder or model.config.name)
        input_ids, mask = make_batch(model.config.vocab_size, seq_len, seed=seed)
        attention_mask = mask if attention_mask is None else attention_mask
    elif attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    report = compare(model, reference, adapter.rules(model.config), input_ids, attention_mask, dt, adapter.model_type)
    report.reference = adapter.reference_name
    report.tolerance_rule = f"{report.dtype}{', routed' if report.routed else ''} (llmzoo.parity.TOLERANCES)"
    report.seconds = time.perf_counter() - t0
    return report


def _check_score_memory(config, seq_len: int, where: object) -> None:
    """Refuse a batch whose attention scores alone would not fit: an eager reference holds one layer's
    (2, heads, T, T) float32 scores (and the softmax a second copy), so T = 100k would be killed for memory
    instead of failing with a message."""
    heads = max(b.attention.n_heads for b in config.blocks)
    need = 2 * 2 * heads * seq_len * seq_len * 4
    have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > have // 2:
        raise UnsupportedError(f"parity: seq_len {seq_len} needs ~{need / 2**30:.1f} GiB for one layer's attention "
                               f"scores (2 × {heads} heads × {seq_len}² × 2 copies × 4 bytes), more than half of "
                               f"this machine's {have / 2**30:.1f} GiB ({where})")


def tolerance_notes(reports: list[ParityReport]) -> list[str]:
    """verify's footer: why the tolerances in its header are what they are, and any row with its own."""
    used = {r.dtype for r in reports if "TOLERANCES" in r.tolerance_rule}
    lines = [f"why: {why}" for dt, why in TOLERANCE_REASONS.items() if str(dt).removeprefix("torch.") in used]
    if any(r.routed for r in reports):
        lines.append(f"why *: {ROUTED_REASON}")
    lines += [f"{r.model_type}: {r.tolerance_rule}" for r in reports if r.tolerance_rule and "TOLERANCES" not in r.tolerance_rule]
    lines += [f"{r.model_type}: {r.note}" for r in reports if r.note]
    return lines


def tiny_reference(model_type: str, seed: int = 0, overrides: dict[str, Any] | None = None) -> nn.Module:
    """The adapter's tiny reference model for `model_type` (config.json keys in `overrides` replace
    those of `tiny_hf_config()`), with loud seeded weights."""
    adapter = get_adapter(model_type)
    torch.manual_seed(seed)
    return loud_init_(adapter.reference({**adapter.tiny_hf_config(), **(overrides or {})}), seed)


def shard_size_for(model: nn.Module, n_shards: int = 4) -> int:
    """A max_shard_size (bytes) that splits the model into about n_shards files."""
    total = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    return max(total // n_shards, 1)


# ------------------------------------------------------------------------------ verify rows

# name → check(seed) returning {"logits": [(ours, reference), ...], "tolerance", "max_abs_diff", "ok"}:
# rows of `llmzoo verify` beyond one per adapter (a checkpoint source with its own reference)
CHECKS: dict[str, Any] = {}


def register_check(name: str):
    """Decorator filing a check under a `llmzoo verify` row name."""

    def deco(fn):
        if name in CHECKS:
            raise ValueError(f"verify row {name!r} is already registered")
        CHECKS[name] = fn
        return fn

    return deco


def check_report(name: str, result: dict[str, Any], dtype: str = "float32") -> ParityReport:
    """A registered check's result as a ParityReport: its logits pairs give the metrics of the dtype's
    TOLERANCES row; it passes when the check says ok and those metrics pass (max|Δ| is the check's own)."""
    a = torch.cat([p[0].flatten(0, -2) for p in result["logits"]]).float()
    b = torch.cat([p[1].flatten(0, -2) for p in result["logits"]]).float()
    m = logit_metrics(a, b, resolve_dtype(dtype))
    m.update(max_abs=result["max_abs_diff"], tolerance=result["tolerance"], passed=result["ok"] and m["passed"])
    report = report_from_metrics(name, dtype, m)
    report.reference = result.get("reference_label", result.get("reference", "registered check"))
    report.tolerance_rule = result.get("tolerance_rule", f"{name}'s own check (max|Δ| ≤ {result['tolerance']:g})")
    return report


def report_from_metrics(model_type: str, dtype: str, m: dict[str, Any], first: Divergence | None = None,
                        boundaries: list | None = None, routed: bool = False) -> ParityReport:
    return ParityReport(model_type, dtype, m["max_abs"], m["mean_abs"], m["top1"], m["kl"], m["tolerance"],
                        m["passed"], first, boundaries or [], nmse=m["nmse"], nmse_tolerance=m["nmse_tolerance"],
                        top_k=m["top_k"], top_k_agreement=m["top_k_agreement"], min_top_k=m["min_top_k"],
                        routed=routed)


def verify_rows() -> list[str]:
    """Every row of `llmzoo verify`: one per adapter, then the registered checks."""
    return [*supported_model_types(), *CHECKS]


def verify(model_types: list[str] | None = None, seed: int = 0, dtype: str = "float32", file: Any = None) -> list[ParityReport]:
    """For each row (verify_rows()): a tiny loud random reference, saved sharded, loaded by llmzoo,
    compared (or the registered check); prints one table. Returns the reports (all passed → every r.passed)."""
    file = file or sys.stdout
    load_plugins()  # adapters and sources register their rows
    reports = []
    try:  # the table is the output: no per-model progress bars from transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    tol = tolerance_for(resolve_dtype(dtype))
    routed = tolerance_for(resolve_dtype(dtype), routed=True)
    half = resolve_dtype(dtype) != torch.float32
    bound = "≤" if tol["gate_max_abs"] else "rep"  # max|Δ| gates at float32 only (see TOLERANCES)
    print(f"tolerances ({dtype}, llmzoo.parity.TOLERANCES): max|Δ| {'gates' if tol['gate_max_abs'] else 'reported only'}; "
          f"nmse ≤ {tol['nmse']:.0e} (routed* {routed['nmse']:.0e}); greedy tokens in each other's "
          f"top-{tol['top_k']} at ≥ {tol['min_top_k']:.0%} of positions (routed* {routed['min_top_k']:.0%})", file=file)
    wanted = model_types or verify_rows()
    name_w = max([12, *(len(mt) + 1 for mt in wanted)])  # + 1 for the routed mark
    print(f"{'model_type':<{name_w}} {'dtype':<9} {'max|Δlogits|':>13} {bound + ' tol':>9} {'nmse':>9} "
          f"{'top-' + str(tol['top_k']):>6} {'top-1':>7} {'KL':>9} {'time':>6}  {'reference':<24} result", file=file)

    def row(mt: str) -> ParityReport:
        if mt in CHECKS:
            return check_report(mt, CHECKS[mt](seed=seed))
        ref = tiny_reference(mt, seed, get_adapter(mt).half_precision_overrides if half else None)
        with tempfile.TemporaryDirectory() as d:
            get_adapter(mt).save_reference(ref, d, shard_size_for(ref))
            return parity(d, dtype, reference=ref)

    bar = progress(wanted, desc="verify", unit="row")
    for mt in bar:
        bar.set_postfix_str(mt, refresh=False)  # drawn with the next update, once past the delay
        t0 = time.perf_counter()
        try:
            with quiet():  # this bar is the progress; no nested load / export bars
                r = row(mt)
        except Exception as e:  # a family that cannot even load is a failure row, not a crash
            r = ParityReport(mt, dtype, float("nan"), float("nan"), 0.0, float("nan"), 0.0, False)
            r.first_divergence = Divergence("-", "-", None, f"error: {type(e).__name__}: {e}", float("nan"))
        r.seconds = time.perf_counter() - t0
        if half and mt not in CHECKS and get_adapter(mt).half_precision_overrides:
            r.note = get_adapter(mt).half_precision_reason
        reports.append(r)
        status = "PASS" if r.passed else f"FAIL {r.first_divergence or ''}"
        bar.write(f"{mt + '*' * r.routed:<{name_w}} {r.dtype:<9} {r.max_abs:>13.3g} {r.tolerance:>9.2g} {r.nmse:>9.2g} "
                  f"{r.top_k_agreement:>6.1%} {r.top1:>7.1%} {r.kl:>9.2g} {r.seconds:>5.1f}s  {r.reference:<24} "
                  f"{status}", file=file)
    n_fail = sum(not r.passed for r in reports)
    print(f"{len(reports) - n_fail}/{len(reports)} model types match the reference", file=file)
    return reports
