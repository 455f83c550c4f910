"""DeBERTa-v2's convolution beside one encoder layer (`layer_conv`, llmzoo.config.LayerConvSpec;
transformers' deberta_v2 `ConvLayer`, used by microsoft/deberta-v2-xlarge and -xxlarge)."""

from __future__ import annotations

from torch import Tensor, nn

from .config import LayerConvSpec
from .mlp import activation
from .protocol import Module
from .registry import build


class LayerConv(Module):
    """forward(x: the layer's input (B, T, D), h: its output, mask (B, T) or None) →
    norm(h + act(conv(x) with padding rows 0)), padding rows 0 (transformers' order exactly)."""

    def __init__(self, spec: LayerConvSpec, d_model: int):
        super().__init__()
        k = spec.kernel_size
        self.conv = nn.Conv1d(d_model, d_model, k, padding=(k - 1) // 2, groups=spec.groups)
        self.act = activation(spec.activation)
        self.norm = build("norm", spec.norm, d_model)

    def forward(self, x: Tensor, h: Tensor, mask: Tensor | None) -> Tensor:
        out = self.conv(x.transpose(1, 2)).transpose(1, 2)
        keep = None if mask is None else mask.to(out.dtype).unsqueeze(-1)
        if keep is not None:
            out = out * keep
        out = self.norm(h + self.act(out))
        return out if keep is None else out * keep
