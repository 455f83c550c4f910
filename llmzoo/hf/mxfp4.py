"""MXFP4 checkpoints (GPT-OSS): OCP Microscaling FP4 expert weights.

OCP Microscaling Formats (MX) v1.0 §5: a block of k = 32 elements shares one scale X in E8M0
(an 8-bit biased exponent, X = 2^(s - 127), s = 255 is NaN), each element is FP4 E2M1 (1 sign, 2
exponent bits with bias 1, 1 mantissa bit; no inf/NaN; values ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}), and
the block's value is X · P_i. GPT-OSS stores each routed-expert weight W (E, out, in) as
`X_blocks` (E, out, in / 32, 16) uint8, two codes per byte with the lower-indexed element in the
low nibble, and `X_scales` (E, out, in / 32) uint8 (openai/gpt-oss and transformers'
integrations/mxfp4.py). Everything else (attention, router, embeddings, head) stays bf16.

Dequantisation runs on CPU (any device; no kernel) as a declared, reversible rule transform
(`DequantizeMXFP4`, used by the gpt_oss adapter's MXFP4 rules): float32 is exact for every MXFP4
value, so a bf16 or fp32 model holds exactly the dequantised weights and is saved back unquantised.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .rules import Transform

BLOCK = 32  # elements sharing one scale (MX k)
E8M0_BIAS, E8M0_NAN = 127, 255
E2M1_MAX = 6.0
E2M1_EMAX = 2  # exponent of the largest normal E2M1 value (6 = 1.5 · 2²)
# code → value, code = sign · 8 + exponent · 2 + mantissa
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def _check(blocks: Tensor, scales: Tensor, name: str) -> None:
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(f"{name}: MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.shape[-1] != BLOCK // 2 or tuple(blocks.shape[:-1]) != tuple(scales.shape):
        raise ValueError(f"{name}: blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} are not "
                         f"(..., G, {BLOCK // 2}) and (..., G)")


def dequantize_mxfp4(blocks: Tensor, scales: Tensor, dtype: torch.dtype = torch.float32, name: str = "weight") -> Tensor:
    """(..., G, 16) packed E2M1 codes and (..., G) E8M0 scales → (..., G · 32) values in `dtype`."""
    _check(blocks, scales, name)
    if blocks.is_meta:
        return torch.empty((*blocks.shape[:-2], blocks.shape[-2] * BLOCK), dtype=dtype, device="meta")
    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).flatten(-2).long()  # (..., G, 32)
    values = torch.tensor(E2M1, dtype=torch.float32, device=blocks.device)[codes]
    exp = scales.to(torch.int32) - E8M0_BIAS
    out = torch.ldexp(values, exp[..., None].to(torch.float32))
    out = out.masked_fill((scales == E8M0_NAN)[..., None], float("nan"))
    return out.flatten(-2).to(dtype)


def quantize_mxfp4(weight: Tensor) -> tuple[Tensor, Tensor]:
    """The inverse (for writing MXFP4 checkpoints and tests), per OCP MX §6.3: the shared exponent is
    floor(log2(amax)) - 2, elements are rounded to the nearest E2M1 value (ties to even code), clamped to ±6."""
    w = weight.to(torch.float32)
    if w.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4: last dim {w.shape[-1]} is not a multiple of {BLOCK}")
    w = w.view(*w.shape[:-1], -1, BLOCK)  # (..., G, 32)
    amax = w.abs().amax(-1)
    exp = torch.where(amax > 0, torch.floor(torch.log2(amax.clamp(min=2.0**-127))) - E2M1_EMAX, torch.zeros_like(amax))
    exp = exp.clamp(-E8M0_BIAS, E8M0_BIAS)
    scaled = (w / torch.ldexp(torch.ones_like(exp), exp)[..., None]).clamp(-E2M1_MAX, E2M1_MAX)
    grid = torch.tensor(E2M1[:8])
    dist = (scaled.abs()[..., None] - grid).abs() + (torch.arange(8) % 2) * 1e-6  # ties to the even code
    mag = dist.argmin(-1)
    codes = (mag + 8 * (scaled < 0).long()).to(torch.uint8)
    codes = torch.where(mag == 0, torch.zeros_like(codes), codes)  # +0 for zero
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)  # (..., G, 16)
    return packed.contiguous(), (exp + E8M0_BIAS).to(torch.uint8)


class DequantizeMXFP4(Transform):
    """[W_blocks, W_scales] → [W] (E, out, in) in float32; backward re-quantises to MXFP4."""

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        blocks, scales = xs
        return [dequantize_mxfp4(blocks, scales)]

    def backward(self, xs: list[Tensor]) -> list[Tensor]:
        (weight,) = xs
        return list(quantize_mxfp4(weight))
