"""Mixture of experts: routers (softmax / sigmoid, group-limited) and fine-grained + shared experts."""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from .mlp import GLU, Activation, GLUSpec, activation
from .parallel import plan
from .protocol import MLPSpecBase, Module
from .registry import register


class MoESpec(MLPSpecBase):
    """Routed GLU experts plus always-on shared experts (DeepSeekMoE, arXiv:2401.06066)."""

    type: Literal["moe"] = "moe"
    n_experts: int = Field(gt=0)
    top_k: int = Field(gt=0)
    d_expert: int = Field(gt=0, description="inner size of one routed expert")
    activation: Activation = "silu"
    n_shared_experts: int = Field(0, ge=0, description="fused into one GLU of n_shared × d_expert")
    shared_bias: bool = Field(False, description="biases in the shared experts (HF DeepSeek-V2 mlp_bias)")
    score: Literal["softmax", "sigmoid"] = "softmax"
    n_groups: int = Field(1, gt=0, description="device groups for group-limited routing")
    topk_groups: int = Field(1, gt=0, description="groups a token may route into")
    group_score: Literal["max", "top2_sum"] = "max"
    norm_topk: bool = Field(False, description="renormalise the chosen weights to sum to 1")
    routed_scale: float = Field(1.0, gt=0, description="multiplies the routed output (V2/V3)")
    score_bias: bool = Field(False, description="V3 aux-loss-free bias, used for selection only")
    router_bias: bool = Field(False, description="a learned bias on the router logits (GPT-OSS)")
    expert_bias: bool = Field(False, description="biases on each routed expert's gate, up and down (GPT-OSS)")
    swiglu_limit: float | None = Field(
        None, gt=0, description="clamp the gate to ≤ limit and up to ±limit before the product (GPT-OSS 7.0)"
    )
    swiglu_alpha: float = Field(1.0, gt=0, description="gate · σ(alpha · gate); 1 is SiLU (GPT-OSS 1.702)")
    up_offset: float = Field(0.0, description="(up + offset) ⊙ act(gate) in the routed experts (GPT-OSS 1)")
    weigh_input: bool = Field(False, description="multiply an expert's input by its router weight, not its "
                              "output: FFN_i(g_i·x) (Llama-4)")

    @model_validator(mode="after")
    def _check(self) -> "MoESpec":
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k ({self.top_k}) exceeds n_experts ({self.n_experts})")
        if self.n_experts % self.n_groups:
            raise ValueError(f"n_experts ({self.n_experts}) is not divisible by n_groups ({self.n_groups})")
        if self.topk_groups > self.n_groups:
            raise ValueError(f"topk_groups ({self.topk_groups}) exceeds n_groups ({self.n_groups})")
        if self.topk_groups * self.n_experts // self.n_groups < self.top_k:
            raise ValueError(f"topk_groups ({self.topk_groups}) leave fewer than top_k experts to choose from")
        clamped = self.swiglu_limit is not None or self.swiglu_alpha != 1.0 or self.up_offset != 0.0
        if clamped and self.activation != "silu":
            raise ValueError(f"swiglu_limit / swiglu_alpha / up_offset shape a SwiGLU: activation must be silu, "
                             f"not {self.activation!r}")
        return self

    @property
    def shared_spec(self) -> GLUSpec | None:
        if not self.n_shared_experts:
            return None
        return GLUSpec(d_ff=self.n_shared_experts * self.d_expert, activation=self.activation, bias=self.shared_bias)

    def n_params(self, d_model: int) -> int:
        return self.params_by_part(d_model)["total"]

    def params_by_part(self, d_model: int) -> dict[str, int]:
        expert = 3 * d_model * self.d_expert + ((2 * self.d_expert + d_model) if self.expert_bias else 0)
        shared = self.shared_spec.n_params(d_model) if self.shared_spec else 0
        router = (d_model + (1 if self.router_bias else 0)) * self.n_experts
        return {
            "router": router,
            "experts": self.n_experts * expert,
            "shared": shared,
            "total": router + self.n_experts * expert + shared,
            "active": router + self.top_k * expert + shared,
        }

    def param_parts(self, d_model: int) -> dict[str, tuple[int, int]]:
        p = self.params_by_part(d_model)
        expert = p["experts"] // self.n_experts  # one routed expert, biases included
        return {"moe_router": (p["router"],) * 2, "mlp": (p["shared"],) * 2,
                "moe_experts": (p["experts"], self.top_k * expert)}  # only the top_k routed experts are active

    def scaled(self, s) -> "MoESpec":
        """Several experts, shared experts and group-limited routing that still excludes groups."""
        e, g = min(self.n_experts, s.n_experts), min(self.n_groups, 4)
        tg = max(1, min(self.topk_groups, g // 2)) if g > 1 else 1
        return self.updated(n_experts=e, n_groups=g, topk_groups=tg, top_k=max(1, min(self.top_k, tg * e // g, e - 1)),
                            d_expert=s.width(self.d_expert), n_shared_experts=min(self.n_shared_experts, 2))


class Router(nn.Module):
    """Chooses top_k experts per token and their weights.

    V2 (arXiv:2405.04434, §2.2): softmax scores, groups ranked by their best score.
    V3 (arXiv:2412.19437, §2.1.2): sigmoid scores; a bias added for selection only; groups ranked
    by the sum of their two best scores; chosen weights normalised, then × routed_scale.
    GPT-OSS: softmax over the top-k biased logits = softmax scores renormalised over the top k
    (score softmax, norm_topk, router_bias).
    The weight and score bias stay float32 under any model dtype (V3 §3.3.1 keeps gating in full
    precision; transformers does too): routing is discontinuous, bf16 rounding would flip choices."""

    discrete_routing = True  # its top-k choice can flip on a near tie (llmzoo.parity.ROUTED)

    keep_float32 = ("weight", "bias", "score_bias")

    def __init__(self, spec: MoESpec, d_model: int):
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(torch.empty(spec.n_experts, d_model))
        nn.init.normal_(self.weight, std=0.02)
        self.bias = nn.Parameter(torch.zeros(spec.n_experts)) if spec.router_bias else None
        if spec.score_bias:
            self.register_buffer("score_bias", torch.zeros(spec.n_experts))
        else:
            self.score_bias = None

    def _apply(self, fn, recurse=True):
        """Model-wide .to(dtype) / .half() leave the router in float32 (device moves still apply)."""
        before = {n: t.detach() for n, t in [*self._parameters.items(), *self._buffers.items()] if t is not None}
        super()._apply(fn, recurse)
        for n in self.keep_float32:
            t = getattr(self, n)
            if t is not None and t.is_floating_point() and t.dtype != torch.float32 and before[n].dtype == torch.float32:
                t.data = before[n].to(device=t.device)
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (N, D) -> weights (N, k) in float32, experts (N, k), scores (N, E) before any bias or mask."""
        s = self.spec
        bias = self.bias.float() if self.bias is not None else None
        logits = F.linear(x.float(), self.weight.float(), bias)  # (N, E)
        scores = logits.softmax(-1) if s.score == "softmax" else logits.sigmoid()
        choice = scores if self.score_bias is None else scores + self.score_bias.float()
        if s.n_groups > 1:
            grouped = choice.view(len(x), s.n_groups, -1)  # (N, G, E/G)
            if s.group_score == "max":
                group_rank = grouped.amax(-1)
            else:
                group_rank = grouped.topk(2, dim=-1).values.sum(-1)
            keep = torch.zeros_like(group_rank, dtype=torch.bool)
            keep.scatter_(1, group_rank.topk(s.topk_groups, dim=-1).indices, True)
            choice = grouped.masked_fill(~keep[..., None], float("-inf")).flatten(1)
        experts = choice.topk(s.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if s.norm_topk:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return weights * s.routed_scale, experts, scores


def gated(spec: MoESpec) -> Callable[[Tensor, Tensor], Tensor]:
    """h(gate, up) of one routed expert: act(gate) ⊙ up, or GPT-OSS's clamped SwiGLU
    (min(g, L) · σ(α · min(g, L))) ⊙ (clamp(u, ±L) + offset)."""
    act = activation(spec.activation)
    if spec.swiglu_limit is None and spec.swiglu_alpha == 1.0 and spec.up_offset == 0.0:
        return lambda g, u: act(g) * u
    limit = spec.swiglu_limit if spec.swiglu_limit is not None else float("inf")
    alpha, offset = spec.swiglu_alpha, spec.up_offset

    def clamped(g: Tensor, u: Tensor) -> Tensor:
        g, u = g.clamp(max=limit), u.clamp(-limit, limit)
        return g * torch.sigmoid(alpha * g) * (u + offset)

    return clamped


def _grouped_kernel(x: Tensor, weight: Tensor) -> bool:
    """torch._grouped_mm runs these operands: on CPU any float dtype; on CUDA bf16 (sm ≥ 80)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.device.type == "cpu":
        return True
    return x.device.type == "cuda" and x.dtype == weight.dtype == torch.bfloat16 and \
        torch.cuda.get_device_capability(x.device) >= (8, 0)


@torch.library.custom_op("llmzoo::grouped_linear", mutates_args=())
def grouped_linear(x: Tensor, weight: Tensor, offs: Tensor) -> Tensor:
    """Rows offs[e-1]:offs[e] of x (M, in) times weight[e]ᵀ (E, out, in) -> (M, out); rows past
    offs[-1] are left undefined. One grouped GEMM (torch._grouped_mm) where the device has it, else
    one matmul per non-empty group. A custom op: torch.compile sees a fixed (M, out) result, whatever
    the group sizes (aten's own meta function accepts bf16 only)."""
    weight = weight.to(x.dtype)
    if _grouped_kernel(x, weight):
        return torch._grouped_mm(x, weight.transpose(1, 2), offs=offs)
    out = x.new_zeros(x.shape[0], weight.shape[1])
    start = 0
    for e, end in enumerate(offs.tolist()):
        if end > start:
            out[start:end] = x[start:end] @ weight[e].T
        start = end
    return out


@grouped_linear.register_fake
def _(x: Tensor, weight: Tensor, offs: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[1])


class Experts(nn.Module):
    """n_experts GLU FFNs with stacked weights (E, ·, ·), so a grouped GEMM or expert-parallel
    split addresses them as one tensor. expert_bias adds gate_bias, up_bias (E, F), down_bias (E, D)."""

    PARAMS = ("gate", "up", "down", "gate_bias", "up_bias", "down_bias")

    def __init__(self, spec: MoESpec, d_model: int):
        super().__init__()
        e, f = spec.n_experts, spec.d_expert
        self.gate = nn.Parameter(torch.empty(e, f, d_model))
        self.up = nn.Parameter(torch.empty(e, f, d_model))
        self.down = nn.Parameter(torch.empty(e, d_model, f))
        for w in (self.gate, self.up, self.down):
            nn.init.normal_(w, std=0.02)
        for n, shape in (("gate_bias", (e, f)), ("up_bias", (e, f)), ("down_bias", (e, d_model))):
            setattr(self, n, nn.Parameter(torch.zeros(shape)) if spec.expert_bias else None)
        self.glu = gated(spec)
        self.weigh_input = spec.weigh_input

    def expert(self, i: int, x: Tensor, weights: tuple | None = None) -> Tensor:
        """Expert i on its tokens x (n, D); weights: the PARAMS stacks to use (local shards; biases may be None)."""
        gate, up, down, gb, ub, db = weights if weights is not None else [getattr(self, n) for n in self.PARAMS]
        g = F.linear(x, gate[i], gb[i] if gb is not None else None)
        u = F.linear(x, up[i], ub[i] if ub is not None else None)
        return F.linear(self.glu(g, u), down[i], db[i] if db is not None else None)

    def forward(self, x: Tensor, weights: Tensor, experts: Tensor) -> Tensor:
        """x (N, D); weights, experts (N, k). Routes sorted by expert, each expert's rows contiguous.

        Without gradients: three grouped GEMMs over all N·k routes, no Python loop and no value read
        back to the host (a compiled decode step stays one graph). With gradients: one call of `expert`
        per loaded expert (torch._grouped_mm has no CPU backward)."""
        # under expert/tensor parallelism (llmzoo.parallel) the stacked weights are DTensors: compute
        # with this rank's experts; ids ≥ its expert count belong to other ranks and are skipped
        local = [w.to_local() if hasattr(w, "to_local") else w for w in (getattr(self, n) for n in self.PARAMS)]
        E = local[0].shape[0]
        flat = experts.flatten()  # (N·k,)
        order = flat.argsort(stable=True)
        token = order // experts.shape[1]
        route_w = weights.flatten()[order, None].to(x.dtype)  # (N·k, 1)
        if torch.is_grad_enabled() and (x.requires_grad or local[0].requires_grad):
            return self._per_expert(x, flat, token, route_w, local)
        chosen = flat[order]  # (N·k,) expert of each sorted route
        offs = torch.searchsorted(chosen, torch.arange(1, E + 1, device=x.device)).to(torch.int32)  # group ends
        here = chosen < E  # routes to this rank's experts
        e = chosen.clamp(max=E - 1)
        gate, up, down, gb, ub, db = local
        h = x[token] * route_w if self.weigh_input else x[token]  # (N·k, D)
        g, u = grouped_linear(h, gate, offs), grouped_linear(h, up, offs)  # (N·k, F)
        if gb is not None:
            g, u = g + gb[e].to(g.dtype), u + ub[e].to(u.dtype)
        y = grouped_linear(self.glu(g, u), down, offs)  # (N·k, D)
        if db is not None:
            y = y + db[e].to(y.dtype)
        y = y if self.weigh_input else y * route_w
        y = torch.where(here[:, None], y, torch.zeros((), dtype=y.dtype, device=y.device))
        return torch.zeros_like(x).index_add_(0, token, y)

    def _per_expert(self, x: Tensor, flat: Tensor, token: Tensor, route_w: Tensor, local: list) -> Tensor:
        E = local[0].shape[0]
        counts = torch.bincount(flat, minlength=E).tolist()[:E]
        out = torch.zeros_like(x)
        start = 0
        for i, n in enumerate(counts):
            if n:
                rows, w = token[start : start + n], route_w[start : start + n]
                y = self.expert(i, x[rows] * w, local) if self.weigh_input else self.expert(i, x[rows], local) * w
                out.index_add_(0, rows, y)
                start += n
        return out


@register("mlp", "moe", MoESpec)
class MoE(Module):
    """y = Σ_shared FFN(x) + Σ_{i ∈ topk} g_i · FFN_i(x)  (DeepSeekMoE eq. 3-5; Mixtral without shared).

    After each forward, for balance losses and monitoring: `load` (E,) the number of (token, slot)
    assignments per expert, detached; `mean_score` (E,) the router score averaged over tokens, with
    gradient (the P_i of the expert-level balance loss, DeepSeek-V2 eq. 12-13; load/(N·k) gives f_i)."""

    def __init__(self, spec: MoESpec, d_model: int, layer: int = 0):
        super().__init__()
        self.router = Router(spec, d_model)
        self.experts = Experts(spec, d_model)
        self.shared = GLU(spec.shared_spec, d_model) if spec.shared_spec else None
        self.load: Tensor | None = None
        self.mean_score: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D)
        flat = x.reshape(-1, x.shape[-1])
        weights, experts, scores = self.router(flat)
        E = self.experts.gate.shape[0]  # (a fixed-size count: bincount's size depends on the ids)
        self.load = torch.zeros(E, dtype=torch.long, device=x.device).scatter_add_(
            0, experts.flatten(), torch.ones_like(experts.flatten())).detach()
        self.mean_score = scores.mean(0)
        y = self.experts(flat, weights, experts)
        if self.shared is not None:
            y = y + self.shared(flat)
        return y.view_as(x)

    def expert_parallel(self) -> list[nn.Module]:
        return [self.experts]

    def tp_plan(self, tp: int, ep: bool = False) -> dict:
        """Tensor-parallel plan: routed experts split across ranks (ep: whole experts, E / tp each;
        otherwise each expert's inner dim), shared experts as a GLU; the router stays whole."""
        shared = {f"shared.{k}": v for k, v in self.shared.tp_plan(tp).items()} if self.shared is not None else {}
        return {"experts": plan.ExpertShards(ep), **shared}
