"""Weight-name rules: how one checkpoint's tensors map onto llmzoo's parameter names.

A `Rule(hf_pattern, our_pattern, *transforms)` pairs names on both sides:

    "model.layers.{i}.self_attn.q_proj.weight"  ↔  "blocks.{i}.attn.q.weight"

- `{i}` (any identifier) is an integer placeholder; when it appears on both sides it carries over.
- `{q,k,v}` gathers: three tensors on that side form one group, in the written order.
- a placeholder on the hf side only (`experts.{e}.w1.weight`) gathers every index 0..n-1, in order.

Transforms are named, reversible steps applied in order from the hf tensors (a list) to ours;
`backward` undoes them, so export reads the same table in the other direction. `IGNORE` as the
llmzoo side marks a checkpoint tensor with no place in the model (rotary `inv_freq`, causal-mask
buffers, a tied head stored twice): it is skipped on load and not written on export.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import Tensor

from ..hugepages import empty


IGNORE = None  # llmzoo side of a rule for checkpoint tensors that have no place in the model


# ------------------------------------------------------------------------------ transforms


Region = tuple  # one slice(start, stop) per dim (step 1): a block of a tensor


def _fresh(shape: tuple[int, ...], xs: list[Tensor]) -> Tensor | None:
    """The output buffer of a joining transform: huge-page CPU memory (see hugepages.py), or None
    (torch allocates) off the CPU, where the inputs' dtypes or devices differ, or under autograd."""
    if xs[0].device.type != "cpu" or any(x.dtype != xs[0].dtype or x.device != xs[0].device for x in xs):
        return None
    if torch.is_grad_enabled() and any(x.requires_grad for x in xs):  # out= does not record autograd
        return None
    return empty(shape, xs[0].dtype)


class Lazy:
    """A tensor not yet read: its shape and dtype, and `read(region)` giving only that block.

    The sharded loader (llmzoo.parallel.load_hf_sharded) wraps each checkpoint tensor in one whose
    read is a safetensors `get_slice`, pushes them through the rule's transforms (`Transform.lazy`)
    and reads each rank's block of each llmzoo tensor: only the bytes that block needs."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, read):
        self.shape, self.dtype, self._read = tuple(shape), dtype, read

    def read(self, region: Region | None = None) -> Tensor:
        return self._read(full_region(self.shape) if region is None else tuple(region))


def full_region(shape: tuple[int, ...]) -> Region:
    return tuple(slice(0, n) for n in shape)


def _shift(region: Region, dim: int, start: int, stop: int) -> Region:
    return region[:dim] + (slice(start, stop),) + region[dim + 1 :]


class Transform:
    """A reversible step between a list of hf tensors and a list of llmzoo tensors."""

    def forward(self, xs: list[Tensor]) -> list[Tensor]:  # hf -> llmzoo
        raise NotImplementedError

    def lazy(self, xs: list[Lazy]) -> list[Lazy]:
        """`forward` on tensors not yet read; each output reads only the input blocks its region needs.
        This default reads the inputs whole (a transform without a sliced form stays correct)."""
        metas = self.forward([torch.empty(x.shape, dtype=x.dtype, device="meta") for x in xs])
        done: list[Tensor] = []

        def read(j: int, region: Region) -> Tensor:
            if not done:
                done.extend(self.forward([x.read() for x in xs]))
            return done[j][region]

        return [Lazy(m.shape, m.dtype, lambda r, j=j: read(j, r)) for j, m in enumerate(metas)]

    def backward(self, xs: list[Tensor]) -> list[Tensor]:  # llmzoo -> hf
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Transpose(Transform):
    """Swap the two dims of each matrix (GPT-2's Conv1D stores (in, out)); dims: the two dims to swap
    in a stacked tensor (GPT-OSS experts (E, in, out): dims=(1, 2))."""

    def __init__(self, dims: tuple[int, int] | None = None):
        self.dims = dims

    def forward(self, xs: list[Tensor]) -> list[Tensor]:  # views: a matmul reads a transposed matrix as is
        if self.dims is None:
            return [x.t() for x in xs]
        return [x.transpose(*self.dims) for x in xs]

    backward = forward

    def lazy(self, xs: list[Lazy]) -> list[Lazy]:
        if self.dims is None:
            return [Lazy(x.shape[::-1], x.dtype, lambda r, x=x: x.read(r[::-1]).t()) for x in xs]
        a, b = self.dims

        def swap(t: tuple) -> tuple:
            t = list(t)
            t[a], t[b] = t[b], t[a]
            return tuple(t)

        return [Lazy(swap(x.shape), x.dtype, lambda r, x=x: x.read(swap(r)).transpose(a, b)) for x in xs]


class Deinterleave(Transform):
    """One tensor whose `dim` alternates `parts` tensors (GPT-OSS gate_up: gate at even, up at odd
    positions) → those tensors; backward interleaves them again."""

    def __init__(self, dim: int, parts: int = 2):
        self.dim, self.parts = dim, parts

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        (x,) = xs
        d = self.dim % x.dim()
        if x.shape[d] % self.parts:
            raise ValueError(f"dim {d} of size {x.shape[d]} does not interleave {self.parts} tensors")
        return [x[(slice(None),) * d + (slice(j, None, self.parts),)].contiguous() for j in range(self.parts)]

    def backward(self, xs: list[Tensor]) -> list[Tensor]:
        d = self.dim % xs[0].dim()
        return [torch.stack(xs, dim=d + 1).flatten(d, d + 1).contiguous()]

    def lazy(self, xs: list[Lazy]) -> list[Lazy]:
        (x,) = xs
        d, p = self.dim % len(x.shape), self.parts
        if x.shape[d] % p:
            return super().lazy(xs)  # forward raises the error that names the mismatch
        shape = tuple(n // p if i == d else n for i, n in enumerate(x.shape))

        held: dict[tuple, list] = {}  # source block → [tensor, parts not yet served]

        def read(j: int, r: Region) -> Tensor:
            # rows a..b of every part lie in source rows a·p .. b·p: read once, served to each part
            key = tuple((t.start, t.stop) for t in r)
            if key not in held:
                held[key] = [x.read(_shift(r, d, r[d].start * p, r[d].stop * p)), set(range(p))]
            entry = held[key]
            entry[1].discard(j)
            block = entry[0] if entry[1] else held.pop(key)[0]
            return block[(slice(None),) * d + (slice(j, None, p),)].contiguous()

        return [Lazy(shape, x.dtype, lambda r, j=j: read(j, r)) for j in range(p)]


class Concat(Transform):
    """Many tensors → one, joined along `dim`; backward splits by the recorded `sizes` (equal if None)."""

    def __init__(self, dim: int = 0, sizes: list[int] | None = None):
        self.dim, self.sizes = dim, sizes

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        d = self.dim % xs[0].dim()
        shape = (*xs[0].shape[:d], sum(x.shape[d] for x in xs), *xs[0].shape[d + 1:])
        return [torch.cat(xs, dim=d, out=_fresh(shape, xs))]

    def lazy(self, xs: list[Lazy]) -> list[Lazy]:
        d = self.dim % len(xs[0].shape)
        starts = [0]
        for x in xs:
            starts.append(starts[-1] + x.shape[d])

        def read(r: Region) -> Tensor:  # the parts of each input that fall in r along dim
            lo, hi = r[d].start, r[d].stop
            parts = [x.read(_shift(r, d, max(lo, a) - a, min(hi, b) - a))
                     for x, a, b in zip(xs, starts, starts[1:]) if max(lo, a) < min(hi, b)]
            return torch.cat(parts, dim=d)

        shape = tuple(starts[-1] if i == d else n for i, n in enumerate(xs[0].shape))
        return [Lazy(shape, xs[0].dtype, read)]

    def backward(self, xs: list[Tensor]) -> list[Tensor]:
        (x,) = xs
        if self.sizes is None:
            raise ValueError("Concat without sizes cannot be reversed; give sizes=[...]")
        return [t.contiguous() for t in x.split(self.sizes, dim=self.dim)]


class Split(Transform):
    """One tensor → several along `dim`: `sizes` (a list) or `parts` equal pieces (Baichuan's W_pack),
    each a view of the fused tensor."""

    def __init__(self, dim: int = 0, sizes: list[int] | None = None, parts: int | None = None):
        if (sizes is None) == (parts is None):
            raise ValueError("Split needs exactly one of sizes or parts")
        self.dim, self.sizes, self.parts = dim, sizes, parts

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        (x,) = xs
        if self.parts is not None:
            if x.shape[self.dim] % self.parts:
                raise ValueError(f"dim {self.dim} of size {x.shape[self.dim]} does not split in {self.parts}")
            return list(x.chunk(self.parts, dim=self.dim))
        if sum(self.sizes) != x.shape[self.dim]:
            raise ValueError(f"dim {self.dim} has size {x.shape[self.dim]}, not {sum(self.sizes)} = {self.sizes}")
        return list(x.split(self.sizes, dim=self.dim))

    def backward(self, xs: list[Tensor]) -> list[Tensor]:
        return [torch.cat(xs, dim=self.dim)]

    def lazy(self, xs: list[Lazy]) -> list[Lazy]:
        (x,) = xs
        d = self.dim % len(x.shape)
        sizes = self.sizes or [x.shape[d] // self.parts] * self.parts
        if sum(sizes) != x.shape[d]:
            return super().lazy(xs)  # forward raises the error that names the mismatch
        out, a = [], 0
        for n in sizes:
            shape = tuple(n if i == d else s for i, s in enumerate(x.shape))
            out.append(Lazy(shape, x.dtype, lambda r, a=a: x.read(_shift(r, d, r[d].start + a, r[d].stop + a))))
            a += n
        return out


class SplitInterleavedQKV(Transform):
    """A fused QKV projection stored per KV group as [q × (n_heads / n_kv_heads), k, v] → q, k, v.

    Covers InternLM-2's wqkv, Falcon-40B's query_key_value and (n_kv_heads = n_heads) BLOOM's
    per-head [q, k, v]. Works on weights (out, in) and biases (out,): rows are head_dim blocks."""

    def __init__(self, n_heads: int, n_kv_heads: int, head_dim: int):
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        (x,) = xs
        g = self.n_heads // self.n_kv_heads
        rest = x.shape[1:]
        grouped = x.reshape(self.n_kv_heads, g + 2, self.head_dim, *rest)  # (KV, g+2, Dh, ...)
        q = grouped[:, :g].reshape(self.n_heads * self.head_dim, *rest)
        k = grouped[:, g].reshape(self.n_kv_heads * self.head_dim, *rest)
        v = grouped[:, g + 1].reshape(self.n_kv_heads * self.head_dim, *rest)
        return [q.contiguous(), k.contiguous(), v.contiguous()]

    def lazy(self, xs: list[Lazy]) -> list[Lazy]:
        (x,) = xs
        g, dh, rest = self.n_heads // self.n_kv_heads, self.head_dim, x.shape[1:]

        def rows(source_block):  # output head block h lives in source head block source_block(h)
            def read(r: Region) -> Tensor:
                lo, hi = r[0].start, r[0].stop
                parts = []
                for h in range(lo // dh, -(-hi // dh)):
                    a, b = max(lo, h * dh) - h * dh, min(hi, (h + 1) * dh) - h * dh
                    s = source_block(h) * dh
                    parts.append(x.read((slice(s + a, s + b), *r[1:])))
                return torch.cat(parts) if parts else x.read((slice(0, 0), *r[1:]))
            return read

        return [
            Lazy((self.n_heads * dh, *rest), x.dtype, rows(lambda h: h // g * (g + 2) + h % g)),
            Lazy((self.n_kv_heads * dh, *rest), x.dtype, rows(lambda h: h * (g + 2) + g)),
            Lazy((self.n_kv_heads * dh, *rest), x.dtype, rows(lambda h: h * (g + 2) + g + 1)),
        ]

    def backward(self, xs: list[Tensor]) -> list[Tensor]:
        q, k, v = xs
        g = self.n_heads // self.n_kv_heads
        rest = q.shape[1:]
        q = q.reshape(self.n_kv_heads, g, self.head_dim, *rest)
        k = k.reshape(self.n_kv_heads, 1, self.head_dim, *rest)
        v = v.reshape(self.n_kv_heads, 1, self.head_dim, *rest)
        return [torch.cat([q, k, v], dim=1).reshape(-1, *rest).contiguous()]


class StackExperts(Transform):
    """Per-expert tensors (one per `{e}`) → one stacked (E, ...) tensor."""

    def __init__(self, dim: int = 0):
        self.dim = dim

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        d = self.dim % (xs[0].dim() + 1)
        shape = (*xs[0].shape[:d], len(xs), *xs[0].shape[d:])
        return [torch.stack(xs, dim=d, out=_fresh(shape, xs))]

    def lazy(self, xs: list[Lazy]) -> list[Lazy]:
        if self.dim != 0:
            return super().lazy(xs)

        def read(r: Region) -> Tensor:  # only the experts in r, each read at r's block
            if r[0].start >= r[0].stop:
                return torch.empty((0, *(t.stop - t.start for t in r[1:])), dtype=xs[0].dtype)
            return torch.stack([xs[e].read(r[1:]) for e in range(r[0].start, r[0].stop)])

        return [Lazy((len(xs), *xs[0].shape), xs[0].dtype, read)]

    def backward(self, xs: list[Tensor]) -> list[Tensor]:
        (x,) = xs
        return [t.contiguous() for t in x.unbind(self.dim)]


# ----------------------------------------------------------------------------------- patterns

_TOKEN = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class Pattern:
    """A tensor-name pattern: literal text with `{name}` integer slots and at most one `{a,b}` gather."""

    text: str
    slots: tuple[str, ...] = field(init=False)
    alternatives: tuple[str, ...] | None = field(init=False)
    regex: re.Pattern = field(init=False)

    def __post_init__(self) -> None:
        slots, alts, out, pos = [], None, [], 0
        for m in _TOKEN.finditer(self.text):
            out.append(re.escape(self.text[pos : m.start()]))
            body = m.group(1)
            if "," in body:
                if alts is not None:
                    raise ValueError(f"pattern {self.text!r}: at most one {{a,b}} gather")
                alts = tuple(a.strip() for a in body.split(","))
                out.append("(?P<_alt>" + "|".join(re.escape(a) for a in alts) + ")")
            elif body.isidentifier() and not body.startswith("_"):
                if body in slots:
                    raise ValueError(f"pattern {self.text!r}: slot {{{body}}} appears twice")
                slots.append(body)
                # at most 9 digits: a layer or expert index past 10^9 matches no rule (and is named as
                # unexpected) instead of making the plan walk up to it
                out.append(f"(?P<{body}>0|[1-9][0-9]{{0,8}})")
            else:
                raise ValueError(f"pattern {self.text!r}: {{{body}}} is neither a slot nor a gather")
            pos = m.end()
        out.append(re.escape(self.text[pos:]))
        object.__setattr__(self, "slots", tuple(slots))
        object.__setattr__(self, "alternatives", alts)
        object.__setattr__(self, "regex", re.compile("".join(out)))

    def match(self, name: str) -> dict[str, str] | None:
        m = self.regex.fullmatch(name)
        return None if m is None else {k: v for k, v in m.groupdict().items()}

    def format(self, bindings: dict[str, object], alt: str | None = None) -> str:
        def sub(m: re.Match) -> str:
            body = m.group(1)
            return str(alt) if "," in body else str(bindings[body])

        return _TOKEN.sub(sub, self.text)


class Rule:
    """One line of an adapter table: hf pattern, llmzoo pattern (or IGNORE), transforms hf → llmzoo."""

    def __init__(self, hf: str, ours: str | None, *transforms: Transform, variant: bool = False):
        self.hf = Pattern(hf)
        self.ours = Pattern(ours) if ours is not None else None
        self.transforms = transforms
        # variant: another published spelling of a tensor another rule also writes (the original
        # gpt2 checkpoint without `transformer.`, Pythia's `embed_out`): read on load, never exported
        self.variant = variant
        shared = set(self.ours.slots) if self.ours else set(self.hf.slots)
        extra_ours = set(self.ours.slots) - set(self.hf.slots) if self.ours else set()
        if extra_ours:
            raise ValueError(f"rule {hf!r} → {ours!r}: slots {sorted(extra_ours)} exist on the llmzoo side only")
        self.shared = tuple(s for s in self.hf.slots if s in shared)
        self.gather_slots = tuple(s for s in self.hf.slots if s not in shared)
        if len(self.gather_slots) > 1 or (self.gather_slots and self.hf.alternatives):
            raise ValueError(f"rule {hf!r}: gathers over one slot or one {{a,b}} list, not several")
        if self.ours is None and (self.gather_slots or self.hf.alternatives):
            raise ValueError(f"rule {hf!r}: an IGNORE rule cannot gather")

    @property
    def ignored(self) -> bool:
        return self.ours is None

    def __repr__(self) -> str:
        ours = self.ours.text if self.ours else "IGNORE"
        return f"Rule({self.hf.text!r}, {ours!r}{''.join(', ' + repr(t) for t in self.transforms)})"

    def to_ours(self, xs: list[Tensor]) -> list[Tensor]:
        for t in self.transforms:
            xs = t.forward(xs)
        return xs

    def to_hf(self, xs: list[Tensor]) -> list[Tensor]:
        for t in reversed(self.transforms):
            xs = t.backward(xs)
        return xs

    def our_names(self, bindings: dict[str, str]) -> list[str]:
        assert self.ours is not None
        if self.ours.alternatives:
            return [self.ours.format(bindings, a) for a in self.ours.alternatives]
        return [self.ours.format(bindings)]

    def hf_names(self, bindings: dict[str, str], n: int) -> list[str]:
        if self.hf.alternatives:
            return [self.hf.format(bindings, a) for a in self.hf.alternatives]
        if self.gather_slots:
            (slot,) = self.gather_slots
            return [self.hf.format({**bindings, slot: e}) for e in range(n)]
        return [self.hf.format(bindings)]


def weight_bias(hf: str, ours: str, *transforms: Transform, variant: bool = False) -> list[Rule]:
    """The two rules of a module whose weight and bias map alike: `{hf}.weight` → `{ours}.weight`,
    then the same for `.bias`."""
    return [Rule(f"{hf}.{p}", f"{ours}.{p}", *transforms, variant=variant) for p in ("weight", "bias")]


def spellings(rules: list[Rule], prefix: str, *variants: str) -> list[Rule]:
    """`rules` with `prefix` before each hf name (the spelling export writes), then again under each
    of `variants` (other published spellings, e.g. a checkpoint saved from the bare model without
    `transformer.`: read on load, never exported)."""
    return [Rule(p + r.hf.text, r.ours.text if r.ours else IGNORE, *r.transforms, variant=p != prefix)
            for p in (prefix, *variants) for r in rules]


# ----------------------------------------------------------------------------------- planning


@dataclass
class Group:
    """Checkpoint tensors that one rule turns into one set of llmzoo tensors."""

    rule: Rule
    bindings: dict[str, str]
    hf_names: list[str]
    our_names: list[str]


def _key(rule_index: int, bindings: dict[str, str], slots: Iterable[str]) -> tuple:
    return (rule_index, *(bindings[s] for s in slots))


def plan_load(rules: list[Rule], names: Iterable[str]) -> tuple[list[Group], list[str]]:
    """Group checkpoint names by rule. Returns (groups, problems) where problems lists unmatched,
    ambiguous and incomplete names; IGNORE'd names belong to no group."""
    problems: list[str] = []
    members: dict[tuple, dict] = {}
    owners: dict[tuple, tuple[Rule, dict]] = {}
    for name in names:
        hits = [(k, r, b) for k, r in enumerate(rules) if (b := r.hf.match(name)) is not None]
        if not hits:
            problems.append(f"unexpected tensor {name!r}: no rule of this adapter matches it")
            continue
        if len(hits) > 1:
            problems.append(f"tensor {name!r} matches {len(hits)} rules: {[r.hf.text for _, r, _ in hits]}")
            continue
        k, rule, b = hits[0]
        if rule.ignored:
            continue
        key = _key(k, b, rule.shared)
        owners[key] = (rule, {s: b[s] for s in rule.shared})
        member = b["_alt"] if rule.hf.alternatives else int(b[rule.gather_slots[0]]) if rule.gather_slots else 0
        members.setdefault(key, {})[member] = name
    groups = []
    for key, got in members.items():
        rule, bindings = owners[key]
        if rule.hf.alternatives:
            order = list(rule.hf.alternatives)
        elif rule.gather_slots:
            n = max(got) + 1
            if n != len(got):  # gaps: name the first few absent indices, never walk all n (linear plan)
                absent = []
                for j in range(n):
                    if j not in got:
                        absent.append(rule.hf.format({**bindings, rule.gather_slots[0]: j}))
                        if len(absent) == 5:
                            break
                more = f" and {n - len(got) - len(absent)} more" if n - len(got) > len(absent) else ""
                problems.append(f"missing tensor(s) {', '.join(map(repr, absent))}{more} "
                                f"(needed with {sorted(got.values())[0]!r}: indices 0..{n - 1})")
                continue
            order = list(range(n))
        else:
            order = [0]
        missing = [rule.hf_names(bindings, len(order))[j] for j, m in enumerate(order) if m not in got]
        if missing:
            problems.extend(f"missing tensor {n!r} (needed with {sorted(got.values())[0]!r})" for n in missing)
            continue
        groups.append(Group(rule, bindings, [got[m] for m in order], rule.our_names(bindings)))
    return groups, problems


def plan_export(rules: list[Rule], names: Iterable[str]) -> tuple[list[Group], list[str]]:
    """Group llmzoo names by rule (the table read backwards); hf names are filled in after transforms."""
    problems: list[str] = []
    members: dict[tuple, dict] = {}
    owners: dict[tuple, tuple[Rule, dict]] = {}
    for name in names:
        hits = [(k, r, b) for k, r in enumerate(rules)
                if r.ours is not None and not r.variant and (b := r.ours.match(name)) is not None]
        if len(hits) != 1:
            what = "no rule" if not hits else f"{len(hits)} rules"
            problems.append(f"model tensor {name!r}: {what} of this adapter write it")
            continue
        k, rule, b = hits[0]
        key = _key(k, b, rule.ours.slots)
        owners[key] = (rule, {s: b[s] for s in rule.ours.slots})
        members.setdefault(key, {})[b.get("_alt", 0)] = name
    groups = []
    for key, got in members.items():
        rule, bindings = owners[key]
        order = list(rule.ours.alternatives) if rule.ours.alternatives else [0]
        missing = [m for m in order if m not in got]
        if missing:
            problems.append(f"model tensors for {rule.ours.text!r} with {bindings} lack {missing}")
            continue
        groups.append(Group(rule, bindings, [], [got[m] for m in order]))
    return groups, problems
