"""The transformer block: one class, residual wiring chosen from the config in `__init__`."""

from __future__ import annotations

from torch import Tensor, nn

from .attention import Context
from .config import BlockSpec
from .registry import build


class Block(nn.Module):
    """Attention + MLP with the residual placement of `BlockSpec` (see its docstring for the equations).

    Norm modules: attn_norm / mlp_norm on the sub-layer inputs (outputs for post), attn_out_norm /
    mlp_out_norm on the sub-layer outputs (sandwich, output); a parallel block with a shared norm has
    attn_norm alone; `output` placement has no input norms."""

    def __init__(self, spec: BlockSpec, d_model: int, layer: int, scale_mult: float = 1.0):
        super().__init__()
        self.layer, self.alpha = layer, spec.alpha
        self.attn = build("attention", spec.attention, d_model, layer, scale_mult)
        self.mlp = build("mlp", spec.mlp, d_model, layer)
        if spec.placement != "output":
            self.attn_norm = build("norm", spec.norm, d_model)
        if spec.parallel != "shared_norm" and spec.placement != "output":
            self.mlp_norm = build("norm", spec.norm, d_model)
        if spec.placement in ("sandwich", "output"):
            self.attn_out_norm = build("norm", spec.norm, d_model)
            self.mlp_out_norm = build("norm", spec.norm, d_model)
        self.wiring = f"_parallel_{spec.parallel}" if spec.parallel != "none" else f"_{spec.placement}"

    def forward(self, x: Tensor, ctx: Context) -> Tensor:  # (B, T, D) -> (B, T, D)
        return getattr(self, self.wiring)(x, ctx)

    def beta_scaled(self) -> list[nn.Module]:
        """Modules DeepNorm's β (block.init_beta) multiplies at init: the attention's value and output
        projections (its `beta_scaled`) and the whole MLP (arXiv:2203.00555, Fig. 2)."""
        return [*self.attn.beta_scaled(), *self.mlp.modules()]

    def _pre(self, x: Tensor, ctx: Context) -> Tensor:
        x = x + self.attn(self.attn_norm(x), ctx)
        return x + self.mlp(self.mlp_norm(x))

    def _sandwich(self, x: Tensor, ctx: Context) -> Tensor:
        x = x + self.attn_out_norm(self.attn(self.attn_norm(x), ctx))
        return x + self.mlp_out_norm(self.mlp(self.mlp_norm(x)))

    def _output(self, x: Tensor, ctx: Context) -> Tensor:
        x = x + self.attn_out_norm(self.attn(x, ctx))
        return x + self.mlp_out_norm(self.mlp(x))

    def _post(self, x: Tensor, ctx: Context) -> Tensor:
        x = self.attn_norm(self.alpha * x + self.attn(x, ctx))
        return self.mlp_norm(self.alpha * x + self.mlp(x))

    def _deepnorm(self, x: Tensor, ctx: Context) -> Tensor:
        a = self.attn_norm(x)
        m = self.mlp_norm(self.alpha * a + self.attn(a, ctx))
        return self.alpha * m + self.mlp(m)

    def _parallel_shared_norm(self, x: Tensor, ctx: Context) -> Tensor:
        h = self.attn_norm(x)
        return x + self.attn(h, ctx) + self.mlp(h)

    def _parallel_two_norms(self, x: Tensor, ctx: Context) -> Tensor:
        return x + self.attn(self.attn_norm(x), ctx) + self.mlp(self.mlp_norm(x))
