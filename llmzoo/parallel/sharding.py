"""Sharding a model in place: meshes, `parallelize` (DTensor plans, FSDP2, expert parallel), the
local block of each tensor, seeded initialisation independent of the split, a rank's KV cache.


    mesh  = make_mesh(dp=2, tp=4)                      # DeviceMesh with dims ("dp", "tp")
    model = llmzoo.build("llama-2-70b", device="meta")
    parallelize(model, mesh, tp="tp", fsdp="dp")       # DTensor plans + FSDP2, still on meta
    init_sharded(model, seed=0)                        # or load_hf_sharded(model, folder)

Tensor parallelism (Megatron-LM, Shoeybi et al., arXiv:1909.08053) uses DTensor through
`parallelize_module`; each component states its own plan in a `tp_plan` method (Attention, MLAttention,
MLP, GLU, MoE, CausalLM), so nothing here knows a family. FSDP2 (`fully_shard`) wraps every block,
then the root. Expert parallelism splits the stacked (E, ·, ·) routed experts whole across ranks: across
the tensor-parallel ranks, whose tokens are the same, one all-reduce combines the routed outputs
(`ExpertShards`); across data-parallel ranks, each with its own tokens, the routes travel to the
experts' ranks and back with two all-to-alls (`ExpertAllToAll`).

Initialisation and loading never materialise a whole tensor on a rank: `init_sharded` draws each
tensor in fixed row blocks seeded by (seed, name, block), so the values do not depend on the world size;
`load_hf_sharded` reads only each rank's slice of every checkpoint tensor (`safe_open(...).get_slice`),
through the adapter's rules and their transforms' `lazy` forms (llmzoo.hf.rules).
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.distributed.tensor.parallel import PrepareModuleOutput, parallelize_module

from ..cache import StaticCache
from ..protocol import Module, init_module
from .plan import local_config
from .styles import ExpertAllToAll


def make_mesh(dp: int = 1, tp: int = 1, device: str = "cpu") -> DeviceMesh:
    """A (dp, tp) DeviceMesh over the default process group (world size must equal dp × tp)."""
    world = dist.get_world_size()
    if dp * tp != world:
        raise ValueError(f"dp ({dp}) × tp ({tp}) = {dp * tp} does not equal the world size {world}")
    return init_device_mesh(device, (dp, tp), mesh_dim_names=("dp", "tp"))



# ------------------------------------------------------------------------------ parallelize


def _dim_mesh(mesh: DeviceMesh, dim: str | None) -> DeviceMesh | None:
    if dim is None:
        return None
    if mesh.mesh_dim_names is None or dim not in mesh.mesh_dim_names:
        raise ValueError(f"mesh has no dimension {dim!r} (dims: {mesh.mesh_dim_names})")
    return mesh[dim] if mesh.ndim > 1 else mesh


def parallelize(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    tp: str | None = "tp",
    fsdp: str | None = "dp",
    ep: bool | str = False,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Shard a CausalLM in place (best on the meta device, before `init_sharded` / `load_hf_sharded`).

    tp: mesh dimension for tensor parallelism (None: none); the plan is `model.tp_plan(tp_size, ep)`.
    fsdp: mesh dimension for FSDP2 (`fully_shard` per block, then the root; None: none).
    ep: MoE routed experts split whole across ranks. True: across the tp ranks, whose tokens are the
    same (one all-reduce, `ExpertShards`). A mesh dimension name (e.g. "dp"): across those ranks,
    which hold different tokens, exchanged with all-to-all (`ExpertAllToAll`); FSDP2 leaves the
    experts to it. False: under tp, each expert's inner dim is split instead."""
    tp_mesh, dp_mesh = _dim_mesh(mesh, tp), _dim_mesh(mesh, fsdp)
    ep_mesh = _dim_mesh(mesh, ep) if isinstance(ep, str) else None
    size = tp_mesh.size() if tp_mesh is not None else 1
    model.parallel = {"tp": size, "tp_rank": tp_mesh.get_local_rank() if tp_mesh is not None else 0,
                      "dp": dp_mesh.size() if dp_mesh is not None else 1, "ep": ep}
    if tp_mesh is not None and size > 1:
        plan = model.tp_plan(size, ep=ep is True)
        if ep_mesh is not None:  # the experts belong to the all-to-all split
            plan = {k: v for k, v in plan.items() if not k.endswith(".experts")}
        parallelize_module(model, tp_mesh, plan)
        _localise_head_bias(model, size, tp_mesh.get_local_rank())
        if model.head is None:  # tied head: logits = x · embed.weightᵀ with a vocab-parallel weight
            _tied_vocab_parallel_head(model, tp_mesh)
    experts = [e for m in model.modules() if isinstance(m, Module) for e in m.expert_parallel()]  # MoE answers
    if ep_mesh is not None:
        for m in experts:
            ExpertAllToAll()._apply(m, ep_mesh)
    if dp_mesh is not None:
        ignored = {p for m in experts for p in m.parameters()} if ep_mesh is not None else None
        for block in model.blocks:
            fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard_after_forward, ignored_params=ignored)
        fully_shard(model, mesh=dp_mesh, reshard_after_forward=reshard_after_forward, ignored_params=ignored)
    return model


def _localise_head_bias(model: nn.Module, tp: int, rank: int) -> None:
    """A per-head position bias (ALiBi, T5 buckets) computed for every head, cut to this rank's heads."""
    positions = model.positions
    full = positions.bias

    def bias(q_pos: Tensor, k_pos: Tensor) -> Tensor | None:
        b = full(q_pos, k_pos)
        return None if b is None else b.chunk(tp, dim=1)[rank]  # (B, H / tp, T, S)

    positions.bias = bias


def _tied_vocab_parallel_head(model: nn.Module, mesh: DeviceMesh) -> None:
    # the hidden state enters the tied projection as a replicated DTensor, the logits leave whole
    parallelize_module(model, mesh, {"embed_out": PrepareModuleOutput(
        output_layouts=Replicate(), desired_output_layouts=Replicate(), use_local_output=False)})
    if getattr(model, "head_bias", None) is not None:
        model.head_bias = nn.Parameter(distribute_tensor(model.head_bias, mesh, [Shard(0)]))

    def whole(mod: nn.Module, args: Any, out: Any) -> Any:
        return out.full_tensor() if isinstance(out, DTensor) else out

    model.register_forward_hook(whole)



def sharded_cache(model: nn.Module, batch: int, max_len: int, **kw):
    """A StaticCache holding this rank's KV heads (pass it to llmzoo.generate(..., cache=...))."""
    p = next(model.parameters())
    kw.setdefault("dtype", p.dtype)
    kw.setdefault("device", p.device)
    tp = getattr(model, "parallel", {}).get("tp", 1)
    return StaticCache(local_config(model.config, tp), batch, max_len, **kw)



# ------------------------------------------------------------------------------ local regions


def local_region(t: Tensor) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(global shape, global offset, local shape) of the block of `t` this rank holds."""
    if isinstance(t, DTensor):
        shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
        return tuple(t.shape), tuple(offset), tuple(shape)
    return tuple(t.shape), (0,) * t.dim(), tuple(t.shape)


def _local(t: Tensor) -> Tensor:
    return t.to_local() if isinstance(t, DTensor) else t



# ------------------------------------------------------------------------------ seeded init

BLOCK_ELEMENTS = 1 << 16  # rows drawn together: a function of the tensor's shape only


def _normal_block(seed: int, name: str, block: int, shape: tuple[int, ...], std: float) -> Tensor:
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode()) * 65_537 + block) % (1 << 62))
    return torch.empty(shape).normal_(0.0, std, generator=g)


def normal_region(seed: int, name: str, shape: tuple[int, ...], offset: tuple[int, ...],
                  local: tuple[int, ...], std: float) -> Tensor:
    """The [offset, offset + local) block of the tensor N(0, std) of `shape` seeded by (seed, name):
    rows are drawn in blocks of ≈BLOCK_ELEMENTS elements, each from its own generator, so any rank
    draws only the row blocks it overlaps and every split of the tensor sees the same values."""
    if len(shape) == 0:
        return _normal_block(seed, name, 0, (), std)
    row = math.prod(shape[1:])
    per = max(1, BLOCK_ELEMENTS // max(row, 1))
    lo, hi = offset[0], offset[0] + local[0]
    parts = []
    for b in range(lo // per, -(-hi // per) if hi > lo else lo // per):
        r0, r1 = b * per, min((b + 1) * per, shape[0])
        x = _normal_block(seed, name, b, (r1 - r0, *shape[1:]), std)
        x = x[max(lo, r0) - r0 : min(hi, r1) - r0]
        for d in range(1, len(shape)):
            x = x.narrow(d, offset[d], local[d])
        parts.append(x)
    return torch.cat(parts) if parts else torch.empty(local)


@torch.no_grad()
def init_sharded(model: nn.Module, seed: int = 0, std: float = 0.02, device: str | torch.device = "cpu") -> nn.Module:
    """Materialise a (parallelized, meta) model and initialise it as `llmzoo.builder.init_weights` does
    (N(0, std) matrices, zero biases and buffers, unit norms, DeepNorm β), each rank drawing only its
    slices: the result is the same for every world size and every tp/fsdp/ep split."""
    if any(p.is_meta for p in model.parameters()):
        model.to_empty(device=device)
    beta = {}
    for block, spec in zip(getattr(model, "blocks", []), model.config.blocks):
        if spec.init_beta != 1.0:
            beta.update((id(m), spec.init_beta) for m in block.beta_scaled())
    for mname, module in model.named_modules():

        def draw(pname: str, p: Tensor, std: float, mname: str = mname, scale: float = beta.get(id(module), 1.0)) -> None:
            shape, offset, local = local_region(p)
            full = f"{mname}.{pname}" if mname else pname
            _local(p).copy_(normal_region(seed, full, shape, offset, local, std) * scale)

        init_module(module, std, draw)  # each component's own init (norms: unit gains); weights drawn by slice
    return model


def param_bytes(model: nn.Module) -> int:
    """Bytes of the parameters this rank holds (its local shards)."""
    return sum(_local(p).numel() * _local(p).element_size() for p in model.parameters())

