"""Sharding llmzoo models with PyTorch's own distributed stack: tensor, fully sharded and expert parallel.

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
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleOutput,
    RowwiseParallel,
    parallelize_module,
)

__all__ = [
    "ColwiseParallel",
    "ExpertAllToAll",
    "ExpertShards",
    "ReplicatedHeads",
    "RowwiseParallel",
    "ShardParams",
    "SumGradColumns",
    "head_split",
    "init_sharded",
    "local_config",
    "make_mesh",
    "parallelize",
    "sharded_cache",
]


# ------------------------------------------------------------------------------ meshes


def make_mesh(dp: int = 1, tp: int = 1, device: str = "cpu") -> DeviceMesh:
    """A (dp, tp) DeviceMesh over the default process group (world size must equal dp × tp)."""
    world = dist.get_world_size()
    if dp * tp != world:
        raise ValueError(f"dp ({dp}) × tp ({tp}) = {dp * tp} does not equal the world size {world}")
    return init_device_mesh(device, (dp, tp), mesh_dim_names=("dp", "tp"))


def head_split(n_heads: int, n_kv_heads: int, tp: int, where: str = "attention") -> tuple[int, int]:
    """(query heads, KV heads) per rank: heads split evenly; with fewer KV heads than ranks
    (MQA, GQA with n_kv_heads < tp) every rank keeps the one KV head its queries share."""
    if n_heads % tp:
        raise ValueError(f"{where}: n_heads ({n_heads}) is not divisible by tp ({tp})")
    if n_kv_heads % tp and tp % n_kv_heads:
        raise ValueError(f"{where}: n_kv_heads ({n_kv_heads}) neither divides nor is a multiple of tp ({tp})")
    return n_heads // tp, max(1, n_kv_heads // tp)


# ------------------------------------------------------------------------------ parallel styles


class ReplicatedHeads(ParallelStyle):
    """K or V projection with fewer heads than ranks: the weight stays whole (Replicate) on every rank,
    which keeps only the columns of the KV head its query heads share (GQA grouping h // (H / KV))."""

    def __init__(self, n_kv_heads: int, head_dim: int):
        super().__init__()
        self.n_kv_heads, self.head_dim = n_kv_heads, head_dim

    def _apply(self, module: nn.Module, mesh: DeviceMesh) -> nn.Module:
        tp, rank = mesh.size(), mesh.get_local_rank()
        kv = rank // (tp // self.n_kv_heads)  # the KV head of this rank's query heads
        cols = slice(kv * self.head_dim, (kv + 1) * self.head_dim)

        def partition(name: str, mod: nn.Module, mesh: DeviceMesh) -> None:
            for n, p in list(mod.named_parameters(recurse=False)):
                mod.register_parameter(n, nn.Parameter(distribute_tensor(p, mesh, [Replicate()]), p.requires_grad))

        def inputs(mod: nn.Module, args: tuple, mesh: DeviceMesh) -> tuple:
            (x,) = args
            return (DTensor.from_local(x, mesh, [Replicate()], run_check=False),)

        def outputs(mod: nn.Module, out: DTensor, mesh: DeviceMesh) -> Tensor:
            # each rank's gradient covers its own head only: the weight's gradient is their sum
            return out.to_local(grad_placements=[Partial()])[..., cols]

        return distribute_module(module, mesh, partition, inputs, outputs)


class SumGradColumns(ParallelStyle):
    """A replicated projection whose output columns [start, stop) feed every rank's own heads (MLA's
    shared rope key): the forward is unchanged, the gradient of those columns is summed over ranks."""

    def __init__(self, start: int, stop: int):
        super().__init__()
        self.start, self.stop = start, stop

    def _apply(self, module: nn.Module, mesh: DeviceMesh) -> nn.Module:
        def hook(mod: nn.Module, args: tuple, out: Tensor) -> Tensor:
            a, b = out.narrow(-1, 0, self.start), out.narrow(-1, self.start, self.stop - self.start)
            c = out.narrow(-1, self.stop, out.shape[-1] - self.stop)
            return torch.cat([a, _sum_grad(b, mesh), c], dim=-1)

        module.register_forward_hook(hook)
        return module


class ShardParams(ParallelStyle):
    """A module's own parameters (not its children's) sharded on the given dims, e.g. GPT-OSS's
    per-head attention sinks split with the heads; the module reads its local block (`to_local`)."""

    def __init__(self, dims: dict[str, int]):
        super().__init__()
        self.dims = dims

    def _apply(self, module: nn.Module, mesh: DeviceMesh) -> nn.Module:
        for n, d in self.dims.items():
            p = getattr(module, n)
            module.register_parameter(n, nn.Parameter(distribute_tensor(p, mesh, [Shard(d)]), p.requires_grad))
        return module


class ExpertShards(ParallelStyle):
    """Stacked routed experts (E, ·, ·) across the tensor-parallel ranks, whose tokens are replicated.

    ep=True: expert parallel, experts split on dim 0 (E / tp each); routes to other ranks' experts
    are skipped here. ep=False: each expert's inner dim split (gate/up rows, down columns), the
    Megatron MLP split applied per expert. Either way every rank holds a partial sum of the routed
    output, reduced with one all-reduce."""

    def __init__(self, ep: bool):
        super().__init__()
        self.ep = ep

    def dim(self, name: str) -> int:
        """The dim parameter `name` of Experts is split on: experts (ep), else the inner dim (d_expert)."""
        if self.ep:
            return 0
        return 2 if name == "down" else 1

    def _apply(self, module: nn.Module, mesh: DeviceMesh) -> nn.Module:
        tp, rank = mesh.size(), mesh.get_local_rank()
        n_experts = module.gate.shape[0]
        if self.ep and n_experts % tp:
            raise ValueError(f"expert parallel: n_experts ({n_experts}) is not divisible by tp ({tp})")
        local = n_experts // tp
        if not self.ep and getattr(module, "down_bias", None) is not None:
            from .errors import UnsupportedError

            raise UnsupportedError("experts with biases (GPT-OSS) split over tensor-parallel ranks need ep=True: "
                                   "an inner-dim split would add down_bias once per rank")

        def partition(name: str, mod: nn.Module, mesh: DeviceMesh) -> None:
            if mod is not module:
                return
            for n, p in list(mod.named_parameters(recurse=False)):
                mod.register_parameter(n, nn.Parameter(distribute_tensor(p, mesh, [Shard(self.dim(n))]), p.requires_grad))

        def inputs(mod: nn.Module, args: tuple, mesh: DeviceMesh) -> tuple:
            x, weights, experts = args
            # replicated inputs feed partial outputs: their gradients are summed over the ranks
            x, weights = (_sum_grad(t, mesh) for t in (x, weights))
            if self.ep:  # global expert ids → this rank's; others past the end, which Experts skips
                experts = experts - rank * local
                experts = experts.masked_fill((experts < 0) | (experts >= local), local)
            return x, weights, experts

        def outputs(mod: nn.Module, out: Tensor, mesh: DeviceMesh) -> Tensor:
            return DTensor.from_local(out, mesh, [Partial()], run_check=False).redistribute(mesh, [Replicate()]).to_local()

        return distribute_module(module, mesh, partition, inputs, outputs)


class ExpertAllToAll(ParallelStyle):
    """Expert parallelism across ranks that hold different tokens (GShard, arXiv:2006.16668, §2.2):
    each rank keeps E / n whole experts; every (token, slot) route is sent to the rank owning its
    expert with one all-to-all, run there, and the weighted results come back with a second one.
    Uses `all_to_all_single` with per-rank split sizes (NCCL; gloo supports it too on torch ≥ 2.x)."""

    def _apply(self, module: nn.Module, mesh: DeviceMesh) -> nn.Module:
        from torch.distributed.nn.functional import all_to_all_single

        n, group = mesh.size(), mesh.get_group()
        n_experts = module.gate.shape[0]
        if n_experts % n:
            raise ValueError(f"expert parallel: n_experts ({n_experts}) is not divisible by the ep size ({n})")
        local = n_experts // n
        state: dict[str, Any] = {}

        def exchange(t: Tensor, out_splits: list[int], in_splits: list[int]) -> Tensor:
            out = t.new_empty((sum(out_splits), *t.shape[1:]))
            if t.requires_grad:
                return all_to_all_single(out, t, out_splits, in_splits, group=group)
            dist.all_to_all_single(out, t.contiguous(), out_splits, in_splits, group=group)
            return out

        def partition(name: str, mod: nn.Module, mesh: DeviceMesh) -> None:
            if mod is module:  # the stacked weights and (GPT-OSS) their per-expert biases
                for n_, p in list(mod.named_parameters(recurse=False)):
                    mod.register_parameter(n_, nn.Parameter(distribute_tensor(p, mesh, [Shard(0)]), p.requires_grad))

        def inputs(mod: nn.Module, args: tuple, mesh: DeviceMesh) -> tuple:
            x, weights, experts = args  # (N, D), (N, k), (N, k)
            flat = experts.flatten()
            order = flat.argsort(stable=True)  # routes sorted by expert, hence by owning rank
            owner = flat[order] // local
            send = torch.bincount(owner, minlength=n)
            recv = torch.empty_like(send)
            dist.all_to_all_single(recv, send, group=group)
            send_l, recv_l = send.tolist(), recv.tolist()
            token = order // experts.shape[1]
            state.update(token=token, send=send_l, recv=recv_l, shape=x.shape)
            rx = exchange(x[token], recv_l, send_l)  # (M, D): the routes to this rank's experts
            rw = exchange(weights.flatten()[order].float(), recv_l, send_l)
            rid = exchange(flat[order] - owner * local, recv_l, send_l)
            # the tokens of all n ranks reach an expert: its weight gradient is averaged over them, as
            # FSDP2 averages every other gradient (output gradient / n below, inputs' back × n here)
            for t in (rx, rw):
                if t.requires_grad:
                    t.register_hook(lambda g: g * n)
            return rx, rw[:, None], rid[:, None]  # one route per row: k = 1

        def outputs(mod: nn.Module, out: Tensor, mesh: DeviceMesh) -> Tensor:
            if out.requires_grad:
                out.register_hook(lambda g: g / n)
            back = exchange(out, state["send"], state["recv"])  # (routes sent, D), in sent order
            return back.new_zeros(state["shape"]).index_add(0, state["token"], back)

        return distribute_module(module, mesh, partition, inputs, outputs)


def _sum_grad(t: Tensor, mesh: DeviceMesh) -> Tensor:
    """Identity forward; backward all-reduces the gradient (Megatron's f operator) through DTensor."""
    return DTensor.from_local(t, mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])


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
    from torch.distributed.fsdp import fully_shard

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
    from .protocol import Module

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


# ------------------------------------------------------------------------------ per-rank config


def local_config(config, tp: int):
    """The config as one tensor-parallel rank sees its attention: per-rank query and KV heads (MLA's
    latent stays whole). Used to size a rank's KV cache (StaticCache, kv_cache_bytes)."""
    blocks = [b.model_copy(update={"attention": b.attention.tp_local(tp, f"blocks.{i}.attention")})
              for i, b in enumerate(config.blocks)]  # each attention spec states its per-rank form
    local = config.model_copy()
    local._blocks = blocks
    return local


def sharded_cache(model: nn.Module, batch: int, max_len: int, **kw):
    """A StaticCache holding this rank's KV heads (pass it to llmzoo.generate(..., cache=...))."""
    from .cache import StaticCache

    p = next(model.parameters())
    kw.setdefault("dtype", p.dtype)
    kw.setdefault("device", p.device)
    tp = getattr(model, "parallel", {}).get("tp", 1)
    return StaticCache(local_config(model.config, tp), batch, max_len, **kw)


# ------------------------------------------------------------------------------ local regions


def local_region(t: Tensor) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(global shape, global offset, local shape) of the block of `t` this rank holds."""
    if isinstance(t, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

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
    from .protocol import init_module

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


# ------------------------------------------------------------------------------ sharded HF loading


def _local_block(t: Tensor) -> tuple[tuple, Tensor]:
    """(region of the global tensor, local tensor) of the block this rank holds: the pipeline's `local`."""
    _, offset, local = local_region(t)
    return tuple(slice(o, o + n) for o, n in zip(offset, local)), _local(t)


@torch.no_grad()
def load_hf_sharded(model: nn.Module, source, device: str | torch.device = "cpu", strict: bool = True) -> dict:
    """Fill a parallelized (meta or materialised) model from a checkpoint, each rank reading only the
    blocks of each tensor it holds: llmzoo.hf.loader's pipeline with sliced reads (the rules'
    transforms in their `lazy` forms; block-quantised weights dequantised per block).
    Returns {"bytes_read": this rank's bytes, "bytes_total": the checkpoint's bytes}."""
    from .hf.loader import load, open_checkpoint

    ckpt = open_checkpoint(source, model.config)
    return load(model, ckpt, device=device, strict=strict, local=_local_block)


def from_pretrained_sharded(source, mesh: DeviceMesh, *, tp: str | None = "tp", fsdp: str | None = "dp",
                            ep: bool = False, dtype: str | torch.dtype | None = None,
                            device: str | torch.device = "cpu") -> nn.Module:
    """config → meta model → `parallelize` → sliced load: no rank ever holds the whole model."""
    from .builder import model_class, resolve_dtype
    from .hf.loader import load, open_checkpoint

    ckpt = open_checkpoint(source)
    with torch.device("meta"):
        model = model_class(ckpt.config)(ckpt.config)
    if dtype is not None:
        model = model.to(resolve_dtype(dtype))
    parallelize(model, mesh, tp=tp, fsdp=fsdp, ep=ep)
    model.load_stats = load(model, ckpt, device=device, local=_local_block)
    if ckpt.model_type is not None:
        model.hf_model_type = ckpt.model_type
    return model.eval()


# ------------------------------------------------------------------------------ memory per rank


def _chunk(n: int, parts: int, rank: int) -> int:
    """Rows of rank `rank` when n rows are split like torch.chunk (DTensor Shard, FSDP2)."""
    c = -(-n // parts)
    return max(0, min(n, (rank + 1) * c) - rank * c)


def _tp_dims(model: nn.Module, tp: int, ep: bool) -> dict[str, int | None]:
    """Parameter name → the dim its tensor-parallel style shards (None: replicated), from the plans."""
    dims: dict[str, int | None] = {}
    for fqn, style in model.tp_plan(tp, ep=ep).items():
        module = model.get_submodule(fqn)
        for n, _ in module.named_parameters(recurse=False):
            if isinstance(style, ExpertShards):
                d = style.dim(n)
            elif isinstance(style, ShardParams):
                d = style.dims.get(n)
            elif isinstance(style, ColwiseParallel):
                d = 1 if isinstance(module, nn.Embedding) else 0
            elif isinstance(style, RowwiseParallel):
                d = 0 if isinstance(module, nn.Embedding) else (1 if n == "weight" else None)
            else:
                d = None
            dims[f"{fqn}.{n}"] = d
    if model.head is None and getattr(model, "head_bias", None) is not None:
        dims["head_bias"] = 0
    return dims


def memory_estimate(source, *, tp: int = 1, dp: int = 1, ep: bool | str = False, dtype: str | torch.dtype = "bfloat16",
                    seq_len: int = 4096, batch: int = 1) -> dict[str, int]:
    """Bytes per rank of a (dp × tp) `parallelize` split, from the config alone (meta device).

    params: the largest rank's parameter shards (tensor-parallel plans, then FSDP2 over dp), exactly
    what `param_bytes` measures on that rank; params_ideal: count_params / (tp · dp);
    ep: as in `parallelize` (True: experts over the tp ranks; "dp": over the dp ranks, outside FSDP2);
    kv_cache: kv_cache_bytes of the rank's heads (local_config) for ⌈batch / dp⌉ sequences."""
    from .builder import build, resolve_dtype
    from .params import count_params, kv_cache_bytes
    from .zoo import get_config

    config = get_config(source)
    itemsize = torch.empty((), dtype=resolve_dtype(dtype)).element_size()
    model = build(config, device="meta")
    if isinstance(ep, str) and ep != "dp":
        raise ValueError(f"ep: {ep!r} is not one of True, False, 'dp'")
    dims = _tp_dims(model, tp, ep is True) if tp > 1 else {}
    a2a = {n for n, _ in model.named_parameters() if ".experts." in n} if ep == "dp" else set()
    per_rank = [[0] * dp for _ in range(tp)]
    for name, p in model.named_parameters():
        for t in range(tp):
            shape = list(p.shape)
            d = dims.get(name) if name not in a2a else None
            if d is not None:
                shape[d] = _chunk(shape[d], tp, t)
            for r in range(dp):  # FSDP2's dim-0 shard, or the all-to-all expert split
                local = shape[:]
                if local:
                    local[0] = _chunk(local[0], dp, r)
                per_rank[t][r] += math.prod(local)
    total = count_params(config).total
    return {
        "params": max(max(r) for r in per_rank) * itemsize,
        "params_ideal": -(-total * itemsize // (tp * dp)),
        "params_total": total * itemsize,
        "kv_cache": kv_cache_bytes(local_config(config, tp), seq_len, -(-batch // dp), dtype),
    }


# ------------------------------------------------------------------------------ distributed checkpoints


def save_checkpoint(model: nn.Module, path) -> None:
    """Save a parallelized model with torch.distributed.checkpoint (each rank writes its shards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    dcp.save(get_model_state_dict(model), checkpoint_id=str(path))


def load_checkpoint(model: nn.Module, path) -> None:
    """Load a `save_checkpoint` directory into a model parallelized in any other way (DCP reshards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    if any(p.is_meta for p in model.parameters()):
        model.to_empty(device="cpu")
    state = get_model_state_dict(model)
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state)


def save_hf(model: nn.Module, folder, max_shard_size: int | str = "2GB") -> None:
    """Export a parallelized model as a Hugging Face checkpoint (the adapter's table read backwards).

    Every rank takes part in gathering each tensor (DTensor / FSDP2 all-gathers); rank 0 holds the
    gathered state on CPU and writes it. Needs host memory for the whole model on rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from .builder import model_class
    from .hf import save_pretrained

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        with torch.device("meta"):
            plain = model_class(model.config)(model.config)
        plain.load_state_dict(state, assign=True)
        if getattr(model, "hf_model_type", None):
            plain.hf_model_type = model.hf_model_type
        save_pretrained(plain, folder, max_shard_size=max_shard_size)
    dist.barrier()
