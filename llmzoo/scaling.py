"""Scale-down: a small config with the same structure as a full-size one, for tests and laptops.

Kept on purpose, because each one changes the computation a loader or kernel must get right:
attention class (MHA / GQA with groups > 1 / MQA), head_dim ≠ d_model / n_heads, a non-power-of-two
head count (ALiBi slopes), partial rotary, parallel blocks, biases, tied head, norm kind and
placement, sliding windows smaller than a test sequence, alternating local layers, MoE with several
experts, shared experts, group-limited routing that excludes groups, dense first layers, MLA ranks,
per-layer patterns (Gemma-3's 5:1 local/global, SmolLM3's NoPE every 4th layer: the tiny model keeps
enough layers for two of every layer kind), LongRoPE factor lists (resampled to the tiny rotary width).
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from .config import BlockSpec, ModelConfig, deep_merge
from .errors import ConfigError
from .params import count_params
from .zoo import get_config

PRESETS: dict[str, dict[str, int]] = {
    # head_dim, layers, vocab, longest sequence, window, experts
    "tiny": dict(head_dim=16, n_layers=4, vocab_size=256, max_seq_len=128, window=8, n_experts=8),
    "small": dict(head_dim=32, n_layers=6, vocab_size=1024, max_seq_len=512, window=64, n_experts=8),
}


# What each preset guarantees whatever the source sizes (tests/test_scaling.py checks every zoo
# entry and the fuzz suite random ones): total parameters at most this.
MAX_PARAMS = {"tiny": 50_000_000, "small": 500_000_000}
FF_RATIO_CAP = 8  # a scaled inner width (d_ff, d_expert) is at most this × the scaled d_model (published: ≤ 5.4×)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _round8(x: float) -> int:
    return max(8, int(round(x / 8)) * 8)


class Scaler:
    """What each spec's `scaled(s)` reads: heads(), width(), window(), the preset's head_dim,
    n_experts, max_seq_len, d_model (from the base attention's `scaled_d_model`) / full_d_model, and the
    scaled base attention's rotary_head_dim (LongRoPE resamples one factor per rotary pair)."""

    def __init__(self, c: ModelConfig, p: dict[str, int]):
        self.preset, self.full_d_model = p, c.d_model
        self.head_dim, self.n_experts, self.max_seq_len = p["head_dim"], p["n_experts"], p["max_seq_len"]
        self.d_model = c.block.attention.scaled_d_model(self)
        self.ratio = self.d_model / c.d_model
        self.rotary_head_dim = c.block.attention.scaled(self).rotary_head_dim

    def heads(self, n_heads: int, n_kv_heads: int) -> tuple[int, int]:
        """Tiny (n_heads, n_kv_heads) sharing KV heads the same way (MHA / GQA / MQA);
        non-power-of-two head counts stay so."""
        base = 4 if _is_pow2(n_heads) else 6
        if n_kv_heads == n_heads:
            return base, base
        if n_kv_heads == 1:
            return base, 1
        return 2 * min(n_heads // n_kv_heads, 4), 2

    def width(self, n: int) -> int:
        return min(_round8(n * self.ratio), FF_RATIO_CAP * self.d_model)

    def window(self, window: int | None) -> int | None:
        return None if window is None else min(window, self.preset["window"])

    def layers(self, selector: str | list[int], n_old: int, n_new: int) -> str | list[int]:
        if isinstance(selector, list):
            kept = [i for i in selector if i < n_new]
            return kept or [0]
        parts = [int(x) if x.strip() else None for x in selector.split(":")]
        start, stop = parts[0], parts[1]
        if stop is not None and 0 < stop < n_old:  # a leading run (dense first layers): keep a layer after it
            parts[1] = min(stop, n_new - 1)
        if start is not None and start >= n_new:
            parts[0] = n_new - 1
        return ":".join("" if x is None else str(x) for x in parts)


def _patch(base: dict, full: dict) -> dict:
    """The smallest override that deep_merge turns `base` into `full` with."""
    out = {}
    for key, value in full.items():
        old = base.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and value.get("type") == old.get("type"):
            sub = _patch(old, value)
            if sub:
                out[key] = sub
        elif value != old:
            out[key] = value
    return out


def n_layers_keeping_patterns(c: ModelConfig, at_least: int) -> int:
    """The fewest leading layers (≥ at_least) holding two of every distinct layer kind (or all of a
    kind with fewer), so a periodic pattern such as 5 local : 1 global survives the shrink."""
    kinds = [b.model_dump_json() for b in c.blocks]
    need = {k: min(2, kinds.count(k)) for k in set(kinds)}
    n = min(at_least, c.n_layers)
    while n < c.n_layers and any(kinds[:n].count(k) < m for k, m in need.items()):
        n += 1
    return n


def scale_down(source: str | dict | ModelConfig, preset: str = "tiny", **overrides: Any) -> ModelConfig:
    """A scaled-down copy of a config keeping every structural property listed in the module doc.

    overrides: top-level fields to set afterwards (e.g. n_layers=2, vocab_size=512)."""
    try:
        return _scale_down(source, preset, **overrides)
    except ValidationError as e:  # a spec's own scaled() refusing the scaled values
        raise ConfigError(f"scale_down({getattr(source, 'name', source)!r}, {preset!r}): {e}") from None


def _scale_down(source: str | dict | ModelConfig, preset: str = "tiny", **overrides: Any) -> ModelConfig:
    if preset not in PRESETS:
        raise ConfigError(f"scale preset {preset!r} is not one of {', '.join(PRESETS)}")
    c = get_config(source) if not isinstance(source, ModelConfig) else source
    p = PRESETS[preset]
    s = Scaler(c, p)
    d = copy.deepcopy(c.to_dict())
    n_layers = n_layers_keeping_patterns(c, p["n_layers"])
    d.update(
        name=f"{c.name}-{preset}",
        # the full model's notes and hub repo describe weights a random tiny model does not have
        reference={**d["reference"], "hf_repo": None},
        notes=f"{c.name} scaled down by llmzoo.scale_down (preset {preset!r})",
        published_params=None,
        published_active_params=None,
        vocab_size=min(c.vocab_size, p["vocab_size"]),
        d_model=s.d_model,
        n_layers=n_layers,
        max_seq_len=min(c.max_seq_len, p["max_seq_len"]),
        position=c.position.scaled(s).model_dump(mode="json"),
    )
    if d["embedding"].get("d_embed"):
        d["embedding"]["d_embed"] = s.d_model // 2
    base = c.block.scaled(s).model_dump(mode="json")
    d["block"] = base
    if c.encoder is not None:  # encoder-decoder (T5): the encoder stack scales like the decoder
        d["encoder"].update(n_layers=min(c.encoder.n_layers, p["n_layers"]),
                            position=c.encoder.position.scaled(s).model_dump(mode="json"),
                            block=c.encoder.block.scaled(s).model_dump(mode="json"))
    raw = c.block.model_dump()
    d["overrides"] = [  # each override's whole block scaled, written back as a patch on the scaled base
        {"layers": s.layers(o.layers, c.n_layers, n_layers),
         "block": _patch(base, BlockSpec.model_validate(deep_merge(raw, o.block)).scaled(s).model_dump(mode="json"))}
        for o in c.overrides
    ]
    if c.layer_conv is not None:
        d["layer_conv"] = {**c.layer_conv.scaled(s).model_dump(mode="json"),
                           "layer": min(c.layer_conv.layer, n_layers - 1)}
    if d.get("mtp"):
        d["mtp"]["n_layers"] = min(d["mtp"]["n_layers"], 2)
    d.update(overrides)
    try:
        out = ModelConfig.model_validate(d)
    except ValidationError as e:
        raise ConfigError(f"scale_down({c.name!r}, {preset!r}): the scaled config does not validate: {e}") from None
    if not overrides:
        n = count_params(out).total
        if n > MAX_PARAMS[preset]:
            raise ConfigError(f"scale_down({c.name!r}, {preset!r}): {n:,} parameters exceed the preset's "
                              f"bound of {MAX_PARAMS[preset]:,}")
    return out
