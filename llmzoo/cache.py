"""KV caches for incremental decoding.

`StaticCache` preallocates every buffer once and fills it in place, so a decode step allocates no
cache memory and has static shapes: the step can be wrapped in `torch.compile` (fullgraph) or
captured as a CUDA graph. Its `length` is a 0-d int64 tensor on the cache device, advanced in place;
nothing the decode step reads changes as a Python value between steps.

Keys are addressed by *slot*: the index of a token in the (left-padded) sequence, 0, 1, 2, …
A layer without a window keeps slot s in row s of a (B, heads, max_len, dim) buffer. A sliding
window layer keeps a rolling buffer of `window` rows: slot s lives in row s mod window. The cache
also records, per slot, whether it is a real token (padding) and its position id, so masks and
position biases (ALiBi, T5 buckets) are computed over the true slots of the keys a layer attends to.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor

from .attention import Context
from .config import ModelConfig


def layer_layout(spec, mla: str = "absorbed") -> tuple[int, int, int]:
    """(heads, key dim, value dim) cached per token by a layer with this attention spec: its
    `kv_layout` (llmzoo.protocol); mla="naive" asks for plain per-head keys and values.
    Deprecated: call spec.kv_layout(latent=...) directly."""
    warnings.warn("llmzoo.cache.layer_layout is deprecated: use spec.kv_layout(latent=...)", DeprecationWarning, 2)
    return tuple(spec.kv_layout(latent=mla == "absorbed"))


class StaticCache:
    """Preallocated per-layer K/V buffers for `batch` sequences of at most `max_len` slots.

    mla: 'absorbed' (default) caches MLA's latent + rope key and makes MLAttention use its absorbed
    decode path; 'naive' caches decompressed keys/values and keeps the plain path (a check, not a
    memory saver). Layers whose window is ≥ max_len are stored like global layers."""

    def __init__(
        self,
        config: ModelConfig,
        batch: int,
        max_len: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        mla: Literal["absorbed", "naive"] = "absorbed",
    ):
        if mla not in ("absorbed", "naive"):
            raise ValueError(f"mla: {mla!r} is not one of absorbed, naive")
        self.batch, self.max_len, self.absorbed = batch, max_len, mla == "absorbed"
        self.k: list[Tensor] = []
        self.v: list[Tensor] = []
        self.window: list[int | None] = []  # rolling buffer size, None for a full-length buffer
        for spec in config.blocks:  # each attention spec states its layout and how many tokens it keeps
            heads, dk, dv = spec.attention.kv_layout(latent=self.absorbed)
            rows = spec.attention.cached_tokens(max_len)
            self.window.append(rows if rows < max_len else None)
            self.k.append(torch.zeros(batch, heads, rows, dk, dtype=dtype, device=device))
            self.v.append(torch.zeros(batch, heads, rows, dv, dtype=dtype, device=device))
        self.length = torch.zeros((), dtype=torch.long, device=device)  # slots filled so far
        self.seen = torch.zeros(batch, dtype=torch.long, device=device)  # real tokens per row
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)  # slot is a real token
        self.pos = torch.zeros(batch, max_len, dtype=torch.long, device=device)  # position id of each slot
        self.slots = torch.arange(max_len, device=device)
        mark = getattr(getattr(torch, "_dynamo", None), "mark_static_address", None)
        if mark is not None:  # buffers keep their address across CUDA-graph replays
            for t in [*self.k, *self.v, self.length, self.seen, self.valid, self.pos]:
                mark(t)

    @classmethod
    def for_model(cls, model, batch: int, max_len: int, **kw) -> "StaticCache":
        """A cache matching a model's config, parameter dtype and device."""
        p = next(model.parameters())
        kw.setdefault("dtype", p.dtype)
        kw.setdefault("device", p.device)
        return cls(model.config, batch, max_len, **kw)

    def nbytes(self) -> int:
        """Bytes held by the key/value buffers (the slot bookkeeping is B × max_len ints more)."""
        return sum(t.numel() * t.element_size() for t in [*self.k, *self.v])

    def reset(self) -> None:
        self.length.zero_()
        self.seen.zero_()
        self.valid.zero_()
        self.pos.zero_()

    # ---------------------------------------------------------------- called by the model

    def context(self, model, input_ids: Tensor, attention_mask, position_ids, prefix_len) -> Context:
        """The Context of a forward over the next T slots; records their padding and positions.

        attention_mask: only its last T columns are read (HF passes the whole (B, length + T) mask;
        earlier slots were recorded when they were fed)."""
        B, T = input_ids.shape
        if B != self.batch:
            raise ValueError(f"input_ids has batch {B}, the cache was allocated for {self.batch}")
        write = self.length + self.slots[:T]  # (T,) slots of the new tokens
        if attention_mask is not None:
            real = attention_mask[:, -T:].bool()
        else:
            real = torch.ones(B, T, dtype=torch.bool, device=input_ids.device)
        if position_ids is None:  # padding-aware: count the real tokens before each slot
            position_ids = (self.seen[:, None] + real.long().cumsum(-1) - 1).clamp(min=0)
        self.valid.index_copy_(1, write, real)
        flat = position_ids if position_ids.dim() == 2 else position_ids[:, 0]  # GLM 2-D: (B, 2, T)
        self.pos.index_copy_(1, write, flat.to(self.pos.dtype))
        self.seen.add_(real.long().sum(-1))
        return model.cache_context(self, position_ids, write, self.slots, self.keys, prefix_len=prefix_len)

    def advance(self, n: int) -> None:
        self.length.add_(n)

    # --------------------------------------------------------------- called by attention

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, heads, T, ·) of the new slots; return the keys/values the layer attends to.

        A full-length buffer returns itself (slots not yet written are masked as future keys). A
        rolling buffer returns itself for one new token; for T > 1 it returns its previous contents
        followed by the new keys, since the first new queries still need keys the write evicts."""
        K, V = self.k[layer], self.v[layer]
        k, v = k.to(K.dtype), v.to(V.dtype)
        T = k.shape[2]
        write = self.length + self.slots[:T]
        w = self.window[layer]
        if w is None:
            K.index_copy_(2, write, k)
            V.index_copy_(2, write, v)
            return K, V
        out = (K, V) if T == 1 else (torch.cat([K, k], dim=2), torch.cat([V, v], dim=2))
        m = min(T, w)  # only the last `window` new slots survive
        rows = write[T - m :] % w
        K.index_copy_(2, rows, k[:, :, T - m :])
        V.index_copy_(2, rows, v[:, :, T - m :])
        return out

    def keys(self, window: int | None, q_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Slots of the keys a layer with this window attends to, as `update` returns them:
        k_index (S,) slot numbers, key_padding (B, S) True for real tokens, key positions (B, S)."""
        T = q_index.shape[0]
        w = window if window is not None and window < self.max_len else None
        if w is None:
            return self.slots, self.valid, self.pos
        rows = self.slots[:w]
        filled = self.length + (T if T == 1 else 0)  # slots in the buffer when the layer reads it
        # row r holds the latest slot s < filled with s ≡ r (mod w); none yet if that s is negative
        held = rows + w * torch.div(filled - 1 - rows, w, rounding_mode="floor")
        ok = held >= 0
        idx = held.clamp(min=0)[None].expand(self.batch, -1)
        padding = self.valid.gather(1, idx) & ok
        pos = self.pos.gather(1, idx)
        if T > 1:
            held = torch.cat([held, q_index])
            padding = torch.cat([padding, self.valid[:, q_index]], dim=1)
            pos = torch.cat([pos, self.pos[:, q_index]], dim=1)
        return held, padding, pos
