"""Classic decoders (issue 4): GPT-2 / GPT-Neo (GPT-3's shapes), BLOOM, OPT / Galactica, Pythia,
Falcon, MPT, GPT-J, and PaLM's pieces proved against the transformers families that share them.

Every expected value comes from transformers or from a closed-form count written here; the shared
tests (test_parity.py, test_hf_rules.py) cover each type's default tiny config, these cover the
other published layouts of the same types, the published tensor-name variants and the big counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import llmzoo
from llmzoo.config import ModelConfig
from llmzoo.hf import from_pretrained, get_adapter, save_pretrained
from llmzoo.hf.adapter import config_diff
from llmzoo.hf.loader import CheckpointError
from llmzoo.parity import compare, loud_init_, make_batch, shard_size_for
from variants import VARIANTS  # tests/variants.py

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

SEQ = 24  # longer than every local window below (GPT-Neo tiny: 5, 3)

# the published layouts of these types are rows of the one variant table (tests/variants.py), whose
# logits test_parity checks; here: their export round trip
CLASSIC_TYPES = ("gpt2", "gpt_neo", "bloom", "opt", "gpt_neox", "falcon", "mpt", "gptj")
CLASSIC = [name for name, (model_type, _) in VARIANTS.items() if model_type in CLASSIC_TYPES]


def reference_for(model_type: str, changes: dict, seed: int = 0) -> tuple[dict, torch.nn.Module]:
    hf = {**get_adapter(model_type).tiny_hf_config(), **changes}
    torch.manual_seed(seed)
    return hf, loud_init_(get_adapter(model_type).reference(hf), seed)


def save(model_type: str, ref: torch.nn.Module, folder: Path) -> Path:
    transformers.utils.logging.disable_progress_bar()
    get_adapter(model_type).save_reference(ref, str(folder), shard_size_for(ref, 4))
    return folder


def max_delta(ours, ref, vocab: int, seed: int = 1) -> tuple[float, float]:
    """(max |Δlogits|, max |reference logits|) at the real tokens of a padded batch (llmzoo.parity.compare)."""
    ids, mask = make_batch(vocab, SEQ, pad=5, seed=seed)
    report = compare(ours, ref, [], ids, mask)
    return report.max_abs, report.scale


@pytest.mark.parametrize("variant", CLASSIC)
def test_variant_export_round_trip(variant, tmp_path):
    model_type, changes = VARIANTS[variant]
    hf, ref = reference_for(model_type, changes)
    folder = save(model_type, ref, tmp_path / "ref")
    ours = from_pretrained(folder)

    # export: llmzoo → HF layout → transformers loads it → the same logits, the same config back
    out = save_pretrained(ours, tmp_path / "export", max_shard_size=shard_size_for(ours, 3))
    again = get_adapter(model_type).load_reference(str(out), torch.float32)
    delta, _ = max_delta(ours, again, hf["vocab_size"], seed=2)
    assert delta <= 1e-4, f"{variant}: exported checkpoint differs by {delta:.3g}"
    exported = json.loads((out / "config.json").read_text())
    assert config_diff(ours.config, get_adapter(model_type).to_config(exported)) == []


def test_clip_qkv_is_active_in_the_mpt_tiny_config(tmp_path):
    """The MPT tiny config clamps q/k/v at 1.5: the clamp changes the reference's logits, so the
    shared parity test does exercise it."""
    hf, ref = reference_for("mpt", {})
    _, unclipped = reference_for("mpt", {"attn_config": {**hf["attn_config"], "clip_qkv": None}})
    ids, mask = make_batch(hf["vocab_size"], SEQ, pad=5)
    with torch.no_grad():
        assert not torch.allclose(ref(input_ids=ids).logits, unclipped(input_ids=ids).logits, atol=1e-3)


# ------------------------------------------------------------------ published tensor-name variants


def rewrite(folder: Path, dest: Path, rename=lambda n: n, extra: dict | None = None, drop=()) -> Path:
    """Copy a checkpoint as one safetensors file, renaming tensors and adding buffers."""
    dest.mkdir()
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    state = {rename(n): t for n, t in state.items() if n not in drop}
    state.update(extra or {})
    save_file({n: t.contiguous() for n, t in state.items()}, dest / "model.safetensors")
    (dest / "config.json").write_text((folder / "config.json").read_text())
    return dest


def _mask_buffers(names: list[str], size: int) -> dict:
    causal = torch.tril(torch.ones(size, size, dtype=torch.bool))[None, None]
    out = {}
    for n in names:
        out[f"{n}.bias"] = causal.clone()
        out[f"{n}.masked_bias"] = torch.tensor(-1e4)
    return out


PUBLISHED = {
    # the original OpenAI release: no `transformer.` prefix, causal-mask buffers in every layer
    "gpt2": lambda hf: dict(rename=lambda n: n.removeprefix("transformer."),
                            extra=_mask_buffers([f"h.{i}.attn" for i in range(hf["n_layer"])], hf["n_positions"])),
    # EleutherAI's release keeps the (local) mask buffers
    "gpt_neo": lambda hf: dict(extra=_mask_buffers([f"transformer.h.{i}.attn.attention"
                                                    for i in range(hf["num_layers"])], hf["max_position_embeddings"])),
    "gptj": lambda hf: dict(extra=_mask_buffers([f"transformer.h.{i}.attn" for i in range(hf["n_layer"])],
                                                hf["n_positions"])),
    # bigscience/bloom-*: saved from BloomModel, no prefix and no head
    "bloom": lambda hf: dict(rename=lambda n: n.removeprefix("transformer."), drop=("lm_head.weight",)),
    # facebook/opt-*: saved from OPTModel, `decoder.` prefix
    "opt": lambda hf: dict(rename=lambda n: n.removeprefix("model."), drop=("lm_head.weight",)),
    # EleutherAI/pythia-*: mask buffers and rotary tables kept; the head also read as `lm_head`
    "gpt_neox": lambda hf: dict(
        rename=lambda n: "lm_head.weight" if n == "embed_out.weight" else n,
        extra={**_mask_buffers([f"gpt_neox.layers.{i}.attention" for i in range(hf["num_hidden_layers"])],
                               hf["max_position_embeddings"]),
               **{f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq": torch.ones(2)
                  for i in range(hf["num_hidden_layers"])}}),
}


@pytest.mark.parametrize("model_type", list(PUBLISHED))
def test_published_name_variants_load(model_type, tmp_path):
    hf, ref = reference_for(model_type, {})
    folder = save(model_type, ref, tmp_path / "saved")
    published = rewrite(folder, tmp_path / "published", **PUBLISHED[model_type](hf))
    assert sorted(load_file(published / "model.safetensors")) != sorted(
        n for f in folder.glob("*.safetensors") for n in load_file(f))
    ours = from_pretrained(published)
    delta, _ = max_delta(ours, ref, hf["vocab_size"])
    assert delta <= 1e-4
    # export writes the spelling transformers saves today
    out = save_pretrained(ours, tmp_path / "export")
    names = set(load_file(out / "model.safetensors")) if (out / "model.safetensors").exists() else set(
        json.loads((out / "model.safetensors.index.json").read_text())["weight_map"])
    saved = {n for f in folder.glob("*.safetensors") for n in load_file(f)}
    assert names <= saved | {"lm_head.weight"}


def test_a_stray_tensor_is_rejected_by_name(tmp_path):
    hf, ref = reference_for("gpt2", {})
    folder = save("gpt2", ref, tmp_path / "saved")
    bad = rewrite(folder, tmp_path / "bad", extra={"transformer.h.0.attn.rotary.inv_freq": torch.ones(4)})
    with pytest.raises(CheckpointError, match=r"transformer\.h\.0\.attn\.rotary\.inv_freq"):
        from_pretrained(bad)


def test_both_prefixes_at_once_are_rejected(tmp_path):
    """The original and the prefixed gpt2 spelling of one tensor: loading must not pick one silently."""
    hf, ref = reference_for("gpt2", {})
    folder = save("gpt2", ref, tmp_path / "saved")
    wte = ref.transformer.wte.weight.detach().clone()
    bad = rewrite(folder, tmp_path / "bad", extra={"wte.weight": wte})
    with pytest.raises(CheckpointError, match="written twice"):
        from_pretrained(bad)


@pytest.mark.parametrize("model_type, key, value", [
    ("bloom", "apply_residual_connection_post_layernorm", True),
    ("falcon", "apply_residual_connection_post_layernorm", True),
    ("mpt", "no_bias", False),
    ("mpt", "expansion_ratio", 3),
    ("mpt", "attn_config", {"alibi": True, "alibi_bias_max": 6}),  # transformers' MPT ignores it
    ("mpt", "attn_config", {"alibi": False}),
    ("gpt2", "add_cross_attention", True),
])
def test_unsupported_config_keys_are_named(model_type, key, value):
    hf = {**get_adapter(model_type).tiny_hf_config(), key: value}
    with pytest.raises(ValueError, match=key):
        get_adapter(model_type).to_config(hf)


def test_falcon_legacy_refinedweb_config_reads_as_falcon():
    """tiiuae's first config.json dialect (RefinedWeb / RefinedWebModel keys) gives the same config."""
    falcon = get_adapter("falcon")
    new = {"model_type": "falcon", "vocab_size": 96, "hidden_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 8, "num_kv_heads": 2, "new_decoder_architecture": True, "bias": False}
    old = {"model_type": "RefinedWeb", "vocab_size": 96, "hidden_size": 64, "n_layer": 2, "n_head": 8,
           "n_head_kv": 2, "bias": False, "parallel_attn": True}
    assert get_adapter("RefinedWeb") is falcon
    assert config_diff(falcon.to_config(new), falcon.to_config(old)) == []


# ------------------------------------------------------------------ GPT-3 and its public relatives


def test_gpt3_125m_shares_gpt2_small_and_gpt_neo_125m_shapes():
    """GPT-3 125M (paper), GPT-2 small (gpt2's config.json) and GPT-Neo 125M (EleutherAI's config.json):
    the same matrices in every layer; GPT-Neo's local layers are GPT-3's banded ones. Differences:
    GPT-2's 1024-row position table, GPT-Neo's bias-free q/k/v and unscaled scores."""
    gpt3 = llmzoo.get_config("gpt-3-125m")
    gpt2 = get_adapter("gpt2").to_config({"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12,
                                          "n_head": 12, "n_positions": 1024, "activation_function": "gelu_new"})
    neo = get_adapter("gpt_neo").to_config({
        "model_type": "gpt_neo", "vocab_size": 50257, "hidden_size": 768, "num_layers": 12, "num_heads": 12,
        "max_position_embeddings": 2048, "window_size": 256, "attention_types": [[["global", "local"], 6]],
        "activation_function": "gelu_new"})
    shapes = {}
    for name, cfg in (("gpt-3", gpt3), ("gpt-2", gpt2), ("gpt-neo", neo)):
        model = llmzoo.build(cfg, device="meta")
        shapes[name] = {n: tuple(p.shape) for n, p in model.named_parameters()}
    matrices = {n: s for n, s in shapes["gpt-3"].items() if len(s) == 2 and n != "positions.weight"}
    for other in ("gpt-2", "gpt-neo"):
        assert {n: shapes[other][n] for n in matrices} == matrices
    assert shapes["gpt-3"]["positions.weight"] == (2048, 768) == shapes["gpt-neo"]["positions.weight"]
    assert shapes["gpt-2"]["positions.weight"] == (1024, 768)
    assert set(shapes["gpt-3"]) - set(shapes["gpt-neo"]) == {f"blocks.{i}.attn.{p}.bias" for i in range(12)
                                                               for p in "qkv"}
    assert [b.attention.window for b in gpt3.blocks] == [b.attention.window for b in neo.blocks] == [None, 256] * 6
    assert neo.block.attention.softmax_scale == 1.0 and gpt3.block.attention.softmax_scale is None
    n3, n2, nn_ = (sum(torch.Size(s).numel() for s in shapes[k].values()) for k in ("gpt-3", "gpt-2", "gpt-neo"))
    assert n3 - n2 == 1024 * 768 and n3 - nn_ == 12 * 3 * 768


# ------------------------------------------------------------------ counts of the unreleased giants


def gpt_count(V: int, d: int, L: int, ctx: int, d_ff: int) -> int:
    """GPT-2/3 layout: embeddings + L × (4d² + 4d attention, 2·d·d_ff + d_ff + d MLP, 2 LayerNorms) + LN_f."""
    return V * d + ctx * d + L * (4 * d * d + 4 * d + 2 * d * d_ff + d_ff + d + 4 * d) + 2 * d


def palm_count(V: int, d: int, L: int, H: int, Dh: int, d_ff: int) -> int:
    """PaLM: tied embedding + L × (q, o: d·H·Dh each; MQA k, v: d·Dh each; SwiGLU 3·d·d_ff; one
    bias-free LayerNorm d) + final LayerNorm d."""
    return V * d + L * (2 * d * H * Dh + 2 * d * Dh + 3 * d * d_ff + d) + d


def bloom_count(V: int, d: int, L: int) -> int:
    """BLOOM: tied embedding + embedding LayerNorm + L × (4d² + 4d, 8d² + 5d, 2 LayerNorms) + LN_f."""
    return V * d + 2 * d + L * (4 * d * d + 4 * d + 8 * d * d + 5 * d + 4 * d) + 2 * d


@pytest.mark.parametrize("name, formula, published", [
    ("gpt-3-175b", lambda: gpt_count(50257, 12288, 96, 2048, 4 * 12288), 175.0e9),
    ("palm-540b", lambda: palm_count(256000, 18432, 118, 48, 256, 4 * 18432), 540.35e9),
    ("bloom-176b", lambda: bloom_count(250880, 14336, 70), 176.2e9),
])
def test_giant_counts_within_one_percent(name, formula, published):
    model = llmzoo.build(name, device="meta")
    n = sum(p.numel() for p in model.parameters())
    assert n == formula()
    assert abs(n / published - 1) < 0.01, f"{name}: {n / 1e9:.2f}B vs {published / 1e9}B"


# ------------------------------------------------------------------ PaLM, piece by piece


def palm_tiny() -> ModelConfig:
    from llmzoo.scaling import scale_down

    return scale_down("palm-540b", "tiny")


def test_palm_block_is_the_falcon7b_block(tmp_path):
    """PaLM's block is Falcon-7B's (parallel attention + MLP on one shared norm, multi-query, no
    linear biases, RoPE halves, tied embedding) up to four pieces Falcon cannot express: SwiGLU,
    bias-free LayerNorm, head_dim ≠ d_model / n_heads and the 1/sqrt(d_model) logit scale. With those
    four set to Falcon's choice, model_type falcon expresses the config without loss and transformers'
    Falcon gives the same logits; the four are proved on their own below and in the shared tests."""
    palm = palm_tiny()
    d = palm.to_dict()
    d["block"]["mlp"] = {"type": "mlp", "activation": "gelu", "d_ff": palm.block.mlp.d_ff, "bias": False}
    d["block"]["norm"]["bias"] = d["final_norm"]["bias"] = True
    d["block"]["attention"]["head_dim"] = palm.d_model // palm.n_heads
    d["head"]["scale"] = "none"
    variant = ModelConfig.model_validate(d)
    falcon = get_adapter("falcon")
    hf = falcon.export_config(variant)  # raises, naming the field, if falcon cannot express it
    assert hf["multi_query"] and hf["parallel_attn"] and not hf["new_decoder_architecture"] and not hf["bias"]
    ref = loud_init_(falcon.reference(hf), 0)
    ours = from_pretrained(save("falcon", ref, tmp_path / "palm-as-falcon"))
    kept = ("position", "block.parallel", "block.attention", "head.tied", "head.bias")
    same = [x for x in config_diff(palm, ours.config) if x.startswith(kept)]
    assert same == [f"block.attention.head_dim: {palm.block.attention.head_dim} became {palm.d_model // palm.n_heads}"]
    delta, scale = max_delta(ours, ref, palm.vocab_size)
    assert scale > 1.0 and delta <= 1e-4


@torch.no_grad()
def test_palm_swiglu_is_llamas_mlp():
    """PaLM's SwiGLU (Shazeer 2020; PaLM §2) against transformers' LlamaMLP with the same weights."""
    from transformers.models.llama.modeling_llama import LlamaConfig, LlamaMLP

    from llmzoo.registry import build

    palm = palm_tiny()
    ours = build("mlp", palm.block.mlp, palm.d_model)
    ref = LlamaMLP(LlamaConfig(hidden_size=palm.d_model, intermediate_size=palm.block.mlp.d_ff, hidden_act="silu",
                               mlp_bias=False))
    loud_init_(ref, 3)
    ours.gate.weight.copy_(ref.gate_proj.weight)
    ours.up.weight.copy_(ref.up_proj.weight)
    ours.down.weight.copy_(ref.down_proj.weight)
    x = torch.randn(2, 7, palm.d_model, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)


@torch.no_grad()
def test_palm_has_no_biases_and_a_bias_free_layernorm():
    """'No biases in any dense kernel or layer norm' and a shared input/output embedding (PaLM §2)."""
    model = llmzoo.build(palm_tiny())
    assert [n for n, _ in model.named_parameters() if n.endswith("bias")] == []
    assert model.head is None
    norm = model.blocks[0].attn_norm
    x = torch.randn(3, palm_tiny().d_model, generator=torch.Generator().manual_seed(0))
    norm.weight.copy_(torch.linspace(0.5, 1.5, x.shape[-1]))
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    want = (x - mean) / torch.sqrt(var + palm_tiny().block.norm.eps) * norm.weight
    torch.testing.assert_close(norm(x), want, rtol=0, atol=1e-5)
