"""Position encodings: learned, sinusoidal, RoPE (with its scalings), ALiBi, T5 relative buckets,
DeBERTa's relative embedding table.

One position module per model. It may contribute in four places, each optional:
`embed(pos)` adds to the token embeddings, `rotary(pos)` gives the cos/sin that attention applies
to queries and keys, `bias(q_pos, k_pos)` gives an additive per-head score bias, `relative(q_pos,
k_pos)` gives a table of relative-position embeddings and each (query, key) pair's row in it.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal, Union

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from .config import MAX_SEQ_LEN
from .protocol import Module, PositionSpecBase
from .registry import Component, Spec, build, register

# ----------------------------------------------------------------------------------- specs


class NoPositionSpec(PositionSpecBase):
    type: Literal["none"] = "none"


class LearnedPositionSpec(PositionSpecBase):
    type: Literal["learned"] = "learned"
    max_positions: int = Field(gt=0)
    offset: int = Field(0, ge=0, description="rows before position 0 (OPT stores 2)")

    def n_params(self, d_model: int, n_heads: int) -> int:
        return (self.max_positions + self.offset) * d_model

    def scaled(self, s) -> "LearnedPositionSpec":
        return self.updated(max_positions=min(self.max_positions, s.max_seq_len), offset=min(self.offset, s.max_seq_len))


class SinusoidalPositionSpec(PositionSpecBase):
    type: Literal["sinusoidal"] = "sinusoidal"
    base: float = Field(10000.0, ge=1)
    layout: Literal["interleaved", "concat"] = "interleaved"


class LinearScaling(Spec):
    """Position interpolation (Chen et al., arXiv:2306.15595): positions / factor."""

    type: Literal["linear"] = "linear"
    factor: float = Field(gt=0)


class DynamicNTKScaling(Spec):
    """Dynamic NTK-aware scaling: the base grows once the sequence passes the trained length,
    theta · (factor · L / L0 - (factor - 1))^(d / (d - 2)) for a sequence of L > L0 positions."""

    type: Literal["dynamic"] = "dynamic"
    factor: float = Field(gt=0)
    original_max_positions: int = Field(
        gt=0, description="L0; transformers reads config.json's max_position_embeddings for it (not "
        "rope_scaling.original_max_position_embeddings)"
    )


class YarnScaling(Spec):
    """YaRN (Peng et al., arXiv:2309.00071) as DeepSeek-V2/V3 configure it."""

    type: Literal["yarn"] = "yarn"
    factor: float = Field(gt=0)
    original_max_positions: int = Field(gt=0)
    beta_fast: float = Field(32.0, gt=0)  # rotations per context: the ramp's ends take their log
    beta_slow: float = Field(1.0, gt=0)
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = Field(None, description="cos/sin multiplier; derived if unset")
    truncate: bool = True
    mscale_softmax: bool = Field(
        False, description="also multiply the softmax scale by (0.1·mscale_all_dim·ln factor + 1)²: DeepSeek-V2/V3's "
        "MLA does; transformers' llama, mistral and qwen2 apply only the cos/sin attention_factor"
    )

    def scaled(self, max_seq_len: int) -> "YarnScaling":
        # a scaled-down model keeps factor = max_seq_len / original_max_positions, the ratio transformers
        # checks (it warns otherwise). The original length keeps a quarter of the tiny context at least
        # (the factor drops to ≤ 4): below that YaRN's correction range leaves the rotary dims entirely
        original = max(1, round(max_seq_len / min(self.factor, 4.0)))
        return self.model_copy(update={"original_max_positions": original, "factor": max_seq_len / original})


class Llama3Scaling(Spec):
    """Llama-3.1 frequency-dependent interpolation (arXiv:2407.21783, §3.3)."""

    type: Literal["llama3"] = "llama3"
    factor: float = Field(gt=0)
    low_freq_factor: float = Field(1.0, gt=0)  # divides original_max_positions
    high_freq_factor: float = Field(4.0, gt=0)
    original_max_positions: int = Field(gt=0)

    def scaled(self, max_seq_len: int) -> "Llama3Scaling":
        # the original length must stay below the (scaled-down) context, as transformers checks
        return self.model_copy(update={"original_max_positions": max(1, int(max_seq_len // self.factor))})


# LongRoPE rescale factors (Phi-3: 1.0 to ~60) and attention factor (~1.2): far wider bounds, inside which
# 1 / factor and cos/sin × factor stay finite and normal in float32
LONGROPE_FACTOR_MIN, LONGROPE_FACTOR_MAX = 1e-6, 1e6


class LongRopeScaling(Spec):
    """LongRoPE (Ding et al., arXiv:2402.13753) as Phi-3 configures it (arXiv:2404.14219): frequency i
    divided by short_factor[i] while the sequence fits original_max_positions, by long_factor[i] once it
    is longer; cos/sin × attention_factor (Phi-3: sqrt(1 + ln(s) / ln(original)), s = context ratio)."""

    type: Literal["longrope"] = "longrope"
    short_factor: list[float] = Field(min_length=1)
    long_factor: list[float] = Field(min_length=1)
    original_max_positions: int = Field(gt=0)
    attention_factor: float = Field(gt=0, le=1e3)

    @model_validator(mode="after")
    def _check(self) -> "LongRopeScaling":
        if len(self.short_factor) != len(self.long_factor):
            raise ValueError(f"short_factor has {len(self.short_factor)} entries, long_factor {len(self.long_factor)}")
        for name in ("short_factor", "long_factor"):  # each divides a frequency, in float32
            bad = [f for f in getattr(self, name) if not LONGROPE_FACTOR_MIN <= f <= LONGROPE_FACTOR_MAX]
            if bad:
                raise ValueError(f"{name}: {bad[0]!r} is outside [{LONGROPE_FACTOR_MIN}, {LONGROPE_FACTOR_MAX}] "
                                 f"({len(bad)} such entries)")
        return self

    def scaled(self, max_seq_len: int) -> "LongRopeScaling":
        # the switch to the long factors stays inside the scaled-down context (a quarter of it)
        return self.model_copy(update={"original_max_positions": max(1, max_seq_len // 4)})

    def resampled(self, pairs: int) -> "LongRopeScaling":
        """The factor lists taken evenly down to `pairs` entries (a scaled-down model's rotary width)."""
        pick = lambda f: [f[i * len(f) // pairs] for i in range(pairs)]  # noqa: E731
        return self.model_copy(update={"short_factor": pick(self.short_factor), "long_factor": pick(self.long_factor)})


RopeScaling = Annotated[
    Union[LinearScaling, DynamicNTKScaling, YarnScaling, Llama3Scaling, LongRopeScaling], Field(discriminator="type")
]


class RopeSpec(PositionSpecBase):
    type: Literal["rope"] = "rope"
    theta: float = Field(10000.0, ge=1, description="rotary base; below 1 the frequencies exceed 1 (and overflow)")
    fraction: float = Field(1.0, gt=0, le=1, description="share of head_dim rotated (Pythia 0.25)")
    layout: Literal["halves", "interleaved"] = "halves"
    scaling: RopeScaling | None = None

    def scaled(self, s) -> "RopeSpec":
        scaling = self.scaling
        if isinstance(scaling, LongRopeScaling):  # one factor per rotary pair of the scaled heads
            scaling = scaling.resampled(self.rotary_dims(s.rotary_head_dim) // 2)
        rescale = getattr(scaling, "scaled", None)  # context-extension scalings tied to a length
        if scaling is None:
            return self
        return self.model_copy(update={"scaling": rescale(s.max_seq_len) if rescale else scaling})

    table_dtype: Literal["float32", "float16"] = Field(
        "float32", description="precision of inv_freq, angles and cos/sin (GLM-130B: float16)"
    )

    def rotary_dims(self, rotary_head_dim: int) -> int:
        return int(rotary_head_dim * self.fraction)

    @property
    def rope_layout(self) -> str:
        return self.layout

    def check(self, attention, where: str, layer: int) -> None:
        r = self.rotary_dims(attention.rotary_head_dim)
        if r % 2 or r == 0:
            raise ValueError(
                f"{where}.fraction: {self.fraction} × head dim {attention.rotary_head_dim} gives "
                f"{r} rotary dims in layer {layer}; it must be even and > 0"
            )
        if isinstance(self.scaling, LongRopeScaling) and len(self.scaling.long_factor) != r // 2:
            raise ValueError(f"{where}.scaling: {len(self.scaling.long_factor)} longrope factors for {r} rotary "
                             f"dims in layer {layer} (need {r // 2})")


class Rope2DSpec(PositionSpecBase):
    type: Literal["rope_2d"] = "rope_2d"
    theta: float = Field(10000.0, ge=1, description="rotary base; below 1 the frequencies exceed 1 (and overflow)")
    layout: Literal["halves_2d"] = Field("halves_2d", description="each half of the head rotates in halves layout")
    table_dtype: Literal["float32", "float16"] = Field(
        "float16", description="precision of inv_freq, angles and cos/sin (ChatGLM-6B: float16)"
    )

    def rotary_dims(self, rotary_head_dim: int) -> int:  # two position streams over the whole head
        return rotary_head_dim

    def check(self, attention, where: str, layer: int) -> None:
        super().check(attention, where, layer)
        r = self.rotary_dims(attention.rotary_head_dim)
        if r % 4 or r == 0:
            raise ValueError(f"{where}.type: 'rope_2d' needs a head dim that is a multiple of 4 (two rotary "
                             f"streams of even width); layer {layer} has head_dim {r}")

    @property
    def rope_layout(self) -> str:
        return self.layout


class AlibiSpec(PositionSpecBase):
    type: Literal["alibi"] = "alibi"
    score_bias: ClassVar[bool] = True
    max_bias: float = Field(8.0, gt=0, description="slopes 2^(-max_bias·h/n) (Press et al.)")
    scale: float = Field(1.0, gt=0, description="multiplies the bias (Falcon: 1/sqrt(head_dim))")
    table_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="bfloat16: slope and slope·position rounded as Falcon computes them"
    )


class RelativeBucketSpec(PositionSpecBase):
    type: Literal["relative"] = "relative"
    score_bias: ClassVar[bool] = True
    num_buckets: int = Field(32, gt=1)
    max_distance: int = Field(128, gt=1)
    bidirectional: bool = False

    @model_validator(mode="after")
    def _check(self) -> "RelativeBucketSpec":
        exact = self.num_buckets // (4 if self.bidirectional else 2)
        if exact < 1:  # T5's log-spaced buckets divide by the exact range
            raise ValueError(f"num_buckets: {self.num_buckets} leaves no exact bucket (needs ≥ "
                             f"{4 if self.bidirectional else 2} when bidirectional is {self.bidirectional})")
        if self.max_distance <= exact:
            raise ValueError(f"max_distance {self.max_distance} must exceed the exact range {exact}")
        return self

    def n_params(self, d_model: int, n_heads: int) -> int:
        return self.num_buckets * n_heads

    def scaled(self, s) -> "RelativeBucketSpec":
        # buckets × heads parameters; fewer buckets only shrink the exact range below max_distance
        return self.updated(num_buckets=min(self.num_buckets, 32), max_distance=min(self.max_distance, s.max_seq_len))


class RelativeEmbeddingSpec(PositionSpecBase):
    """DeBERTa's relative position embeddings (He et al., arXiv:2006.03654, §3.1; v2's log buckets):
    one table of 2k rows shared by every layer, row k + δ for the (bucketed) distance δ = i - j."""

    type: Literal["relative_embedding"] = "relative_embedding"
    relative_table: ClassVar[bool] = True
    max_relative_positions: int = Field(
        gt=0, le=MAX_SEQ_LEN, description="k without buckets; the log buckets' far end (HF: -1 means "
        "max_position_embeddings)")
    position_buckets: int | None = Field(
        None, gt=1, le=MAX_SEQ_LEN, description="k with log buckets (DeBERTa-v2/v3 position_buckets: 256); "
        "None: distances clipped to ±k exactly")
    norm: Component("norm") | None = Field(  # type: ignore[valid-type]
        None, description="norm on the table before use (norm_rel_ebd: layer_norm)")

    @model_validator(mode="after")
    def _check(self) -> "RelativeEmbeddingSpec":
        if self.position_buckets is not None and self.max_relative_positions - 1 <= self.position_buckets // 2:
            # the log buckets divide by log((max_relative_positions - 1) / (position_buckets // 2))
            raise ValueError(f"max_relative_positions: {self.max_relative_positions} must exceed "
                             f"position_buckets // 2 + 1 = {self.position_buckets // 2 + 1} (log buckets)")
        return self

    @property
    def span(self) -> int:
        """k: the table has rows for δ + k, δ in [-k, k)."""
        return self.position_buckets if self.position_buckets is not None else self.max_relative_positions

    def n_params(self, d_model: int, n_heads: int) -> int:
        return 2 * self.span * d_model + (self.norm.n_params(d_model) if self.norm is not None else 0)

    def scaled(self, s) -> "RelativeEmbeddingSpec":
        # 8 buckets (exact to ±4, log-spaced beyond) reaching out to the tiny context
        if self.position_buckets is None:
            return self.updated(max_relative_positions=min(self.max_relative_positions, s.max_seq_len))
        buckets = min(self.position_buckets, 8)
        return self.updated(position_buckets=buckets,
                            max_relative_positions=max(min(self.max_relative_positions, s.max_seq_len), buckets))


# --------------------------------------------------------------------------------- modules


class PositionEncoding(Module):
    """Base: contributes nothing. Subclasses override the hooks they use.

    Fixed tables (inv_freq, slopes) are plain attributes filled by `_build_tables`: never while the
    model is built on the meta device (a meta model allocates nothing), but when it moves to a real
    device (`to_empty`, `to`) or on the first call."""

    softmax_scale_mult: float = 1.0
    _tables_built: bool = True  # subclasses with tables start False

    def _build_tables(self) -> None:
        pass

    def _ensure_tables(self) -> None:
        if not self._tables_built:
            self._build_tables()
            self._tables_built = True

    def _defer_tables(self) -> None:
        """Build the tables now, unless this module is being built on the meta device."""
        self._tables_built = False
        if torch.get_default_device().type != "meta":
            self._ensure_tables()

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._ensure_tables()
        return out
    # slots at which keys cached so far become stale (LongRoPE switches factor sets): generation
    # re-feeds the whole sequence once when it reaches this length, as transformers' Phi-3 does
    refresh_cache_at: int | None = None

    def embed(self, positions: Tensor) -> Tensor | None:  # (B, T) -> (B, T, D)
        return None

    def rotary(self, positions: Tensor) -> tuple[Tensor, Tensor] | None:  # (B, T) -> 2 × (B, T, R)
        return None

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor | None:  # -> (B, H, T, S)
        return None

    def relative(self, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor] | None:
        """(table (R, D), row (B, T, S) of each query/key pair) for attention that projects the
        relative embeddings itself (DeBERTa); None: this encoding has none."""
        return None


@register("position", "none", NoPositionSpec)
class NoPosition(PositionEncoding):
    """No position information (the causal mask alone orders tokens)."""

    def __init__(self, spec: NoPositionSpec, *, d_model: int, n_heads: int, rotary_dim: int):
        super().__init__()


@register("position", "learned", LearnedPositionSpec)
class LearnedPosition(PositionEncoding):
    """Learned absolute positions (GPT, arXiv:2005.14165); row = position + offset."""

    def __init__(self, spec: LearnedPositionSpec, *, d_model: int, n_heads: int, rotary_dim: int):
        super().__init__()
        self.offset = spec.offset
        self.weight = nn.Parameter(torch.empty(spec.max_positions + spec.offset, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def embed(self, positions: Tensor) -> Tensor:
        return nn.functional.embedding(positions + self.offset, self.weight)


def sinusoid_table(positions: Tensor, dim: int, base: float, layout: str) -> Tensor:
    """Vaswani et al. (arXiv:1706.03762, §3.5): PE(p, 2i) = sin(p / base^(2i/d)), PE(p, 2i+1) = cos."""
    inv = base ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    angles = positions.float()[..., None] * inv  # (B, T, D/2)
    if layout == "concat":
        return torch.cat([angles.sin(), angles.cos()], dim=-1)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


@register("position", "sinusoidal", SinusoidalPositionSpec)
class SinusoidalPosition(PositionEncoding):
    """Fixed sinusoidal positions added to the embeddings."""

    def __init__(self, spec: SinusoidalPositionSpec, *, d_model: int, n_heads: int, rotary_dim: int):
        super().__init__()
        self.spec, self.d_model = spec, d_model

    def embed(self, positions: Tensor) -> Tensor:
        return sinusoid_table(positions, self.d_model, self.spec.base, self.spec.layout)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature term 0.1·m·ln(s) + 1 (arXiv:2309.00071, eq. 22)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def longrope_inv_freq(theta: float, factors: list[float], dim: int) -> Tensor:
    """1 / (factor_i · theta^(2i/dim)), in the order of operations of the Phi-3 reference."""
    if len(factors) != dim // 2:
        raise ValueError(f"position.scaling: {len(factors)} longrope factors for {dim} rotary dims (need {dim // 2})")
    ext = torch.tensor(factors, dtype=torch.float32, device="cpu")
    return 1.0 / (ext * theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim))


def rope_inv_freq(spec: RopeSpec, dim: int) -> tuple[Tensor, float]:
    """Inverse frequencies θ_i = theta^(-2i/dim) after the configured scaling, and the cos/sin factor."""
    # explicit cpu: the model may be built under a meta device context, these are not parameters
    inv = 1.0 / spec.theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim)
    s = spec.scaling
    if s is None or isinstance(s, DynamicNTKScaling):  # dynamic depends on the length: see RoPE.rotary
        return inv, 1.0
    if isinstance(s, LinearScaling):
        return inv / s.factor, 1.0
    if isinstance(s, LongRopeScaling):  # the short factors; RoPE.rotary switches to the long ones
        return longrope_inv_freq(spec.theta, s.short_factor, dim), s.attention_factor
    if isinstance(s, Llama3Scaling):
        wavelen = 2 * math.pi / inv
        low_wavelen = s.original_max_positions / s.low_freq_factor
        high_wavelen = s.original_max_positions / s.high_freq_factor
        # equal factors (Llama-4 Scout: 1.0, 1.0) leave no medium band: any finite ramp will do
        smooth = (s.original_max_positions / wavelen - s.low_freq_factor) / (
            (s.high_freq_factor - s.low_freq_factor) or 1.0
        )
        scaled = torch.where(wavelen > low_wavelen, inv / s.factor, inv)
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, (1 - smooth) * inv / s.factor + smooth * inv, scaled), 1.0
    # YaRN: interpolate low frequencies, keep high ones, ramp between (eq. 18-20)
    def correction_dim(rotations: float) -> float:
        return dim * math.log(s.original_max_positions / (rotations * 2 * math.pi)) / (2 * math.log(spec.theta))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / max(high - low, 1e-3)).clamp(0, 1)
    keep = 1 - ramp  # share of the original frequency; written as transformers does, bit for bit
    pos_freq = spec.theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim)
    inv = 1.0 / (s.factor * pos_freq) * (1 - keep) + inv * keep
    if s.attention_factor is not None:
        return inv, s.attention_factor
    if s.mscale and s.mscale_all_dim:
        return inv, yarn_mscale(s.factor, s.mscale) / yarn_mscale(s.factor, s.mscale_all_dim)
    return inv, yarn_mscale(s.factor)


@register("position", "rope", RopeSpec)
class RoPE(PositionEncoding):
    """Rotary embeddings (Su et al., arXiv:2104.09864): rotate pairs of q/k dims by p·θ_i.

    fraction: only the first fraction·head_dim dims rotate (GPT-NeoX/Pythia).
    layout: 'halves' pairs dim i with i + R/2 (GPT-NeoX, LLaMA-HF); 'interleaved' pairs 2i, 2i+1.
    scaling: linear / dynamic NTK / YaRN / Llama-3 / LongRoPE context extension.
    table_dtype: float16 reproduces checkpoints trained with a half-precision table (GLM-130B)."""

    def __init__(self, spec: RopeSpec, *, d_model: int, n_heads: int, rotary_dim: int):
        super().__init__()
        self.spec, self.dim = spec, rotary_dim
        s = spec.scaling
        if isinstance(s, LongRopeScaling):
            self.refresh_cache_at = s.original_max_positions + 1
        if isinstance(s, YarnScaling) and s.mscale_all_dim and s.mscale_softmax:
            self.softmax_scale_mult = yarn_mscale(s.factor, s.mscale_all_dim) ** 2
        self._defer_tables()

    def _build_tables(self) -> None:
        # plain attribute: no state-dict entry, never on the meta device
        self._inv_freq, self.cos_sin_scale = rope_inv_freq(self.spec, self.dim)
        if isinstance(self.spec.scaling, LongRopeScaling):
            self._long_inv_freq = longrope_inv_freq(self.spec.theta, self.spec.scaling.long_factor, self.dim)

    def rotary(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        self._ensure_tables()
        inv = self._inv_freq.to(positions.device)
        s = self.spec.scaling
        if isinstance(s, DynamicNTKScaling):
            # tensor math (float64 like the reference's Python floats): no host sync, compile-friendly
            seq_len = (positions.max().double() + 1).clamp(min=s.original_max_positions)
            base = self.spec.theta * (s.factor * seq_len / s.original_max_positions - (s.factor - 1)) ** (
                self.dim / (self.dim - 2)
            )
            ar = torch.arange(0, self.dim, 2, device=positions.device, dtype=torch.float32)
            inv = 1.0 / base.float() ** (ar / self.dim)
        if isinstance(s, LongRopeScaling):  # one factor set for the whole forward, by its longest position
            longer = positions.max() + 1 > s.original_max_positions
            inv = torch.where(longer, self._long_inv_freq.to(positions.device), inv)
        if self.spec.table_dtype == "float16":
            angles = positions.half()[..., None] * inv.half()  # (B, T, R/2), rounded like the original
        else:
            angles = positions.float()[..., None] * inv
        if self.spec.layout == "halves":
            angles = torch.cat([angles, angles], dim=-1)
        else:
            angles = angles.repeat_interleave(2, dim=-1)
        return angles.cos() * self.cos_sin_scale, angles.sin() * self.cos_sin_scale


@register("position", "rope_2d", Rope2DSpec)
class Rope2D(PositionEncoding):
    """GLM's 2-D rotary positions (Du et al., arXiv:2103.10360, §2.2; ChatGLM-6B position_encoding_2d).

    The first half of each head dim rotates by the position id (for [sop] and generated tokens: the
    mask token's index), the second half by the block position id (0 over the context, 1, 2, ... from
    [sop]); each half uses a rotary table of its own width head_dim/2 in halves layout.
    position_ids: (B, 2, T) [positions; block positions], or (B, T) with block positions 0.
    table_dtype: float16 reproduces the half-precision table of the released code."""

    def __init__(self, spec: Rope2DSpec, *, d_model: int, n_heads: int, rotary_dim: int):
        super().__init__()
        if rotary_dim % 4:
            raise ValueError(f"position.type 'rope_2d': head dim {rotary_dim} must be a multiple of 4 "
                             "(two rotary streams of even width)")
        self.spec, self.dim = spec, rotary_dim // 2  # table width per position stream
        self._defer_tables()

    def _build_tables(self) -> None:
        ar = torch.arange(0, self.dim, 2, dtype=torch.float32, device="cpu")
        self._inv_freq = 1.0 / self.spec.theta ** (ar / self.dim)  # plain attribute, never on meta

    def _table(self, positions: Tensor) -> tuple[Tensor, Tensor]:  # (B, T) -> 2 × (B, T, dim)
        self._ensure_tables()
        inv = self._inv_freq.to(positions.device)
        if self.spec.table_dtype == "float16":
            angles = positions.half()[..., None] * inv.half()  # fp16 product, as the released table
        else:
            angles = positions.float()[..., None] * inv
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def rotary(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        if positions.dim() == 2:
            positions = torch.stack([positions, torch.zeros_like(positions)], dim=1)
        (c1, s1), (c2, s2) = self._table(positions[:, 0]), self._table(positions[:, 1])
        return torch.cat([c1, c2], dim=-1), torch.cat([s1, s2], dim=-1)  # (B, T, head_dim)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, layout: str = "halves") -> Tensor:
    """Rotate the first R dims of x (B, H, T, Dh) by the angles behind cos/sin (B, T, R)."""
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    if layout == "halves":
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
    elif layout == "halves_2d":  # two blocks, each rotated in halves layout (GLM's 2-D positions)
        a1, a2, b1, b2 = rot.chunk(4, dim=-1)
        rotated = torch.cat([-a2, a1, -b2, b1], dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        rotated = torch.stack([-x2, x1], dim=-1).flatten(-2)
    out = rot * cos + rotated * sin
    return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out


def alibi_slopes(n_heads: int, max_bias: float = 8.0) -> Tensor:
    """ALiBi head slopes (Press et al., arXiv:2108.12409, §3): m_h = 2^(-max_bias·h/n).

    For n not a power of two: the slopes of the closest lower power of two 2^k, then every other
    slope of 2^(k+1) heads, as in the paper's reference code."""
    def geometric(n: int) -> list[float]:
        return [2.0 ** (-max_bias * (h + 1) / n) for h in range(n)]

    k = 2 ** math.floor(math.log2(n_heads))
    slopes = geometric(k) + geometric(2 * k)[0::2][: n_heads - k]
    return torch.tensor(slopes, dtype=torch.float32, device="cpu")


@register("position", "alibi", AlibiSpec)
class ALiBi(PositionEncoding):
    """ALiBi: score(i, j) += scale · m_h · (j - i); no position parameters.

    scale: Falcon adds the bias before its 1/sqrt(head_dim) score scaling.
    table_dtype: bfloat16 reproduces Falcon's table, bf16(bf16(m_h) · j) over key positions only
    (the softmax of each query row is unchanged by the missing -m_h · i)."""

    def __init__(self, spec: AlibiSpec, *, d_model: int, n_heads: int, rotary_dim: int):
        super().__init__()
        self.scale, self.bf16 = spec.scale, spec.table_dtype == "bfloat16"
        self.n_heads, self.max_bias = n_heads, spec.max_bias
        self._defer_tables()

    def _build_tables(self) -> None:
        self._slopes = alibi_slopes(self.n_heads, self.max_bias)

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        self._ensure_tables()
        slopes = self._slopes.to(q_pos.device)[None, :, None, None]
        if self.bf16:
            table = slopes.bfloat16() * k_pos[:, None, None, :].bfloat16()  # (B, H, 1, S), rounded
            return (table.float() * self.scale).expand(-1, -1, q_pos.shape[1], -1)
        distance = (k_pos[:, None, :] - q_pos[:, :, None]).float()  # (B, T, S)
        return slopes * distance[:, None] * self.scale


def relative_bucket(rel: Tensor, num_buckets: int, max_distance: int, bidirectional: bool) -> Tensor:
    """T5 buckets (Raffel et al., arXiv:1910.10683, §2.1): exact for small |j-i|, log-spaced to max_distance."""
    bucket = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (rel > 0).long() * num_buckets
        rel = rel.abs()
    else:
        rel = (-rel).clamp(min=0)
    exact = num_buckets // 2
    log_part = exact + (
        torch.log(rel.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    ).long()
    return bucket + torch.where(rel < exact, rel, log_part.clamp(max=num_buckets - 1))


@register("position", "relative", RelativeBucketSpec)
class RelativeBucketBias(PositionEncoding):
    """T5 relative position bias: a learned scalar per (bucket(j - i), head), shared by all layers."""

    def __init__(self, spec: RelativeBucketSpec, *, d_model: int, n_heads: int, rotary_dim: int):
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(torch.empty(spec.num_buckets, n_heads))
        nn.init.normal_(self.weight, std=0.02)

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        rel = k_pos[:, None, :] - q_pos[:, :, None]  # (B, T, S)
        b = relative_bucket(rel, self.spec.num_buckets, self.spec.max_distance, self.spec.bidirectional)
        return nn.functional.embedding(b, self.weight).permute(0, 3, 1, 2)  # (B, H, T, S)


def log_bucket(rel: Tensor, buckets: int, max_position: int) -> Tensor:
    """DeBERTa-v2's log buckets of distances rel = i - j (transformers' make_log_bucket_position, in
    float32 as it computes them): rel itself for |rel| ≤ mid = buckets // 2, beyond that
    sign(rel) · (mid + ⌈log(|rel| / mid) / log((max_position - 1) / mid) · (mid - 1)⌉)."""
    mid = buckets // 2
    far = torch.where(rel.abs() < mid, torch.full_like(rel, mid - 1), rel.abs())  # the exact range: unused
    log_pos = torch.ceil(torch.log(far / mid) / torch.log(torch.tensor((max_position - 1) / mid)) * (mid - 1)) + mid
    return torch.where(far <= mid, rel.float(), log_pos * torch.sign(rel)).long()


@register("position", "relative_embedding", RelativeEmbeddingSpec)
class RelativeEmbedding(PositionEncoding):
    """DeBERTa's shared relative-position table (arXiv:2006.03654, §3.1): P (2k, D), normed once per
    forward (norm_rel_ebd), row δ(i, j) = clamp(bucket(i - j) + k, 0, 2k - 1) for query i, key j."""

    def __init__(self, spec: RelativeEmbeddingSpec, *, d_model: int, n_heads: int, rotary_dim: int):
        super().__init__()
        self.spec, self.span = spec, spec.span
        self.weight = nn.Parameter(torch.empty(2 * spec.span, d_model))
        nn.init.normal_(self.weight, std=0.02)
        self.norm = build("norm", spec.norm, d_model) if spec.norm is not None else nn.Identity()

    def relative(self, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        rel = q_pos[:, :, None] - k_pos[:, None, :]  # (B, T, S): i - j
        if self.spec.position_buckets is not None:
            rel = log_bucket(rel, self.spec.position_buckets, self.spec.max_relative_positions)
        return self.norm(self.weight), (rel + self.span).clamp(0, 2 * self.span - 1)
