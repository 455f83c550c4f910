"""PagedAttention's KV cache (Kwon et al., arXiv:2309.06180, §4.1-4.3): fixed-size blocks from a pool.

A sequence's keys live in blocks of `block_size` token slots; its *block table* maps logical block
i (slots i·bs … i·bs + bs - 1) to a physical block of the pool. Blocks are allocated as the sequence
grows and returned when it ends, so memory held is at most the tokens cached plus one partly filled
block per sequence. Layers that share a window share block tables (a *group*); a sliding-window
group hands back the blocks that fell out of its window.

One forward runs a batch of sequences that each bring their own number of new tokens (a decode
step brings one, a prefill chunk many). Rows are left-aligned: row b's new tokens sit in columns
0 … n_b - 1, its keys in positions 0 … held_b - 1 of the gathered key tensor, padding after; the
mask is built per row from true slot numbers (`PagedContext.mask`), so a row's keys line up the
same way whatever it is batched with. Attention modules see the usual protocol: `update(layer, k, v)`
stores the new keys in their blocks and returns the keys the layer attends to, gathered from the
blocks (a pure PyTorch index_select).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from .attention import Context
from .config import ModelConfig
from .errors import LLMZooError


class OutOfBlocks(LLMZooError):
    """The pool has fewer free blocks than a request needs (the scheduler preempts and retries)."""


class BlockPool:
    """Free list of `n_blocks` physical block ids; allocation takes the lowest free id."""

    def __init__(self, n_blocks: int):
        if n_blocks <= 0:
            raise ValueError(f"n_blocks must be > 0, got {n_blocks}")
        self.n_blocks = n_blocks
        self._free = list(range(n_blocks - 1, -1, -1))  # a stack: pop() gives the lowest id

    @property
    def n_free(self) -> int:
        return len(self._free)

    @property
    def n_used(self) -> int:
        return self.n_blocks - len(self._free)

    def take(self, n: int) -> list[int]:
        if n > len(self._free):
            raise OutOfBlocks(f"block pool: {n} blocks wanted, {len(self._free)} of {self.n_blocks} free")
        return [self._free.pop() for _ in range(n)]

    def give(self, blocks: list[int]) -> None:
        self._free.extend(sorted(blocks, reverse=True))


@dataclass
class _Group:
    """Layers sharing one window (None: full attention) share block tables and one block pool."""

    window: int | None
    layers: list[int]
    pool: BlockPool
    pos: Tensor  # (n_blocks · block_size,) position id of the token in each slot
    tables: dict = field(default_factory=dict)  # seq id -> list of physical ids, -1 once recycled
    view: tuple | None = None  # this forward's (phys (B, S), k_slot (B, S), valid (B, S), k_pos (B, S))


@dataclass
class _Seq:
    length: int = 0  # slots cached
    prefix: int = 0  # prefix-LM: slots before it are bidirectional context


@dataclass(eq=False)
class PagedContext(Context):
    """Context of a ragged batch: q_slot (B, T) / k_slot via the cache's group views, -1 for padding.

    The mask is built per row from true slot numbers (causal, window, prefix-LM, padding), then the
    position bias over the gathered keys' positions, as `Context.mask` does for aligned rows."""

    q_slot: Tensor | None = None  # (B, T)
    prefix_slots: Tensor | None = None  # (B,) prefix-LM context length per row

    def query_slots(self) -> Tensor:
        return self.q_slot.clamp(min=0)  # (B, T); padding queries read slot 0

    def mask(self, window: int | None, chunk: int | None = None) -> Tensor:
        key = window if chunk is None else (window, chunk)
        if key not in self._masks:
            group = self.cache.group_of(window)
            _, k_slot, valid, k_pos = group.view
            i, j = self.q_slot[:, :, None], k_slot[:, None, :]  # (B, T, 1), (B, 1, S)
            allowed = j <= i
            if window is not None:
                allowed = allowed & (i - j < window)
            if chunk is not None:  # Llama-4 chunked attention: keys in the query's chunk of positions
                q_chunk = torch.div(self.positions, chunk, rounding_mode="floor")[:, :, None]
                allowed = allowed & (q_chunk == torch.div(k_pos, chunk, rounding_mode="floor")[:, None, :])
            if self.prefix_slots is not None:
                allowed = allowed | (j < self.prefix_slots[:, None, None])
            allowed = allowed & valid[:, None, :] & (i >= 0)
            allowed = allowed | ~allowed.any(-1, keepdim=True)  # padding queries: finite garbage, never NaN
            allowed = allowed[:, None]  # (B, 1, T, S)
            bias = self.bias_fn(self.positions, k_pos) if self.bias_fn is not None else None
            self._masks[key] = allowed if bias is None else bias.masked_fill(~allowed, float("-inf"))
        return self._masks[key]


class PagedCache:
    """Block pools + block tables for every attention layer of a model.

    n_blocks: physical blocks per group (each group has its own pool); block_size: token slots
    per block. mla: as StaticCache ('absorbed' caches MLA's latent + rope key, read by the absorbed
    decode path). Every sequence is addressed by an id the caller chooses (`add`, `free`)."""

    def __init__(
        self,
        config: ModelConfig,
        n_blocks: int,
        block_size: int = 16,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        mla: Literal["absorbed", "naive"] = "absorbed",
    ):
        if mla not in ("absorbed", "naive"):
            raise ValueError(f"mla: {mla!r} is not one of absorbed, naive")
        if block_size <= 0:
            raise ValueError(f"block_size must be > 0, got {block_size}")
        self.config, self.block_size, self.n_blocks = config, block_size, n_blocks
        self.absorbed, self.device = mla == "absorbed", torch.device(device)
        slots = n_blocks * block_size
        self.k: list[Tensor] = []
        self.v: list[Tensor] = []
        self.groups: list[_Group] = []
        self._layer_group: list[_Group] = []
        by_window: dict[int | None, _Group] = {}
        for i, spec in enumerate(config.blocks):
            heads, dk, dv = spec.attention.kv_layout(latent=self.absorbed)  # each spec states its layout
            self.k.append(torch.zeros(slots, heads, dk, dtype=dtype, device=device))
            self.v.append(torch.zeros(slots, heads, dv, dtype=dtype, device=device))
            w = spec.attention.kv_window()
            if w not in by_window:
                by_window[w] = _Group(w, [], BlockPool(n_blocks), torch.zeros(slots, dtype=torch.long, device=device))
                self.groups.append(by_window[w])
            by_window[w].layers.append(i)
            self._layer_group.append(by_window[w])
        self._by_window = by_window
        self.seqs: dict[object, _Seq] = {}
        self._step: dict | None = None

    @classmethod
    def for_model(cls, model, n_blocks: int, block_size: int = 16, **kw) -> "PagedCache":
        p = next(model.parameters())
        kw.setdefault("dtype", p.dtype)
        kw.setdefault("device", p.device)
        return cls(model.config, n_blocks, block_size, **kw)

    # ---------------------------------------------------------------- bookkeeping

    def group_of(self, window: int | None) -> _Group:
        return self._by_window[window]

    def blocks_for(self, n_slots: int) -> int:
        return -(-n_slots // self.block_size)

    def add(self, seq_id, prefix: int = 0) -> None:
        """Register a sequence with no cached slots (prefix: its prefix-LM context length)."""
        if seq_id in self.seqs:
            raise ValueError(f"sequence {seq_id!r} is already in the cache")
        self.seqs[seq_id] = _Seq(prefix=prefix)
        for g in self.groups:
            g.tables[seq_id] = []

    def length(self, seq_id) -> int:
        return self.seqs[seq_id].length

    def free(self, seq_id) -> None:
        """Return every block of a sequence to its pool and forget the sequence."""
        self.seqs.pop(seq_id)
        for g in self.groups:
            g.pool.give([b for b in g.tables.pop(seq_id) if b >= 0])

    def _recycle(self, g: _Group, seq_id, length: int) -> None:
        """Hand back the blocks a window group's next query (at slot `length`) can no longer see."""
        if g.window is None:
            return
        first_needed = max(0, length - g.window + 1)  # oldest slot still inside the window
        table = g.tables[seq_id]
        old = [i for i in range(first_needed // self.block_size) if table[i] >= 0]
        g.pool.give([table[i] for i in old])
        for i in old:
            table[i] = -1

    def blocks_needed(self, seq_id, n_new: int) -> list[int]:
        """New blocks each group needs for n_new more slots of a sequence (after recycling)."""
        length = self.seqs[seq_id].length
        return [max(0, self.blocks_for(length + n_new) - len(g.tables[seq_id])) for g in self.groups]

    def can_grow(self, seq_id, n_new: int) -> bool:
        for g in self.groups:
            self._recycle(g, seq_id, self.seqs[seq_id].length)
        return all(n <= g.pool.n_free for n, g in zip(self.blocks_needed(seq_id, n_new), self.groups))

    def grow(self, seq_id, n_new: int) -> None:
        """Make room for n_new more slots; raises OutOfBlocks (allocating nothing) if a pool is short."""
        if not self.can_grow(seq_id, n_new):
            raise OutOfBlocks(f"sequence {seq_id!r}: no blocks for {n_new} more slots")
        for n, g in zip(self.blocks_needed(seq_id, n_new), self.groups):
            g.tables[seq_id].extend(g.pool.take(n))

    def blocks_in_use(self) -> int:
        return sum(g.pool.n_used for g in self.groups)

    def slots_held(self) -> int:
        """Token slots the blocks in use could hold (the denominator of block utilisation)."""
        return self.blocks_in_use() * self.block_size

    def tokens_held(self) -> int:
        """Cached tokens that live in blocks still held (a window group's recycled slots excluded)."""
        n = 0
        for g in self.groups:
            for seq_id, table in g.tables.items():
                length = self.seqs[seq_id].length
                first = next((i for i, b in enumerate(table) if b >= 0), len(table)) * self.block_size
                n += max(0, length - first)
        return n

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.k, *self.v])

    # ---------------------------------------------------------------- one forward

    def plan(self, seq_ids: list, n_new: list[int]) -> None:
        """Fix the rows of the next forward: row b feeds n_new[b] tokens of sequence seq_ids[b]
        (blocks already grown). Called by the scheduler before `model(..., cache=self)`."""
        bs, dev = self.block_size, self.device
        T = max(n_new)
        start = torch.tensor([self.seqs[s].length for s in seq_ids], dtype=torch.long)
        n = torch.tensor(n_new, dtype=torch.long)
        cols = torch.arange(T)
        q_slot = torch.where(cols[None] < n[:, None], start[:, None] + cols[None], -1)  # (B, T)
        real = q_slot >= 0
        rows_, cols_ = real.nonzero(as_tuple=True)
        src = (rows_ * T + cols_).to(dev)  # flat (B·T) index of each real new token
        step = {"seq_ids": list(seq_ids), "n_new": list(n_new), "q_slot": q_slot.to(dev), "src": src,
                "prefix": torch.tensor([self.seqs[s].prefix for s in seq_ids], dtype=torch.long, device=dev)}
        end = start + n
        for g in self.groups:
            tables = [g.tables[s] for s in seq_ids]
            first = torch.tensor([next((i for i, b in enumerate(t) if b >= 0), len(t)) * bs for t in tables])
            held = end - first
            S = int(held.max())
            width = max(len(t) for t in tables)
            tbl = torch.tensor([t + [-1] * (width - len(t)) for t in tables], dtype=torch.long)
            k_slot = first[:, None] + torch.arange(S)[None]  # (B, S)
            valid = k_slot < end[:, None]
            blk = tbl.gather(1, (k_slot // bs).clamp(max=width - 1))
            phys = torch.where(valid & (blk >= 0), blk * bs + k_slot % bs, 0)
            write = phys.gather(1, (q_slot - first[:, None]).clamp(min=0))[real]  # (N,) slots of new tokens
            g.view = (phys.to(dev), torch.where(valid, k_slot, -1).to(dev), valid.to(dev), None)
            step[id(g)] = write.to(dev)
        self._step = step

    def context(self, model, input_ids: Tensor, attention_mask, position_ids, prefix_len) -> PagedContext:
        """The Context of the planned forward. position_ids (B, T) (GLM 2-D: (B, 2, T)) of the new tokens,
        padding columns anything; attention_mask and prefix_len are not read (the plan holds them)."""
        step = self._step
        if step is None:
            raise ValueError("PagedCache.plan(seq_ids, n_new) must be called before the forward")
        B, T = input_ids.shape
        if (B, T) != tuple(step["q_slot"].shape):
            raise ValueError(f"input_ids has shape {(B, T)}, the plan is for {tuple(step['q_slot'].shape)}")
        if position_ids is None:
            position_ids = step["q_slot"].clamp(min=0)
        flat = (position_ids if position_ids.dim() == 2 else position_ids[:, 0]).reshape(-1)[step["src"]]
        for g in self.groups:
            g.pos.index_copy_(0, step[id(g)], flat.to(g.pos.dtype))
            phys, k_slot, valid, _ = g.view
            g.view = (phys, k_slot, valid, g.pos[phys])
        prefix = step["prefix"] if model.prefix_lm else None
        index = torch.arange(T, device=input_ids.device)  # as q_index unused: the mask reads q_slot
        return model.cache_context(self, position_ids, index, index, self._keys, PagedContext,
                                   q_slot=step["q_slot"], prefix_slots=prefix)

    def _keys(self, window: int | None, q_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        _, k_slot, valid, k_pos = self.group_of(window).view
        return k_slot, valid, k_pos

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the real new tokens of k, v (B, heads, T, ·) into their blocks; return the keys and
        values (B, heads, S, ·) this layer attends to, gathered from the blocks."""
        K, V = self.k[layer], self.v[layer]
        g, step = self._layer_group[layer], self._step
        B, H, T, _ = k.shape
        write, src = step[id(g)], step["src"]
        K.index_copy_(0, write, k.transpose(1, 2).reshape(B * T, H, -1)[src].to(K.dtype))
        V.index_copy_(0, write, v.transpose(1, 2).reshape(B * T, H, -1)[src].to(V.dtype))
        phys = g.view[0]
        S = phys.shape[1]
        ks = K.index_select(0, phys.reshape(-1)).view(B, S, H, -1).transpose(1, 2)  # (B, heads, S, dk)
        vs = V.index_select(0, phys.reshape(-1)).view(B, S, H, -1).transpose(1, 2)
        return ks, vs

    def advance(self, n: int) -> None:
        """After the forward: every planned row now holds its new tokens."""
        step, self._step = self._step, None
        for seq_id, m in zip(step["seq_ids"], step["n_new"]):
            self.seqs[seq_id].length += m
