"""DeepSeek-V2 / V3 and Mixtral checkpoints → llmzoo, logits against transformers (fp32 ≤ 1e-4)."""

from __future__ import annotations

import math

import pytest
import torch

import llmzoo
from llmzoo.config import ModelConfig, deep_merge
from llmzoo.hf import get_adapter
from llmzoo.hf.loader import from_pretrained
from llmzoo.moe import MoE
from llmzoo.parity import compare, loud_init_, make_batch, shard_size_for
from llmzoo.positions import RopeSpec, RoPE, rope_inv_freq
from variants import VARIANTS


def variant(model_type: str, **changes) -> dict:
    hf = get_adapter(model_type).tiny_hf_config()
    hf.update(changes)
    return hf


# the DeepSeek / Mixtral rows of the one variant table (tests/variants.py)
CASES = {name: (model_type, variant(model_type, **changes)) for name, (model_type, changes) in VARIANTS.items()
         if model_type in ("deepseek_v2", "deepseek_v3", "deepseek_v32", "mixtral")}


def loud_reference(model_type: str, hf: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    ref = loud_init_(get_adapter(model_type).reference(hf), seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, b in ref.named_buffers():
            if name.endswith("e_score_correction_bias"):  # a buffer: loud_init_ leaves it at zero
                b.copy_(0.3 * torch.randn(b.shape, generator=g))
    return ref


def save_sharded(ref: torch.nn.Module, folder) -> None:
    ref.save_pretrained(folder, max_shard_size=shard_size_for(ref, 4))
    assert len(list(folder.glob("*.safetensors"))) >= 3


def group_exclusions(model) -> int:
    """Tokens whose group-limited choice differs from a free top-k over all experts (hooked inputs)."""
    count = 0
    for m in model.modules():
        if isinstance(m, MoE) and m.router.spec.n_groups > 1:
            x = m._seen.reshape(-1, m._seen.shape[-1])
            _, chosen, scores = m.router(x)
            bias = m.router.score_bias if m.router.score_bias is not None else 0
            free = (scores + bias).topk(m.router.spec.top_k, dim=-1).indices
            count += sum(set(a.tolist()) != set(b.tolist()) for a, b in zip(chosen, free))
    return count


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case, tmp_path):
    """Each MoE row on its own batch (llmzoo.parity.compare): logits ≤ 1e-4, YaRN, routed + shared
    experts and dense first layers loaded, and (with groups) the group limit changes real routing."""
    model_type, hf = CASES[case]
    ref = loud_reference(model_type, hf)
    save_sharded(ref, tmp_path)
    ours = from_pretrained(tmp_path)
    ids, mask = make_batch(hf["vocab_size"], seq_len=20, pad=6)
    hooks = [m.register_forward_pre_hook(lambda mod, a: setattr(mod, "_seen", a[0]))
             for m in ours.modules() if isinstance(m, MoE)]
    report = compare(ours, ref, get_adapter(model_type).rules(ours.config), ids, mask)
    for h in hooks:
        h.remove()
    assert report.max_abs <= 1e-4, f"{case}: max |Δlogits| {report.max_abs:.2e}"
    assert report.scale > 1.0
    cfg = ours.config
    if model_type.startswith("deepseek"):
        assert cfg.position.scaling is not None and cfg.position.scaling.type == "yarn"
        moe = [b.mlp for b in cfg.blocks if b.mlp.type == "moe"]
        assert moe and all(m.top_k < m.n_experts and m.n_shared_experts > 0 for m in moe)
        assert cfg.blocks[0].mlp.type == "glu"
        if moe[0].n_groups > 1:
            assert group_exclusions(ours) > 0  # the group limit changed real routing decisions
    if model_type == "deepseek_v32":  # sparse attention really drops keys: every topk < the 20 tokens
        assert all(b.attention.indexer.topk < ids.shape[1] for b in cfg.blocks)


def test_cases_cover_the_acceptance_matrix():
    seen = {(mt, hf.get("q_lora_rank") is None) for mt, hf in CASES.values() if mt != "mixtral"}
    assert seen == {("deepseek_v2", True), ("deepseek_v2", False), ("deepseek_v3", True), ("deepseek_v3", False),
                    ("deepseek_v32", False)}  # V3.2's indexer needs the q latent


# ------------------------------------------------------------------------------ YaRN


@pytest.mark.parametrize("params", [
    {"factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 1.0, "mscale_all_dim": 1.0},  # V3
    {"factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 0.707, "mscale_all_dim": 0.707},  # V2
    {"factor": 8.0, "original_max_position_embeddings": 64, "mscale": 1.0, "mscale_all_dim": 0.8,
     "beta_fast": 16, "beta_slow": 2},
    {"factor": 4.0, "original_max_position_embeddings": 32},  # no mscale: attention_factor 0.1 ln s + 1
], ids=["v3", "v2", "mixed", "plain"])
def test_yarn_matches_transformers(params):
    from transformers import DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale

    rope = {"rope_type": "yarn", "rope_theta": 10000.0, **params}
    hf = DeepseekV3Config(rope_parameters=dict(rope), qk_rope_head_dim=64,
                          max_position_embeddings=int(params["factor"] * params["original_max_position_embeddings"]))
    want_inv, want_attention = ROPE_INIT_FUNCTIONS["yarn"](hf)
    ours = get_adapter("deepseek_v3").to_config(
        {**variant("deepseek_v3", qk_rope_head_dim=64), "rope_scaling": {"type": "yarn", **params}})
    spec = ours.position
    inv, attention = rope_inv_freq(spec, 64)
    assert torch.equal(inv, want_inv)
    assert math.isclose(attention, want_attention, rel_tol=1e-12)
    mult = RoPE(spec, d_model=1, n_heads=1, rotary_dim=64).softmax_scale_mult
    assert math.isclose(mult, yarn_apply_mscale(hf.rope_parameters, 1.0), rel_tol=1e-12)
    model = llmzoo.build(ours.model_copy(update={"n_layers": 1}), device="meta")
    a = ours.block.attention
    assert math.isclose(model.blocks[0].attn.scale, (a.qk_nope_head_dim + a.qk_rope_head_dim) ** -0.5 * mult)


def test_rope_layout_follows_rope_interleave():
    v3 = get_adapter("deepseek_v3")
    assert v3.to_config(variant("deepseek_v3", rope_interleave=True)).position.layout == "interleaved"
    assert v3.to_config(variant("deepseek_v3", rope_interleave=False)).position.layout == "halves"
    assert get_adapter("deepseek_v2").to_config(variant("deepseek_v2")).position.layout == "interleaved"


# ------------------------------------------------------------------------------ multi-token prediction


def mtp_checkpoint(folder, seed: int = 0):
    """A tiny V3 checkpoint laid out like DeepSeek-V3's: n main layers, then the MTP layer n (a
    decoder layer plus enorm, hnorm, eh_proj, shared_head.{norm,head}, embed_tokens copies).
    Returns (reference of the n main layers, the checkpoint's tensors)."""
    import json

    from safetensors.torch import save_file
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    hf = variant("deepseek_v3")
    n = hf["num_hidden_layers"]
    full = loud_reference("deepseek_v3", {**hf, "num_hidden_layers": n + 1}, seed)
    state = {k: v.contiguous() for k, v in full.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 7)
    d = hf["hidden_size"]
    extra = {"enorm.weight": 1 + 0.3 * torch.rand(d, generator=g), "hnorm.weight": 1 + 0.3 * torch.rand(d, generator=g),
             "eh_proj.weight": torch.randn(d, 2 * d, generator=g) / (2 * d) ** 0.5,
             "shared_head.norm.weight": 1 + 0.3 * torch.rand(d, generator=g),
             "shared_head.head.weight": state["lm_head.weight"].clone(),
             "embed_tokens.weight": state["model.embed_tokens.weight"].clone()}
    state.update({f"model.layers.{n}.{k}": v for k, v in extra.items()})
    folder.mkdir()
    names = sorted(state)
    files = [f"model-{k + 1:05d}-of-00003.safetensors" for k in range(3)]
    for k, f in enumerate(files):
        save_file({m: state[m] for m in names[k::3]}, folder / f, metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {m: files[i % 3] for i, m in enumerate(names)}}))
    (folder / "config.json").write_text(json.dumps({**hf, "num_nextn_predict_layers": 1,
                                                   "architectures": ["DeepseekV3ForCausalLM"]}))
    main = DeepseekV3ForCausalLM(DeepseekV3Config(**{k: v for k, v in hf.items() if k != "model_type"}))
    main.load_state_dict({k: v for k, v in state.items() if not k.startswith(f"model.layers.{n}.")})
    # the MTP block alone as a one-layer transformers model: layer n, shared_head.norm, lm_head
    one = {k: v for k, v in hf.items() if k != "model_type"}
    one.update(num_hidden_layers=1, first_k_dense_replace=0)
    block = DeepseekV3ForCausalLM(DeepseekV3Config(**one))
    block.load_state_dict({
        **{k.replace(f"model.layers.{n}.", "model.layers.0."): v for k, v in state.items()
           if k.startswith(f"model.layers.{n}.") and not any(e in k for e in extra)},
        "model.embed_tokens.weight": state["model.embed_tokens.weight"],
        "model.norm.weight": extra["shared_head.norm.weight"], "lm_head.weight": state["lm_head.weight"],
    })
    return main.eval(), block.eval(), extra


def test_mtp_layer_is_skipped_by_default_and_loads_on_request(tmp_path):
    from llmzoo.mtp import predict_ahead

    main, block, extra = mtp_checkpoint(tmp_path / "ckpt")
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(3))
    plain = from_pretrained(tmp_path / "ckpt")
    assert plain.config.mtp is None and not hasattr(plain, "mtp")
    with torch.no_grad():
        want = main(input_ids=ids)
        assert (plain(ids) - want.logits).abs().max() <= 1e-4
        cfg = type(plain.config).model_validate({**plain.config.to_dict(), "mtp": {"n_layers": 1}})
        ours = from_pretrained(tmp_path / "ckpt", config=cfg)
        torch.testing.assert_close(ours.mtp[0].eh_proj.weight, extra["eh_proj.weight"], rtol=0, atol=0)
        main_logits, ahead = predict_ahead(ours, ids)
        assert (main_logits - want.logits).abs().max() <= 1e-4
        # reference for depth 1 (V3 eq. 21-23): h0 = main model's final normed state, token i+1's embedding
        h0 = main.model(input_ids=ids).last_hidden_state
        rms = lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w  # noqa: E731
        emb = main.model.embed_tokens(ids[:, 1:])
        x = torch.cat([rms(emb, extra["enorm.weight"]), rms(h0[:, :-1], extra["hnorm.weight"])], -1)
        expected = block(inputs_embeds=x @ extra["eh_proj.weight"].T).logits
    assert ahead.shape == (2, 11, 96)
    assert (ahead - expected).abs().max() <= 1e-4


def test_layers_past_the_mtp_layer_are_still_unexpected(tmp_path):
    import json

    from safetensors.torch import save_file

    from llmzoo.hf.loader import CheckpointError

    mtp_checkpoint(tmp_path / "ckpt")
    bogus = "model.layers.4.self_attn.o_proj.weight"  # n = 3 main layers, MTP layer 3, nothing at 4
    save_file({bogus: torch.zeros(48, 48)}, tmp_path / "ckpt" / "extra.safetensors")
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    index["weight_map"][bogus] = "extra.safetensors"
    (tmp_path / "ckpt" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=bogus.replace(".", r"\.")):
        from_pretrained(tmp_path / "ckpt")


# ------------------------------------------------------------------------------ hub config.json → zoo

# the published config.json files (deepseek-ai/DeepSeek-V3, DeepSeek-V2, DeepSeek-V2-Lite,
# mistralai/Mixtral-8x7B-v0.1), architecture keys only
HUB = {'deepseek-v3': {'architectures': ['DeepseekV3ForCausalLM'],
                 'attention_bias': False,
                 'first_k_dense_replace': 3,
                 'hidden_act': 'silu',
                 'hidden_size': 7168,
                 'intermediate_size': 18432,
                 'kv_lora_rank': 512,
                 'max_position_embeddings': 163840,
                 'model_type': 'deepseek_v3',
                 'moe_intermediate_size': 2048,
                 'moe_layer_freq': 1,
                 'n_group': 8,
                 'n_routed_experts': 256,
                 'n_shared_experts': 1,
                 'norm_topk_prob': True,
                 'num_attention_heads': 128,
                 'num_experts_per_tok': 8,
                 'num_hidden_layers': 61,
                 'num_key_value_heads': 128,
                 'num_nextn_predict_layers': 1,
                 'q_lora_rank': 1536,
                 'qk_nope_head_dim': 128,
                 'qk_rope_head_dim': 64,
                 'quantization_config': {'activation_scheme': 'dynamic',
                                         'fmt': 'e4m3',
                                         'quant_method': 'fp8',
                                         'weight_block_size': [128, 128]},
                 'rms_norm_eps': 1e-06,
                 'rope_scaling': {'beta_fast': 32,
                                  'beta_slow': 1,
                                  'factor': 40,
                                  'mscale': 1.0,
                                  'mscale_all_dim': 1.0,
                                  'original_max_position_embeddings': 4096,
                                  'type': 'yarn'},
                 'rope_theta': 10000,
                 'routed_scaling_factor': 2.5,
                 'scoring_func': 'sigmoid',
                 'seq_aux': True,
                 'tie_word_embeddings': False,
                 'topk_group': 4,
                 'topk_method': 'noaux_tc',
                 'torch_dtype': 'bfloat16',
                 'v_head_dim': 128,
                 'vocab_size': 129280},
 'deepseek-v2': {'model_type': 'deepseek_v2',
                 'hidden_size': 5120,
                 'intermediate_size': 12288,
                 'moe_intermediate_size': 1536,
                 'num_hidden_layers': 60,
                 'num_attention_heads': 128,
                 'num_key_value_heads': 128,
                 'n_routed_experts': 160,
                 'n_shared_experts': 2,
                 'num_experts_per_tok': 6,
                 'n_group': 8,
                 'topk_group': 3,
                 'topk_method': 'group_limited_greedy',
                 'routed_scaling_factor': 16.0,
                 'first_k_dense_replace': 1,
                 'kv_lora_rank': 512,
                 'q_lora_rank': 1536,
                 'qk_nope_head_dim': 128,
                 'qk_rope_head_dim': 64,
                 'v_head_dim': 128,
                 'max_position_embeddings': 163840,
                 'rope_scaling': {'beta_fast': 32,
                                  'beta_slow': 1,
                                  'factor': 40,
                                  'mscale': 0.707,
                                  'mscale_all_dim': 0.707,
                                  'original_max_position_embeddings': 4096,
                                  'type': 'yarn'},
                 'rope_theta': 10000,
                 'rms_norm_eps': 1e-06,
                 'vocab_size': 102400,
                 'scoring_func': 'softmax',
                 'norm_topk_prob': False,
                 'moe_layer_freq': 1,
                 'tie_word_embeddings': False,
                 'hidden_act': 'silu'},
 'deepseek-v2-lite': {'model_type': 'deepseek_v2',
                      'hidden_size': 2048,
                      'intermediate_size': 10944,
                      'moe_intermediate_size': 1408,
                      'num_hidden_layers': 27,
                      'num_attention_heads': 16,
                      'num_key_value_heads': 16,
                      'n_routed_experts': 64,
                      'n_shared_experts': 2,
                      'num_experts_per_tok': 6,
                      'n_group': 1,
                      'topk_group': 1,
                      'topk_method': 'greedy',
                      'routed_scaling_factor': 1.0,
                      'first_k_dense_replace': 1,
                      'kv_lora_rank': 512,
                      'q_lora_rank': None,
                      'qk_nope_head_dim': 128,
                      'qk_rope_head_dim': 64,
                      'v_head_dim': 128,
                      'max_position_embeddings': 163840,
                      'rope_scaling': {'beta_fast': 32,
                                       'beta_slow': 1,
                                       'factor': 40,
                                       'mscale': 0.707,
                                       'mscale_all_dim': 0.707,
                                       'original_max_position_embeddings': 4096,
                                       'type': 'yarn'},
                      'rope_theta': 10000,
                      'rms_norm_eps': 1e-06,
                      'vocab_size': 102400,
                      'scoring_func': 'softmax',
                      'norm_topk_prob': False,
                      'moe_layer_freq': 1,
                      'tie_word_embeddings': False,
                      'hidden_act': 'silu'},
 'mixtral-8x7b': {'model_type': 'mixtral',
                  'hidden_size': 4096,
                  'intermediate_size': 14336,
                  'num_hidden_layers': 32,
                  'num_attention_heads': 32,
                  'num_key_value_heads': 8,
                  'num_local_experts': 8,
                  'num_experts_per_tok': 2,
                  'rope_theta': 1000000.0,
                  'max_position_embeddings': 32768,
                  'rms_norm_eps': 1e-05,
                  'vocab_size': 32000,
                  'sliding_window': None,
                  'tie_word_embeddings': False,
                  'hidden_act': 'silu'}}


@pytest.mark.parametrize("name", list(HUB))
def test_hub_config_reads_as_the_zoo_entry(name):
    from llmzoo.hf.adapter import config_diff

    hf = HUB[name]
    ours = get_adapter(hf["model_type"]).to_config(hf)
    assert config_diff(llmzoo.get_config(name), ours) == []


def test_dsa_selection_changes_the_logits(tmp_path):
    """DeepSeek-V3.2's indexer top-k is what makes the logits match: keeping every key (topk ≥ the
    sequence) on the same weights misses the reference by far more than the 1e-4 bound, and the
    indexer's key rides in the latent cache (kv_cache_bytes: kv_lora_rank + rope + index_head_dim)."""
    hf = get_adapter("deepseek_v32").tiny_hf_config()
    ref = loud_reference("deepseek_v32", hf)
    save_sharded(ref, tmp_path)
    ours = from_pretrained(tmp_path)
    ids, mask = make_batch(hf["vocab_size"], seq_len=20, pad=6)
    rules = get_adapter("deepseek_v32").rules(ours.config)
    assert compare(ours, ref, rules, ids, mask).max_abs <= 1e-4
    every_key = ModelConfig.model_validate(deep_merge(ours.config.to_dict(),
                                                      {"block": {"attention": {"indexer": {"topk": 64}}}}))
    assert {b.attention.indexer.topk for b in every_key.blocks} == {64}
    dense = llmzoo.build(every_key)
    dense.load_state_dict(ours.state_dict())
    assert compare(dense.eval(), ref, rules, ids, mask).max_abs > 1e-2
    per_token = sum(hf[k] for k in ("kv_lora_rank", "qk_rope_head_dim", "index_head_dim")) * hf["num_hidden_layers"]
    assert llmzoo.kv_cache_bytes(ours.config, 10, dtype="float32") == per_token * 10 * 4
