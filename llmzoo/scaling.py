"""Scale-down: a small config with the same structure as a full-size one, for tests and laptops.

Kept on purpose, because each one changes the computation a loader or kernel must get right:
attention class (MHA / GQA with groups > 1 / MQA), head_dim ≠ d_model / n_heads, a non-power-of-two
head count (ALiBi slopes), partial rotary, parallel blocks, biases, tied head, norm kind and
placement, sliding windows smaller than a test sequence, alternating local layers, MoE with several
experts, shared experts, group-limited routing that excludes groups, dense first layers, MLA ranks.
"""

from __future__ import annotations

import copy
from typing import Any

from .config import ModelConfig
from .zoo import get_config

PRESETS: dict[str, dict[str, int]] = {
    # head_dim, layers, vocab, longest sequence, window, experts
    "tiny": dict(head_dim=16, n_layers=4, vocab_size=256, max_seq_len=128, window=8, n_experts=8),
    "small": dict(head_dim=32, n_layers=6, vocab_size=1024, max_seq_len=512, window=64, n_experts=8),
}


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _heads(n_heads: int, n_kv: int, kind: str) -> tuple[int, int]:
    """Tiny (n_heads, n_kv_heads) of the same class; non-power-of-two head counts stay so."""
    base = 4 if _is_pow2(n_heads) else 6
    if kind == "mqa":
        return base, 1
    if kind == "gqa":
        group = n_heads // n_kv
        group = min(group, 4)
        return 2 * group, 2
    return base, base


def _round8(x: float) -> int:
    return max(8, int(round(x / 8)) * 8)


class _Scaler:
    def __init__(self, c: ModelConfig, p: dict[str, int]):
        self.c, self.p = c, p
        a = c.block.attention
        if a.type == "mla":
            self.h, self.kv, self.d = 4, 4, 64
            self.consistent = True
        else:
            self.h, self.kv = _heads(a.n_heads, a.n_kv_heads, a.type)
            self.consistent = a.n_heads * a.head_dim == c.d_model
            self.d = self.h * p["head_dim"]
        self.ratio = self.d / c.d_model

    def attention(self, a: dict[str, Any]) -> dict[str, Any]:
        a = dict(a)
        if a.get("window") is not None:
            a["window"] = min(a["window"], self.p["window"])
        if a.get("type", self.c.block.attention.type) == "mla":
            for key, value in dict(qk_nope_head_dim=16, qk_rope_head_dim=8, kv_lora_rank=24).items():
                if key in a:
                    a[key] = value
            if a.get("q_lora_rank") is not None:
                a["q_lora_rank"] = 32
            if "v_head_dim" in a:
                a["v_head_dim"] = 16 if a["v_head_dim"] == self.c.block.attention.qk_nope_head_dim else 12
            if "n_heads" in a:
                a["n_heads"] = self.h
            return a
        if "n_heads" in a:
            a["n_heads"], a["n_kv_heads"] = self.h, self.kv
        if "head_dim" in a:
            a["head_dim"] = self.p["head_dim"] if self.consistent else self.p["head_dim"] * 3 // 2
        return a

    def mlp(self, m: dict[str, Any]) -> dict[str, Any]:
        m = dict(m)
        if "d_ff" in m:
            m["d_ff"] = _round8(m["d_ff"] * self.ratio)
        if m.get("type") == "moe" or "n_experts" in m:
            e = min(m["n_experts"], self.p["n_experts"])
            g = min(m.get("n_groups", 1), 4)
            tg = max(1, min(m.get("topk_groups", 1), g // 2)) if g > 1 else 1
            m.update(n_experts=e, n_groups=g, topk_groups=tg)
            m["top_k"] = max(1, min(m["top_k"], tg * e // g, e - 1))
            m["d_expert"] = _round8(m["d_expert"] * self.ratio)
            m["n_shared_experts"] = min(m.get("n_shared_experts", 0), 2)
        return m

    def block(self, b: dict[str, Any]) -> dict[str, Any]:
        b = dict(b)
        if "attention" in b:
            b["attention"] = self.attention(b["attention"])
        if "mlp" in b:
            b["mlp"] = self.mlp(b["mlp"])
        if b.get("cross_attention"):
            b["cross_attention"] = self.attention(b["cross_attention"])
        return b

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


def scale_down(source: str | dict | ModelConfig, preset: str = "tiny", **overrides: Any) -> ModelConfig:
    """A scaled-down copy of a config keeping every structural property listed in the module doc.

    overrides: top-level fields to set afterwards (e.g. n_layers=2, vocab_size=512)."""
    if preset not in PRESETS:
        raise ValueError(f"scale preset {preset!r} is not one of {', '.join(PRESETS)}")
    c = get_config(source) if not isinstance(source, ModelConfig) else source
    p = PRESETS[preset]
    s = _Scaler(c, p)
    d = copy.deepcopy(c.to_dict())
    n_layers = min(c.n_layers, p["n_layers"])
    d.update(
        name=f"{c.name}-{preset}",
        published_params=None,
        published_active_params=None,
        vocab_size=min(c.vocab_size, p["vocab_size"]),
        d_model=s.d,
        n_layers=n_layers,
        max_seq_len=min(c.max_seq_len, p["max_seq_len"]),
    )
    if d["position"]["type"] == "learned":
        d["position"]["max_positions"] = min(d["position"]["max_positions"], p["max_seq_len"])
    if d["embedding"].get("d_embed"):
        d["embedding"]["d_embed"] = s.d // 2
    d["block"] = s.block(d["block"])
    if d.get("encoder"):  # encoder-decoder (T5): the encoder stack scales like the decoder
        d["encoder"].update(n_layers=min(c.encoder.n_layers, p["n_layers"]), block=s.block(d["encoder"]["block"]))
    d["overrides"] = [
        {"layers": s.layers(o["layers"], c.n_layers, n_layers), "block": s.block(o["block"])} for o in d["overrides"]
    ]
    d.update(overrides)
    return ModelConfig.model_validate(d)
