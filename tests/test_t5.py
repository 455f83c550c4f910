"""T5 (arXiv:1910.10683): the encoder-decoder schema, the zoo entries, and logits vs transformers."""

from __future__ import annotations

import pytest
import torch

import llmzoo
from llmzoo.config import ModelConfig
from llmzoo.parity import compare
from llmzoo.seq2seq import EncoderDecoderLM

T5_MODELS = llmzoo.list_models(family="t5")

# ------------------------------------------------------------------------------ the reference


def tiny_reference(ff: str, tied: bool, seed: int = 0):
    """A tiny transformers T5 (2 encoder, 3 decoder layers) with every tensor re-drawn loudly."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(
        vocab_size=96, d_model=32, d_kv=12, d_ff=40, num_layers=2, num_decoder_layers=3, num_heads=3,
        relative_attention_num_buckets=8, relative_attention_max_distance=12,  # log buckets within 16 tokens
        feed_forward_proj=ff, tie_word_embeddings=tied, dropout_rate=0.0,
    )
    torch.manual_seed(seed)
    ref = T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1 + 0.6 * (torch.rand_like(p) - 0.5))  # 1 ± 0.3
            elif "relative_attention_bias" in name or name == "shared.weight":
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, p.shape[1] ** -0.5)  # ~ 1/sqrt(fan_in)
    return ref


def config_from_reference(ref) -> ModelConfig:
    """The llmzoo config of a transformers T5, written out by hand from its config (no adapter)."""
    c = ref.config
    gated = c.is_gated_act
    act = {"relu": "relu", "gelu_new": "gelu_tanh"}[c.dense_act_fn]
    mlp = {"type": "glu" if gated else "mlp", "activation": act, "d_ff": c.d_ff, "bias": False}
    attn = {"type": "mha", "n_heads": c.num_heads, "head_dim": c.d_kv, "softmax_scale": 1.0}
    norm = {"type": "rmsnorm", "eps": c.layer_norm_epsilon, "round_before_weight": True}
    rel = {"type": "relative", "num_buckets": c.relative_attention_num_buckets,
           "max_distance": c.relative_attention_max_distance}
    return ModelConfig.model_validate(dict(
        name="t5-tiny", family="t5", vocab_size=c.vocab_size, d_model=c.d_model, n_layers=c.num_decoder_layers,
        max_seq_len=64, position={**rel, "bidirectional": False},
        block={"placement": "pre", "norm": norm, "attention": attn, "cross_attention": attn, "mlp": mlp},
        final_norm=norm,
        head={"tied": True, "scale": "inv_sqrt_d_model" if c.scale_decoder_outputs else "none"},
        encoder={"n_layers": c.num_layers, "position": {**rel, "bidirectional": True},
                 "block": {"placement": "pre", "norm": norm, "attention": attn, "mlp": mlp}, "final_norm": norm},
    ))


def hand_state_dict(ref) -> dict[str, torch.Tensor]:
    """transformers T5 tensors renamed to llmzoo's names, one line per kind of tensor."""
    mlp = {"wi": "up", "wi_0": "gate", "wi_1": "up", "wo": "down"}
    out = {}
    for name, t in ref.state_dict().items():
        parts = name.split(".")
        if name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
            continue  # all three are shared.weight in transformers 5
        if name == "shared.weight":
            out["embed.weight"] = t
        elif parts[1] == "final_layer_norm":
            out[("encoder." if parts[0] == "encoder" else "") + "final_norm.weight"] = t
        else:
            stack, i, sub = parts[0], parts[2], int(parts[4])
            prefix = ("encoder." if stack == "encoder" else "") + f"blocks.{i}."
            kind = parts[5]
            if kind == "relative_attention_bias" or parts[6] == "relative_attention_bias":
                out[("encoder." if stack == "encoder" else "") + "positions.weight"] = t
            elif kind == "SelfAttention":
                out[prefix + f"attn.{parts[6]}.weight"] = t
            elif kind == "EncDecAttention":
                out[prefix + f"cross_attn.{parts[6]}.weight"] = t
            elif kind == "DenseReluDense":
                out[prefix + f"mlp.{mlp[parts[6]]}.weight"] = t
            elif kind == "layer_norm":
                last = sub == (1 if stack == "encoder" else 2)
                out[prefix + ("mlp_norm" if last else "cross_attn_norm" if sub == 1 else "attn_norm") + ".weight"] = t
    return out


def padded_batch(vocab: int, seed: int = 1):
    """Two right-padded source sequences (16 and 11 tokens) and target sequences (14 and 9 tokens)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, vocab, (2, 16), generator=g)
    tgt = torch.randint(2, vocab, (2, 14), generator=g)
    src_mask = torch.ones_like(src)
    tgt_mask = torch.ones_like(tgt)
    src_mask[1, 11:] = 0
    tgt_mask[1, 9:] = 0
    return src.masked_fill(src_mask == 0, 0), tgt.masked_fill(tgt_mask == 0, 0), src_mask, tgt_mask


def assert_logits_match(ours: torch.nn.Module, ref, atol: float = 1e-4) -> float:
    """llmzoo.parity.compare on a padded batch whose source and target differ in length and padding."""
    src, tgt, src_mask, tgt_mask = padded_batch(ref.config.vocab_size)
    report = compare(ours, ref, [], src, src_mask, decoder_input_ids=tgt, decoder_attention_mask=tgt_mask)
    assert report.scale > 1.0, "reference logits too small to test anything"
    assert report.max_abs <= atol, f"max |Δlogits| = {report.max_abs:.3g} > {atol}"
    return report.max_abs


# ------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("ff,tied", [("relu", True), ("gated-gelu", False)], ids=["v1.0", "v1.1"])
def test_hand_copied_weights_match_transformers(ff, tied):
    ref = tiny_reference(ff, tied)
    cfg = config_from_reference(ref)
    ours = llmzoo.build(cfg)
    assert isinstance(ours, EncoderDecoderLM)
    state = hand_state_dict(ref)
    assert set(state) == set(ours.state_dict()), set(state) ^ set(ours.state_dict())
    ours.load_state_dict(state, strict=True)
    assert_logits_match(ours.eval(), ref)


def test_decoder_is_causal_and_encoder_bidirectional():
    cfg = llmzoo.scale_down("t5-small")
    model = llmzoo.build(cfg).eval()
    src, tgt, _, _ = padded_batch(cfg.vocab_size)
    with torch.no_grad():
        base = model(src, tgt)
        later_tgt = tgt.clone()
        later_tgt[:, 8:] = (later_tgt[:, 8:] + 1) % cfg.vocab_size
        assert torch.equal(model(src, later_tgt)[:, :8], base[:, :8])  # no decoder position sees its future
        late_src = src.clone()
        late_src[:, -1] = (late_src[:, -1] + 1) % cfg.vocab_size
        memory, late_memory = model.encode(src), model.encode(late_src)
        assert not torch.allclose(memory[:, 0], late_memory[:, 0])  # the first source token sees the last


def test_post_norm_encoder_decoder_matches_bart():
    """The other wiring of EncoderDecoderLM, against transformers' BART (hand-mapped, no adapter):
    post-norm blocks, learned positions per stack (offset 2), an embedding LayerNorm per stack,
    sqrt(d) embedding scale, biases everywhere, tied head with a logits bias."""
    from transformers import BartConfig, BartForConditionalGeneration

    from llmzoo.parity import loud_init_

    hf = BartConfig(vocab_size=96, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                    decoder_attention_heads=4, encoder_ffn_dim=40, decoder_ffn_dim=40, max_position_embeddings=40,
                    activation_function="gelu", scale_embedding=True, dropout=0.0, attention_dropout=0.0,
                    activation_dropout=0.0, tie_word_embeddings=True)
    ref = loud_init_(BartForConditionalGeneration(hf).eval(), seed=7)
    with torch.no_grad():
        ref.final_logits_bias.normal_(0.0, 0.5)
    norm = {"type": "layernorm", "eps": 1e-5, "bias": True}
    attn = {"type": "mha", "n_heads": 4, "head_dim": 8, "qkv_bias": True, "o_bias": True}
    mlp = {"type": "mlp", "d_ff": 40, "activation": "gelu", "bias": True}
    learned = {"type": "learned", "max_positions": 40, "offset": 2}
    cfg = ModelConfig.model_validate(dict(
        name="bart-tiny", family="bart", vocab_size=96, d_model=32, n_layers=3, max_seq_len=40, position=learned,
        embedding={"scale": "sqrt_d_model", "norm": norm},
        block={"placement": "post", "norm": norm, "attention": attn, "cross_attention": attn, "mlp": mlp},
        final_norm=None, head={"tied": True, "bias": True},
        encoder={"n_layers": 2, "position": learned, "final_norm": None,
                 "block": {"placement": "post", "norm": norm, "attention": attn, "mlp": mlp}},
    ))
    ours = llmzoo.build(cfg)
    names = {"self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v",
             "self_attn.out_proj": "attn.o", "self_attn_layer_norm": "attn_norm", "encoder_attn.q_proj": "cross_attn.q",
             "encoder_attn.k_proj": "cross_attn.k", "encoder_attn.v_proj": "cross_attn.v",
             "encoder_attn.out_proj": "cross_attn.o", "encoder_attn_layer_norm": "cross_attn_norm",
             "fc1": "mlp.up", "fc2": "mlp.down", "final_layer_norm": "mlp_norm",
             "embed_positions": "positions", "layernorm_embedding": "embed_norm"}
    state = {"embed.weight": ref.model.shared.weight, "head_bias": ref.final_logits_bias[0]}
    for name, t in ref.model.named_parameters():
        stack, _, rest = name.partition(".")
        if stack == "shared" or rest.startswith("embed_tokens"):
            continue
        prefix = "encoder." if stack == "encoder" else ""
        if rest.startswith("layers."):
            _, i, rest = rest.split(".", 2)
            prefix += f"blocks.{i}."
        module, leaf = rest.rsplit(".", 1)
        state[prefix + names[module] + "." + leaf] = t
    ours.load_state_dict(state, strict=True)
    assert_logits_match(ours.eval(), ref)


# ------------------------------------------------------------------- the `t5` adapter (sharded checkpoint)


def saved_reference(ref, folder) -> list:
    """Save with transformers into ≥ 3 safetensors shards; returns the shard files."""
    total = sum(t.numel() * t.element_size() for t in ref.state_dict().values())
    ref.save_pretrained(folder, max_shard_size=total // 4)
    shards = sorted(folder.glob("*.safetensors"))
    assert len(shards) >= 3, shards
    return shards


@pytest.mark.parametrize("ff,tied", [("relu", True), ("gated-gelu", False)], ids=["v1.0", "v1.1"])
def test_sharded_checkpoint_matches_transformers(ff, tied, tmp_path):
    ref = tiny_reference(ff, tied, seed=3)
    saved_reference(ref, tmp_path)
    ours = llmzoo.from_pretrained(tmp_path)
    assert isinstance(ours, EncoderDecoderLM)
    assert ours.config.head.scale == ("inv_sqrt_d_model" if tied else "none")
    assert ours.config.encoder.n_layers == 2 and ours.config.n_layers == 3
    assert_logits_match(ours, ref)


def test_hub_style_untied_checkpoint(tmp_path):
    """A v1.1 / Flan-T5 hub checkpoint: `tie_word_embeddings: false` and its own lm_head.weight."""
    import json

    from safetensors.torch import save_file

    ref = tiny_reference("gated-gelu", False, seed=4)
    with torch.no_grad():
        ref.lm_head.weight = torch.nn.Parameter(torch.randn_like(ref.shared.weight) * 0.2)  # untie, as the hub's
    state = {k: v.contiguous() for k, v in ref.state_dict().items() if "embed_tokens" not in k}
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    hf = {k: v for k, v in ref.config.to_dict().items() if k != "scale_decoder_outputs"}
    (tmp_path / "config.json").write_text(json.dumps({**hf, "tie_word_embeddings": False}))
    ours = llmzoo.from_pretrained(tmp_path)
    assert not ours.config.head.tied and ours.config.head.scale == "none"
    assert_logits_match(ours, ref)


def test_export_loads_in_transformers(tmp_path):
    from transformers import T5ForConditionalGeneration

    ref = tiny_reference("relu", True, seed=5)
    saved_reference(ref, tmp_path / "hf")
    ours = llmzoo.from_pretrained(tmp_path / "hf")
    llmzoo.save_pretrained(ours, tmp_path / "out", max_shard_size="8KB")
    again = T5ForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    assert_logits_match(ours, again)


def test_checkpoint_of_the_other_ffn_kind_is_an_error(tmp_path):
    """config.json says ReLU (wi), the shards hold a gated FFN (wi_0, wi_1): every tensor is named."""
    import json

    ref = tiny_reference("gated-gelu", True, seed=6)
    saved_reference(ref, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "feed_forward_proj": "relu"}))
    with pytest.raises(ValueError) as e:
        llmzoo.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in msg
    assert "encoder.blocks.0.mlp.up.weight" in msg  # missing on our side


def test_adapter_config_round_trip():
    from llmzoo.hf import get_adapter

    adapter = get_adapter("t5")
    for name in T5_MODELS:
        cfg = llmzoo.get_config(name)
        back = adapter.to_config(adapter.export_config(cfg))  # export_config checks the round trip
        assert back.encoder == cfg.encoder and back.block == cfg.block and back.head == cfg.head


# ------------------------------------------------------------------------------- zoo and schema


@pytest.mark.parametrize("name", T5_MODELS)
def test_zoo_entry_builds_on_meta(name):
    model = llmzoo.build(name, device="meta")
    assert isinstance(model, EncoderDecoderLM)
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    # T5 v1.0 has no biases: embedding + per layer 4·d·h·dk attention (decoder ×2), 2·d·d_ff FFN, 2 or 3 norms
    d, a, f = cfg.d_model, cfg.block.attention, cfg.block.mlp.d_ff
    attn = 4 * d * a.n_heads * a.head_dim
    expected = (
        cfg.vocab_size * d
        + cfg.encoder.n_layers * (attn + 2 * d * f + 2 * d)
        + cfg.n_layers * (2 * attn + 2 * d * f + 3 * d)
        + 2 * d  # final norms
        + 2 * cfg.position.num_buckets * a.n_heads  # one relative bias table per stack
    )
    assert n == expected
    assert abs(n - cfg.published_params) / cfg.published_params < 0.06


def _t5_dict(**changes):
    d = llmzoo.get_config("t5-small").to_dict()
    for key, value in changes.items():
        target = d
        *path, last = key.split(".")
        for p in path:
            target = target[p]
        target[last] = value
    return d


def test_cross_attention_needs_an_encoder():
    with pytest.raises(ValueError, match="needs an `encoder` section"):
        ModelConfig.model_validate(_t5_dict(encoder=None))


def test_encoder_needs_cross_attention_in_every_decoder_layer():
    with pytest.raises(ValueError, match="every decoder layer needs one"):
        ModelConfig.model_validate(_t5_dict(**{"block.cross_attention": None}))


def test_encoder_blocks_have_no_cross_attention():
    attn = llmzoo.get_config("t5-small").block.cross_attention.model_dump()
    with pytest.raises(ValueError, match="encoder blocks have no cross-attention"):
        ModelConfig.model_validate(_t5_dict(**{"encoder.block.cross_attention": attn}))


def test_cross_attention_rejects_parallel_blocks():
    with pytest.raises(ValueError, match="cross_attention needs placement"):
        ModelConfig.model_validate(_t5_dict(**{"block.parallel": "shared_norm"}))


def test_kv_cache_counts_self_and_cross_attention():
    cfg = llmzoo.get_config("t5-small")
    a = cfg.block.attention
    per_token = 2 * a.n_heads * a.head_dim  # K and V, fp32: 4 bytes
    # each decoder layer caches its own 16 target tokens and the cross-attention K/V of 16 source tokens
    assert llmzoo.kv_cache_bytes(cfg, seq_len=16, dtype="float32") == cfg.n_layers * per_token * (16 + 16) * 4


def test_rmsnorm_rounds_like_t5layernorm_in_bf16():
    """round_before_weight: x/rms(x) is rounded to bf16, then multiplied by g in bf16, bit for bit."""
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    from llmzoo.norms import RMSNorm, RMSNormSpec

    g = torch.Generator().manual_seed(0)
    ref = T5LayerNorm(48, eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(1 + 0.3 * torch.randn(48, generator=g))
    ref = ref.to(torch.bfloat16)
    x = (3 * torch.randn(4, 7, 48, generator=g)).to(torch.bfloat16)
    outs = {}
    for rounds in (True, False):
        ours = RMSNorm(RMSNormSpec(eps=1e-6, round_before_weight=rounds), 48).to(torch.bfloat16)
        with torch.no_grad():
            ours.weight.copy_(ref.weight)
            outs[rounds] = ours(x)
    with torch.no_grad():
        want = ref(x)
    assert torch.equal(outs[True], want)
    assert not torch.equal(outs[False], want)  # single rounding differs: the field is what matches


def test_cross_attention_rejects_self_attention_only_fields():
    with pytest.raises(ValueError, match="apply to self-attention only"):
        ModelConfig.model_validate(_t5_dict(**{"block.cross_attention.window": 8}))


def test_hub_config_json_of_t5_11b_is_the_zoo_entry():
    """google-t5/t5-11b's config.json (keys as published on the hub) converts to the zoo's t5-11b."""
    from llmzoo.hf import get_adapter
    from llmzoo.hf.adapter import config_diff

    hub = {"architectures": ["T5WithLMHeadModel"], "d_ff": 65536, "d_kv": 128, "d_model": 1024,
           "decoder_start_token_id": 0, "dropout_rate": 0.1, "eos_token_id": 1, "initializer_factor": 1.0,
           "is_encoder_decoder": True, "layer_norm_epsilon": 1e-06, "model_type": "t5", "n_positions": 512,
           "num_heads": 128, "num_layers": 24, "output_past": True, "pad_token_id": 0,
           "relative_attention_num_buckets": 32, "vocab_size": 32128}
    cfg = get_adapter("t5").to_config(hub)
    assert config_diff(llmzoo.get_config("t5-11b"), cfg) == []


# ------------------------------------------------------------------------------ generation


def hub_style_folder(ff: str, tied: bool, folder, seed: int):
    """A transformers T5 saved as the hub holds it: v1.0 tied (rescaled head), v1.1 / Flan-T5 untied
    (`tie_word_embeddings: false`, its own lm_head.weight, no rescale)."""
    import json

    from safetensors.torch import save_file

    ref = tiny_reference(ff, tied, seed=seed)
    if not tied:
        with torch.no_grad():
            ref.lm_head.weight = torch.nn.Parameter(torch.randn_like(ref.shared.weight) * 0.3)
    state = {k: v.contiguous() for k, v in ref.state_dict().items() if "embed_tokens" not in k}
    if tied:
        state.pop("lm_head.weight", None)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    hf = {k: v for k, v in ref.config.to_dict().items() if k != "scale_decoder_outputs"}
    (folder / "config.json").write_text(json.dumps({**hf, "tie_word_embeddings": tied}))
    return ref


def source_batch(vocab: int, seed: int = 2):
    """Two source rows, the second right-padded (T5 pads on the right, transformers does too)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, vocab, (2, 13), generator=g)
    mask = torch.ones_like(src)
    mask[1, 9:] = 0
    return src.masked_fill(mask == 0, 0), mask


STYLES = {"t5-v1.0": ("relu", True), "flan-t5": ("gated-gelu", False)}


def reference_generate(ref, src, mask, **kw):
    """transformers' greedy generate. Its default cache sizes itself by the encoder's layer count
    (num_layers 2 < num_decoder_layers 3 here), so give it caches that grow per layer (as
    past_key_values: transformers 4.x and 5.x both read it; 5.x also warns it will become `cache`)."""
    import warnings

    from transformers import DynamicCache, EncoderDecoderCache

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return ref.generate(input_ids=src, attention_mask=mask, do_sample=False, pad_token_id=0,
                            decoder_start_token_id=0, past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()),
                            **kw)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_greedy_tokens_equal_transformers_generate(style, tmp_path):
    from llmzoo.generation import generate

    ff, tied = STYLES[style]
    ref = hub_style_folder(ff, tied, tmp_path, seed=8)
    ours = llmzoo.from_pretrained(tmp_path).eval()
    assert ours.config.head.tied == tied
    src, mask = source_batch(ours.config.vocab_size)
    n = 12
    want = reference_generate(ref, src, mask, max_new_tokens=n, min_new_tokens=n, eos_token_id=None)
    got = generate(ours, src, mask, max_new_tokens=n, decoder_start_token_id=0)
    assert got.shape == (2, 1 + n) and torch.equal(got, want), (got, want)
    # A tied random model keeps repeating a token (its own embedding dominates the tied head), so also
    # greedy under CTRL's repetition penalty: every step then differs and checks the cache's slots
    want = reference_generate(ref, src, mask, max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                              repetition_penalty=3.0)
    got = generate(ours, src, mask, max_new_tokens=n, decoder_start_token_id=0, repetition_penalty=3.0)
    assert all(len(set(row[1:].tolist())) > n // 2 for row in got), got
    assert torch.equal(got, want), (got, want)
    # with an eos id: the token our row 0 emits at step 4 ends it there, then pad (0) as transformers does
    eos = int(got[0, 4])
    want = reference_generate(ref, src, mask, max_new_tokens=n, eos_token_id=eos, repetition_penalty=3.0)
    got = generate(ours, src, mask, max_new_tokens=n, eos_token_id=eos, pad_token_id=0, repetition_penalty=3.0)
    assert torch.equal(got, want[:, : got.shape[1]]) and (want[:, got.shape[1]:] == 0).all(), (got, want)
    assert got[0, 4] == eos and (got[0, 5:] == 0).all()


def test_cached_decoding_equals_full_decode_and_projects_memory_once():
    from llmzoo.cache import StaticCache

    ref = tiny_reference("gated-gelu", True, seed=9)
    cfg = config_from_reference(ref)
    model = llmzoo.build(cfg).eval()
    model.load_state_dict(hand_state_dict(ref), strict=True)
    src, mask = source_batch(cfg.vocab_size)
    tgt = torch.randint(2, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(3))
    calls = []
    hooks = [b.cross_attn.k.register_forward_hook(lambda *a: calls.append(1)) for b in model.blocks]
    with torch.no_grad():
        full = model(src, tgt, attention_mask=mask)  # (B, 7, vocab)
        calls.clear()
        decoding = model.decoding(src, mask)
        cache = StaticCache.for_model(model, 2, 8)
        steps = [decoding(tgt[:, :3], cache=cache)] + [decoding(tgt[:, t : t + 1], cache=cache) for t in range(3, 7)]
    for h in hooks:
        h.remove()
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=0)
    assert len(calls) == len(model.blocks)  # the memory's keys: once per layer per source, not per step


def test_cli_generate_on_a_t5_folder(tmp_path, capsys):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors
    from transformers import T5Config, T5ForConditionalGeneration

    from llmzoo.cli import main
    from llmzoo.generation import generate
    from llmzoo.parity import loud_init_
    from llmzoo.tokenizer import Tokenizer

    cfg = T5Config(vocab_size=260, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_decoder_layers=2, num_heads=4,
                   feed_forward_proj="gated-gelu", tie_word_embeddings=True, dropout_rate=0.0,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    ref = loud_init_(T5ForConditionalGeneration(cfg).eval(), seed=1)
    ref.save_pretrained(tmp_path)
    # byte-level tokens 2..257 (0 pad, 1 eos, as T5's ids), eos appended like T5's post-processor
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate(alphabet)}}
    tok = HFTokenizer(models.BPE(vocab, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<pad>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"pad_token": "<pad>", "eos_token": "</s>"}')
    prompt = "translate: zoo"
    assert main(["generate", str(tmp_path), "--prompt", prompt, "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out
    tokenizer = Tokenizer(tmp_path)
    ids, mask = tokenizer.encode_batch([prompt])
    assert ids[0, -1] == 1  # the source ends in </s>
    with torch.no_grad():
        want = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(generate(llmzoo.from_pretrained(tmp_path).eval(), ids, mask, max_new_tokens=8,
                                eos_token_id=1, pad_token_id=0)[:, : want.shape[1]], want)
    text = tokenizer.decode(want[0, 1:].tolist())
    assert printed == prompt + "\n" + text.rstrip("\ufffd") + "\n"
