"""Scale-down keeps each structural property, checked on the real zoo entries that have it."""

import pytest

import llmzoo
from llmzoo.scaling import scale_down

ZOO = {name: llmzoo.get_config(name) for name in llmzoo.list_models()}
DECODERS = {n: c for n, c in ZOO.items() if getattr(c, "encoder", None) is None}


def _knobs(scaling) -> dict:
    """A rope scaling's fields other than the two tied to the context length."""
    tied = {"yarn": ("factor", "original_max_positions"), "llama3": ("factor", "original_max_positions"),
            "longrope": ("original_max_positions", "short_factor", "long_factor")}.get(scaling.type, ())
    return {k: v for k, v in scaling.model_dump().items() if k not in tied}


def entries(has) -> list[str | None]:
    """Zoo entries with the property; [None] (a failing case) when none has it."""
    return [n for n, c in DECODERS.items() if has(c)] or [None]


def attn(c):
    return c.block.attention


def windows(c):
    return [getattr(b.attention, "window", None) for b in c.blocks]  # kinds without a window field have none


def layer_kinds(c) -> list[tuple]:
    """What distinguishes layers structurally: local or global, own rope, MLP kind."""
    return [(getattr(b.attention, "window", None) is None, b.position.model_dump_json() if b.position else None, b.mlp.type)
            for b in c.blocks]


def keeps_two_of_each_kind(c, t) -> bool:
    full, tiny = layer_kinds(c), layer_kinds(t)
    return set(tiny) == set(full) and all(tiny.count(k) >= min(2, full.count(k)) for k in set(full))


PROPERTIES = {
    "gqa keeps groups > 1": (
        lambda c: attn(c).type == "gqa",
        lambda c, t: attn(t).type == "gqa" and attn(t).n_heads // attn(t).n_kv_heads > 1,
    ),
    "mqa keeps one kv head": (
        lambda c: attn(c).type == "mqa",
        lambda c, t: attn(t).type == "mqa" and attn(t).n_kv_heads == 1 and attn(t).n_heads > 1,
    ),
    "head_dim != d_model / n_heads": (
        lambda c: attn(c).type != "mla" and attn(c).head_dim * attn(c).n_heads != c.d_model,
        lambda c, t: attn(t).head_dim * attn(t).n_heads != t.d_model,
    ),
    "partial rotary": (
        lambda c: c.position.type == "rope" and c.position.fraction < 1,
        lambda c, t: t.position.fraction == c.position.fraction and 0 < t.rotary_dim < attn(t).head_dim,
    ),
    "parallel block": (
        lambda c: c.block.parallel != "none",
        lambda c, t: t.block.parallel == c.block.parallel,
    ),
    "biases": (
        lambda c: getattr(attn(c), "qkv_bias", False) or getattr(c.block.mlp, "bias", False),
        lambda c, t: [getattr(x, k, None) for x, k in ((attn(t), "qkv_bias"), (attn(t), "o_bias"), (attn(t), "bias"),
                                                      (t.block.mlp, "bias"))]
        == [getattr(x, k, None) for x, k in ((attn(c), "qkv_bias"), (attn(c), "o_bias"), (attn(c), "bias"),
                                            (c.block.mlp, "bias"))],
    ),
    "tied head": (lambda c: c.head.tied, lambda c, t: t.head == c.head),
    "norm kind and placement": (
        lambda c: True,
        lambda c, t: (t.block.norm, t.block.placement, t.block.alpha, t.final_norm, t.embedding.norm)
        == (c.block.norm, c.block.placement, c.block.alpha, c.final_norm, c.embedding.norm),
    ),
    "window below a test sequence": (
        lambda c: any(windows(c)),
        lambda c, t: all((w is None) == (v is None) for w, v in zip(windows(t), windows(c)))
        and max(w for w in windows(t) if w) <= 8,
    ),
    "alternating local layers": (
        lambda c: len(set(windows(c))) > 1,
        lambda c, t: len(set(windows(t))) > 1,
    ),
    "non power of two alibi heads": (
        lambda c: c.position.type == "alibi" and c.n_heads & (c.n_heads - 1),
        lambda c, t: t.position.type == "alibi" and t.n_heads & (t.n_heads - 1) and t.n_heads > 2,
    ),
    "moe with several experts and shared experts": (
        lambda c: any(b.mlp.type == "moe" for b in c.blocks),
        lambda c, t: all(
            b.mlp.n_experts > b.mlp.top_k > 0 and bool(b.mlp.n_shared_experts) == bool(c.block.mlp.n_shared_experts)
            for b in t.blocks if b.mlp.type == "moe"
        ),
    ),
    "group-limited routing excludes groups": (
        lambda c: c.block.mlp.type == "moe" and c.block.mlp.n_groups > 1,
        lambda c, t: 1 < t.block.mlp.n_groups and t.block.mlp.topk_groups < t.block.mlp.n_groups
        and t.block.mlp.group_score == c.block.mlp.group_score,
    ),
    "dense first layers": (
        lambda c: len({b.mlp.type for b in c.blocks}) > 1,
        lambda c, t: t.blocks[0].mlp.type != "moe" and t.blocks[-1].mlp.type == "moe",
    ),
    "mla ranks": (
        lambda c: attn(c).type == "mla",
        lambda c, t: attn(t).type == "mla" and (attn(t).q_lora_rank is None) == (attn(c).q_lora_rank is None)
        and attn(t).kv_lora_rank < t.d_model,
    ),
    "per-layer pattern keeps two of each layer kind": (
        lambda c: len(set(layer_kinds(c))) > 1,
        keeps_two_of_each_kind,
    ),
    "qk norm": (
        lambda c: getattr(attn(c), "qk_norm", None) is not None,
        lambda c, t: (attn(t).qk_norm, attn(t).qk_norm_scope) == (attn(c).qk_norm, attn(c).qk_norm_scope),
    ),
    "soft-capping": (
        lambda c: c.head.softcap is not None or getattr(attn(c), "softcap", None) is not None,
        lambda c, t: (t.head.softcap, attn(t).softcap) == (c.head.softcap, attn(c).softcap),
    ),
    "rope scaling": (
        lambda c: c.position.type == "rope" and c.position.scaling is not None,
        # the kind and its knobs stay; a length-tied scaling (YaRN, Llama-3) re-ties to the tiny context
        lambda c, t: _knobs(t.position.scaling) == _knobs(c.position.scaling) and t.position.layout == c.position.layout
        and getattr(t.position.scaling, "original_max_positions", 0) <= t.max_seq_len
        and (t.position.scaling.type != "yarn"
             or t.position.scaling.factor * t.position.scaling.original_max_positions == pytest.approx(t.max_seq_len))
        and (t.position.scaling.type != "longrope"  # one factor per rotary pair
             or len(t.position.scaling.long_factor) == t.rotary_dim // 2),
    ),
}

CASES = [(prop, name) for prop, (has, _) in PROPERTIES.items() for name in entries(has)]


@pytest.mark.parametrize("prop, name", CASES, ids=[f"{p}-{n}" for p, n in CASES])
def test_scale_down_keeps(prop, name):
    assert name is not None, f"no zoo entry has the property '{prop}': the check would test nothing"
    config = DECODERS[name]
    tiny = scale_down(config)
    assert PROPERTIES[prop][1](config, tiny), f"{name}: tiny config lost '{prop}'"
    assert tiny.d_model <= 128 and tiny.n_layers <= 12 and tiny.vocab_size <= 256  # 12: two 5:1 periods


def test_scale_down_overrides_and_presets():
    tiny = scale_down("llama-2-70b", n_layers=2, vocab_size=100)
    assert (tiny.n_layers, tiny.vocab_size, tiny.name) == (2, 100, "llama-2-70b-tiny")
    with pytest.raises(ValueError, match="scale preset 'huge' is not one of tiny, small"):
        scale_down("llama-2-70b", preset="huge")


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_scale_down_is_small_for_every_zoo_entry(preset):
    """The stated bound (scaling.MAX_PARAMS: tiny ≤ 50 M, small ≤ 500 M) holds for every entry."""
    from llmzoo.scaling import MAX_PARAMS

    sizes = {name: llmzoo.count_params(scale_down(c, preset)).total for name, c in ZOO.items()}
    too_big = {n: s for n, s in sizes.items() if s > MAX_PARAMS[preset]}
    assert not too_big and len(sizes) == len(ZOO)


def test_scale_down_is_small_whatever_the_source_sizes():
    """An FFN 4000× wider than d_model, huge learned tables and T5 buckets still scale to tiny."""
    from llmzoo.scaling import MAX_PARAMS

    d = llmzoo.get_config("gpt-2-small").to_dict()
    d.update(d_model=64, vocab_size=2**24, max_seq_len=2**24)
    d["block"]["attention"].update(n_heads=1, n_kv_heads=1, head_dim=64)
    d["block"]["mlp"]["d_ff"] = 2**18
    d["position"].update(max_positions=2**24, offset=2**20)
    tiny = scale_down(d)
    assert llmzoo.count_params(tiny).total <= MAX_PARAMS["tiny"]
    t5 = llmzoo.get_config("t5-small").to_dict()
    t5["position"].update(num_buckets=2**20, max_distance=2**21)
    t5["encoder"]["position"].update(num_buckets=2**20, max_distance=2**21)
    assert llmzoo.count_params(scale_down(t5)).total <= MAX_PARAMS["tiny"]
