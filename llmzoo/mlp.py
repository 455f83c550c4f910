"""Feed-forward layers: the dense two-layer MLP and the gated linear unit family (SwiGLU, GeGLU)."""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from .parallel import plan
from .linear import Linear
from .protocol import MLPSpecBase, Module
from .registry import register

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact erf form (Hendrycks & Gimpel, arXiv:1606.08415)
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2, BLOOM, Gemma
    "silu": F.silu,  # SwiGLU's Swish_1 (Shazeer, arXiv:2002.05202)
    "tanh": torch.tanh,  # DeBERTa-v2's conv_act default (llmzoo.config.LayerConvSpec)
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    if name not in ACTIVATIONS:
        raise KeyError(f"activation {name!r} is not one of {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


Activation = Literal["relu", "gelu", "gelu_tanh", "silu"]


class MLPSpec(MLPSpecBase):
    type: Literal["mlp"] = "mlp"
    d_ff: int = Field(gt=0)
    activation: Activation = "gelu"
    bias: bool = False

    def n_params(self, d_model: int) -> int:
        return 2 * d_model * self.d_ff + (self.d_ff + d_model if self.bias else 0)

    def scaled(self, s) -> "MLPSpec":
        return self.updated(d_ff=s.width(self.d_ff))


class GLUSpec(MLPSpec):  # the same fields and scale-down; a third matrix
    type: Literal["glu"] = "glu"  # type: ignore[assignment]
    activation: Activation = "silu"

    def n_params(self, d_model: int) -> int:
        return 3 * d_model * self.d_ff + (2 * self.d_ff + d_model if self.bias else 0)


@register("mlp", "mlp", MLPSpec)
class MLP(Module):
    """Position-wise FFN (Vaswani et al., eq. 2): down(act(up(x)))."""

    def __init__(self, spec: MLPSpec, d_model: int, layer: int = 0):
        super().__init__()
        self.up = Linear(d_model, spec.d_ff, bias=spec.bias)
        self.down = Linear(spec.d_ff, d_model, bias=spec.bias)
        self.act = activation(spec.activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))

    def tp_plan(self, tp: int, ep: bool = False) -> dict:
        """Tensor-parallel plan (Megatron-LM, arXiv:1909.08053, §3): up column-, down row-parallel."""
        return {"up": plan.ColwiseParallel(), "down": plan.RowwiseParallel()}


@register("mlp", "glu", GLUSpec)
class GLU(Module):
    """Gated linear unit FFN (Shazeer, arXiv:2002.05202, eq. 5-6): down(act(gate(x)) ⊙ up(x)).

    activation: silu gives SwiGLU (LLaMA, PaLM), gelu / gelu_tanh give GeGLU (GLM-130B, Gemma)."""

    def __init__(self, spec: GLUSpec, d_model: int, layer: int = 0):
        super().__init__()
        self.gate = Linear(d_model, spec.d_ff, bias=spec.bias)
        self.up = Linear(d_model, spec.d_ff, bias=spec.bias)
        self.down = Linear(spec.d_ff, d_model, bias=spec.bias)
        self.act = activation(spec.activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))

    def tp_plan(self, tp: int, ep: bool = False) -> dict:
        """Tensor-parallel plan: gate and up column-parallel (the product is elementwise), down row-parallel."""
        return {"gate": plan.ColwiseParallel(), "up": plan.ColwiseParallel(), "down": plan.RowwiseParallel()}
