"""FP8 checkpoints: DeepSeek-V3's block-wise e4m3 weights with one inverse scale per 128×128 block.

The official weights store each linear weight W (out, in) as `X.weight` in float8_e4m3fn plus
`X.weight_scale_inv` (⌈out/128⌉, ⌈in/128⌉) in float32, with W ≈ W_fp8 · scale_inv block by block
(DeepSeek-V3 inference/kernel.py `weight_dequant`); the last row/column of blocks covers the tail
of a shape that is not a multiple of 128. Norms, embeddings, the head and the router stay unquantised.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from safetensors import safe_open
from torch import Tensor

from .rules import Lazy, Transform

BLOCK = 128
SCALE_SUFFIX = "_scale_inv"
E4M3_MAX = 448.0  # largest finite float8_e4m3fn


def _blocks(shape: tuple[int, int], block: int) -> tuple[int, int]:
    return (-(-shape[0] // block), -(-shape[1] // block))


def _expand(scale: Tensor, shape: tuple[int, int], block: int) -> Tensor:
    """(⌈out/b⌉, ⌈in/b⌉) block scales → one per element (out, in), tail blocks cut to size."""
    return scale.repeat_interleave(block, 0)[: shape[0]].repeat_interleave(block, 1)[:, : shape[1]]


def dequantize_blockwise(weight: Tensor, scale_inv: Tensor, dtype: torch.dtype = torch.float32,
                         block: int = BLOCK, name: str = "weight") -> Tensor:
    """W = W_fp8 · scale_inv per block, computed in float32, returned in `dtype`."""
    if weight.ndim != 2:
        raise ValueError(f"{name}: fp8 block dequantisation needs a matrix, got shape {tuple(weight.shape)}")
    want = _blocks(tuple(weight.shape), block)
    if tuple(scale_inv.shape) != want:
        raise ValueError(
            f"{name}{SCALE_SUFFIX}: shape {tuple(scale_inv.shape)} does not give one scale per {block}×{block} "
            f"block of {tuple(weight.shape)}; expected {want}"
        )
    w = weight.to(torch.float32) * _expand(scale_inv.to(torch.float32), tuple(weight.shape), block)
    return w.to(dtype)


def quantize_blockwise(weight: Tensor, block: int = BLOCK) -> tuple[Tensor, Tensor]:
    """The inverse (for writing FP8 checkpoints and tests): scale_inv = amax(block) / 448, W_fp8 = W / scale_inv."""
    w = weight.to(torch.float32)
    rows, cols = _blocks(tuple(w.shape), block)
    padded = torch.zeros(rows * block, cols * block)
    padded[: w.shape[0], : w.shape[1]] = w
    amax = padded.view(rows, block, cols, block).abs().amax(dim=(1, 3))  # (rows, cols)
    scale_inv = (amax / E4M3_MAX).clamp(min=1e-12)
    q = (w / _expand(scale_inv, tuple(w.shape), block)).clamp(-E4M3_MAX, E4M3_MAX)
    return q.to(torch.float8_e4m3fn), scale_inv


class Dequantize(Transform):
    """[W_fp8, scale_inv] → [W] in `dtype` (block-wise, see module docstring); backward re-quantises."""

    def __init__(self, block: int = BLOCK, dtype: torch.dtype = torch.float32):
        self.block, self.dtype = block, dtype

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        weight, scale_inv = xs
        return [dequantize_blockwise(weight, scale_inv, self.dtype, self.block)]

    def lazy(self, xs: list[Lazy]) -> list[Lazy]:
        """A block of W reads the same block of W_fp8 and only the scales of the 128×128 tiles it touches."""
        weight, scale_inv = xs
        b = self.block

        def read(r: tuple) -> Tensor:
            (r0, r1), (c0, c1) = ((t.start, t.stop) for t in r)
            tiles = scale_inv.read((slice(r0 // b, -(-r1 // b)), slice(c0 // b, -(-c1 // b)))).to(torch.float32)
            scale = tiles.repeat_interleave(b, 0).repeat_interleave(b, 1)
            scale = scale[r0 % b : r0 % b + r1 - r0, c0 % b : c0 % b + c1 - c0]
            return (weight.read(r).to(torch.float32) * scale).to(self.dtype)

        return [Lazy(weight.shape, self.dtype, read)]

    def backward(self, xs: list[Tensor]) -> list[Tensor]:
        (weight,) = xs
        return list(quantize_blockwise(weight, self.block))


def fp8_block_size(hf: dict) -> int | None:
    """The block size if config.json declares DeepSeek-style fp8 weights, else None."""
    q = hf.get("quantization_config") or {}
    if not isinstance(q, dict) or q.get("quant_method") != "fp8":
        return None
    block = q.get("weight_block_size") or [BLOCK, BLOCK]
    if (not isinstance(block, list) or len(block) != 2 or block[0] != block[1]
            or not all(isinstance(b, int) and not isinstance(b, bool) and 0 < b <= 2**16 for b in block)):
        raise ValueError(f"config.json: quantization_config.weight_block_size {str(block)[:80]} is not a square "
                         f"block of two equal positive integers (DeepSeek-V3: [128, 128])")
    for key, allowed in (("fmt", ("e4m3",)), ("activation_scheme", ("dynamic",))):
        if q.get(key) is not None and q[key] not in allowed:
            raise ValueError(f"config.json: quantization_config.{key} {str(q[key])[:80]!r} is not one of "
                             f"{', '.join(allowed)}")
    return int(block[0])


def dequantize_stream(
    names: Iterable[str], read: Callable[[str], Tensor], block: int = BLOCK, dtype: torch.dtype = torch.float32
) -> tuple[list[str], Callable[[str], Tensor]]:
    """Put `Dequantize` in front of a checkpoint reader: `X.weight_scale_inv` names disappear and
    reading `X.weight` returns the dequantised tensor, so the adapter's rule table is the same for
    fp8 and unquantised checkpoints. A scale without its weight (or an fp8 weight without its scale)
    is an error that names it. Tensors are read one at a time: memory stays one tensor deep."""
    names = list(names)
    present = set(names)
    scales = {n[: -len(SCALE_SUFFIX)]: n for n in names if n.endswith(SCALE_SUFFIX)}
    orphans = [s for w, s in scales.items() if w not in present]
    if orphans:
        raise ValueError(f"fp8 checkpoint: scales without a weight: {orphans}")
    step = Dequantize(block, dtype)

    def reader(name: str) -> Tensor:
        x = read(name)
        if name in scales:
            return step.forward([x, read(scales[name])])[0]
        if x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            raise ValueError(f"fp8 checkpoint: tensor {name!r} is {x.dtype} but has no {name + SCALE_SUFFIX!r}")
        return x

    return [n for n in names if not n.endswith(SCALE_SUFFIX)], reader


def split_scales(hf: dict, infos: dict) -> dict:
    """For an fp8 checkpoint (config.json quantization_config): remove every `X.weight_scale_inv` from
    the checkpoint index `infos` (name → TensorInfo, edited in place) and return {X.weight: its scale's
    TensorInfo}, so the adapter's rules see one tensor per weight. {} for other checkpoints."""
    fp8 = (torch.float8_e4m3fn, torch.float8_e5m2)
    block = fp8_block_size(hf)
    if block is None:
        stored = [n for n, i in infos.items() if i.dtype in fp8]
        if stored:
            raise ValueError(f"tensors stored in float8 ({', '.join(stored[:3])}{', …' if len(stored) > 3 else ''}) "
                             f"but config.json declares no quantization_config with quant_method 'fp8' "
                             f"(their scales are unknown)")
        return {}
    scales = {n[: -len(SCALE_SUFFIX)]: n for n in infos if n.endswith(SCALE_SUFFIX)}
    orphans = [s for w, s in scales.items() if w not in infos]
    unscaled = [n for n, i in infos.items() if i.dtype in fp8 and n not in scales]
    if orphans or unscaled:
        raise ValueError(f"fp8 checkpoint: scales without a weight {orphans[:10]}; fp8 weights without a scale "
                         f"{unscaled[:10]}")
    bad = []
    for w, s in scales.items():  # checked from the headers, before any read
        wi, si = infos[w], infos[s]
        if len(wi.shape) != 2:
            bad.append(f"{w!r}: fp8 block dequantisation needs a matrix, got shape {list(wi.shape)}")
        elif tuple(si.shape) != _blocks(tuple(wi.shape), block):
            bad.append(f"{s!r}: shape {list(si.shape)} is not one scale per {block}×{block} block of "
                       f"{w!r} {list(wi.shape)} (expected {list(_blocks(tuple(wi.shape), block))})")
        elif not si.dtype.is_floating_point or si.dtype in fp8:
            bad.append(f"{s!r}: stored as {si.dtype}; scales are float32 (or bf16/fp16)")
    if bad:
        raise ValueError("fp8 checkpoint: " + "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else ""))
    return {w: (s, infos.pop(s)) for w, s in scales.items()}


def dequantize_loaded(name: str, weight: Tensor, scales: dict, hf: dict, dtype: torch.dtype | None,
                      scale_inv: Tensor | None = None) -> Tensor:
    """The loader's step for one tensor just read: `Dequantize` it if it has a scale (scale_inv, or read
    from its own shard: the pair may be split across files), to `dtype`, else config.json's dtype,
    else float32."""
    if name not in scales:
        return weight
    if scale_inv is None:
        scale_name, info = scales[name]
        with safe_open(str(info.file), framework="pt") as f:
            scale_inv = f.get_tensor(scale_name)
    if dtype is None:
        stored = hf.get("torch_dtype") or hf.get("dtype") or "float32"
        dtype = getattr(torch, str(stored).removeprefix("torch."), torch.float32)
    block = fp8_block_size(hf) or BLOCK
    return dequantize_blockwise(weight, scale_inv, dtype, block, name)
