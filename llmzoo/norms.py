"""Normalisation layers. Placement (pre / post / sandwich / DeepNorm) lives in `block.py`.
Each initialises itself in `reset_parameters` (llmzoo.protocol.NormModule)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from .protocol import NormModule, NormSpecBase
from .registry import register


class LayerNormSpec(NormSpecBase):
    type: Literal["layernorm"] = "layernorm"
    eps: float = Field(1e-5, gt=0)
    bias: bool = True
    elementwise_affine: bool = Field(
        True, description="False: no gain and no bias, y = (x - mean) / sqrt(var + eps) (OPT derivatives' "
        "layer_norm_elementwise_affine: false)"
    )

    @model_validator(mode="after")
    def _check(self) -> "LayerNormSpec":
        if self.bias and not self.elementwise_affine:
            raise ValueError("bias: true needs elementwise_affine: true (a LayerNorm without gain has no bias)")
        return self

    def n_params(self, dim: int) -> int:
        if not self.elementwise_affine:
            return 0
        return dim * (2 if self.bias else 1)


class RMSNormSpec(NormSpecBase):
    type: Literal["rmsnorm"] = "rmsnorm"
    eps: float = Field(1e-6, gt=0)
    unit_offset: bool = False
    round_before_weight: bool = Field(
        False, description="round x/rms(x) to the input dtype, then multiply by g in it (T5LayerNorm, "
        "HF LlamaRMSNorm); False multiplies in float32 and rounds once (Gemma). Same result in float32"
    )

    weight: bool = Field(True, description="False: no gain g, y = x / rms(x) (Llama-4's QK L2Norm)")

    def n_params(self, dim: int) -> int:
        return dim if self.weight else 0


@register("norm", "layernorm", LayerNormSpec)
class LayerNorm(NormModule):
    """LayerNorm (Ba et al., arXiv:1607.06450): y = (x - mean) / sqrt(var + eps) * g + b.

    bias: False drops b (MPT, PaLM-style no-bias models).
    elementwise_affine: False drops g and b (OPT's layer_norm_elementwise_affine: false)."""

    def __init__(self, spec: LayerNormSpec, dim: int):
        super().__init__()
        self.eps = spec.eps
        self.weight = nn.Parameter(torch.ones(dim)) if spec.elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if spec.bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


@register("norm", "rmsnorm", RMSNormSpec)
class RMSNorm(NormModule):
    """RMSNorm (Zhang & Sennrich, arXiv:1910.07467): y = x / sqrt(mean(x²) + eps) * g.

    unit_offset: scale by (1 + g), for checkpoints that store g - 1 (Gemma).
    round_before_weight: in half precision, round x/rms(x) before multiplying by g (T5LayerNorm).
    weight: False drops g (Llama-4's parameter-free QK-norm)."""

    def __init__(self, spec: RMSNormSpec, dim: int):
        super().__init__()
        self.eps = spec.eps
        self.offset = 1.0 if spec.unit_offset else 0.0
        self.round_before_weight = spec.round_before_weight
        self.weight = nn.Parameter(torch.full((dim,), 1.0 - self.offset)) if spec.weight else None

    def forward(self, x: Tensor) -> Tensor:  # (..., D)
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is None:
            return y.type_as(x)
        if self.round_before_weight:  # half precision: two roundings, as the reference implementation
            return (self.offset + self.weight) * y.type_as(x)
        return (y * (self.offset + self.weight.float())).type_as(x)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.constant_(self.weight, 1.0 - self.offset)
