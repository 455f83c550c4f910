"""The parallel styles a plan names (DTensor `ParallelStyle`s; torch only), loaded on first use by
`llmzoo.parallel.plan`. Megatron-LM's column / row splits come from torch (`ColwiseParallel`,
`RowwiseParallel`); llmzoo adds grouped KV heads with fewer heads than ranks (`ReplicatedHeads`),
MLA's shared rope key (`SumGradColumns`) and stacked routed experts (`ExpertShards`, `ExpertAllToAll`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.nn.functional import all_to_all_single
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel

from ..errors import UnsupportedError

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
