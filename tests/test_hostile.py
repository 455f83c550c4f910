"""Hostile and broken input: each class is refused by an LLMZooError that names the file and field
or tensor, quickly, with nothing allocated for an impossible model (the fuzz suite in test_fuzz.py
draws random cases of the same classes)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import llmzoo
from llmzoo.config import MAX_LAYERS, load_config
from llmzoo.errors import ConfigError, LLMZooError, NotFoundError, UnsupportedError
from llmzoo.hf import get_adapter, supported_model_types

TYPES = supported_model_types()
BASE = llmzoo.get_config("llama-2-7b").to_dict()


def changed(path: str, value) -> dict:
    d = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node[p]
    node[last] = value
    return d


# ------------------------------------------------------------------------------ config values


@pytest.mark.parametrize("path, value", [
    ("head.tied", "false"), ("head.tied", 0), ("block.mlp.bias", "no"), ("block.attention.qkv_bias", 1.0),
])
def test_booleans_are_booleans(path, value):
    with pytest.raises(ConfigError, match=rf"{path.rsplit('.', 1)[-1]}: expected true or false"):
        llmzoo.build(changed(path, value), device="meta")


@pytest.mark.parametrize("path, value, says", [
    ("block.attention.n_heads", 0, "greater than 0"),
    ("block.attention.n_kv_heads", 0, "greater than 0"),
    ("d_model", -4096, "greater than 0"),
    ("vocab_size", 0, "greater than 0"),
    ("block.norm.eps", float("nan"), "finite number"),
    ("block.norm.eps", float("inf"), "finite number"),
    ("position.theta", float("-inf"), "finite number"),
    ("n_layers", 10**9, f"less than or equal to {MAX_LAYERS}"),
    ("d_model", 2**40, "less than or equal to"),
    ("max_seq_len", 2**62, "less than or equal to"),
    # found by the fuzz suite: each of these built a model whose logits were NaN, or that failed at run time
    ("position.theta", 2.2250738585e-313, "greater than or equal to 1"),
    ("embedding.scale", 3.17e143, "a numeric scale must lie in (0, 10000]"),
    ("head.scale", -16827.0, "a numeric scale must lie in (0, 10000]"),
    ("block.attention.head_dim", True, "expected a number, got True"),
])
def test_impossible_sizes_are_refused_by_field(path, value, says):
    with pytest.raises(ConfigError) as e:
        llmzoo.get_config(changed(path, value))
    assert path.rsplit(".", 1)[-1] in str(e.value) and says in str(e.value)


def test_learned_table_shorter_than_max_seq_len_is_refused():
    d = llmzoo.get_config("gpt-2-small").to_dict()
    d["position"]["max_positions"] = True  # pydantic alone reads true as 1: a one-row table
    with pytest.raises(ConfigError, match="max_positions: expected a number, got True"):
        llmzoo.get_config(d)
    d["position"]["max_positions"] = 3
    with pytest.raises(ConfigError, match=r"position\.max_positions: 3 rows cannot serve max_seq_len 1024"):
        llmzoo.get_config(d)


@pytest.mark.parametrize("path, value", [
    ("block.mlp.d_ff", 10**15),  # element count past int64 in one tensor
    ("block.attention.head_dim", 2**40),
    ("block.attention.n_heads", 2**31),  # 2^31 × head_dim 128 rows: past any sane limit
])
def test_parameter_count_is_bounded_before_anything_is_built(path, value):
    config = changed(path, value)
    if path.endswith("n_heads"):
        config["block"]["attention"]["n_kv_heads"] = value
    with pytest.raises(ConfigError, match=r"parameters exceed the bound"):
        llmzoo.build(config, device="meta")
    with pytest.raises(ConfigError, match=r"parameters exceed the bound"):
        llmzoo.build(config)


def test_meta_model_builds_no_rope_table():
    model = llmzoo.build("llama-2-70b", device="meta")
    assert not hasattr(model.positions, "_inv_freq")  # nothing allocated on CPU for a meta model
    tiny = llmzoo.build("llama-2-7b", scale="tiny")  # to_empty builds it
    assert tiny.positions._inv_freq.device.type == "cpu"
    assert torch.isfinite(tiny(torch.tensor([[1, 2, 3]]))).all()


# ------------------------------------------------------------------------------ YAML files


def test_duplicate_yaml_key_names_key_and_file(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\nfamily: b\nd_model: 64\nd_model: 128\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: not valid YAML.*key 'd_model' appears twice"):
        load_config(path)


def test_yaml_alias_bomb_is_capped(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10^9 leaves
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nname: *a8\n")
    with pytest.raises(ConfigError, match=r"bomb\.yaml: the YAML expands .* more than 100000 nodes") as e:
        load_config(path)
    assert len(str(e.value)) < 300


def test_non_utf8_file_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 0xe9 at offset 9\)"):
        load_config(path)


@pytest.mark.parametrize("text, says", [
    ("- a\n- b\n", "expected a mapping at the top level, got list"),
    ("name: [unclosed\n", "not valid YAML"),
    ("", "expected a mapping at the top level, got NoneType"),
])
def test_yaml_that_is_not_a_config(tmp_path, text, says):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"bad\.yaml: {says}"):
        load_config(path)


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(NotFoundError, match="did you mean llama-2-7b") as e:
        llmzoo.get_config("llama-2-7")
    assert isinstance(e.value, KeyError) and str(e.value).startswith("no zoo model")


def test_validation_error_echo_is_capped():
    with pytest.raises(ConfigError) as e:
        llmzoo.get_config(changed("name", "x " * 100_000))
    assert len(str(e.value)) <= 2100


# ------------------------------------------------------------------------------ config.json


BAD_HF_VALUES = [  # key, value, what the message says
    ("tie_word_embeddings", "false", "expected true or false, got string 'false'"),
    ("vocab_size", "96", "expected an integer, got string"),
    ("vocab_size", 96.5, "expected an integer, got number"),
    ("vocab_size", True, "expected an integer, got boolean"),
    ("vocab_size", 0, "expected an integer > 0"),
    ("quantization_config", "gptq", "expected an object, got string"),
    ("rope_scaling", [1, 2], "expected an object, got array"),
    ("rms_norm_eps", float("nan"), "expected a finite number"),
    ("hidden_act", 7, "expected a string"),
]


@pytest.mark.parametrize("model_type", TYPES)
def test_malformed_config_json_types_are_named(model_type):
    adapter = get_adapter(model_type)
    hf = adapter.tiny_hf_config()
    size_key = next(k for k in ("vocab_size", "padded_vocab_size") if k in hf)
    for key, value, says in BAD_HF_VALUES:
        key = size_key if key == "vocab_size" else key
        with pytest.raises(ConfigError, match=rf"config\.json: {key}: {says}"):
            adapter.to_config({**hf, key: value})


FUZZ_FOUND = [  # config.json values that passed validation and then broke the model (long fuzz runs)
    ("phi3", {"rope_scaling": {"type": "longrope", "short_factor": [1.0, 0.0, 1.2, 1.3, 1.4, 1.5],
                               "long_factor": [2.0, 3.5, 5.0, 6.5, 8.0, 9.5]}}, r"short_factor: 0\.0 is outside"),
    ("phi3", {"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 6,
                               "long_factor": [2.0, -3.5, 5.0, 6.5, 8.0, 9.5]}}, r"long_factor: -3\.5 is outside"),
    ("phi3", {"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 6, "long_factor": [2.0] * 6,
                               "attention_factor": 1e30}}, r"attention_factor"),
    ("phi3", {"original_max_position_embeddings": 1}, r"original_max_position_embeddings 1 must exceed 1"),
    ("phi3", {"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 5, "long_factor": [2.0] * 5}},
     r"5 longrope factors"),
    ("mistral", {"sliding_window": 10**19}, r"window"),
    ("mpt", {"attn_config": {"alibi": True, "softmax_scale": 1.7e187}}, r"softmax_scale"),
    ("mpt", {"attn_config": {"alibi": True, "clip_qkv": 1e300}}, r"clip_qkv"),
    ("chatglm", {"hidden_size": 72, "num_attention_heads": 4}, r"'rope_2d' needs a head dim that is a multiple of 4"),
    ("t5", {"relative_attention_num_buckets": 2}, r"num_buckets: 2 leaves no exact bucket"),
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 16}}, r"low_freq_factor"),
    ("t5", {"relative_attention_num_buckets": 3}, r"num_buckets: 3 leaves no exact bucket"),
]


@pytest.mark.parametrize("model_type, edit, says", FUZZ_FOUND)
def test_fuzz_found_config_json_values_are_named(model_type, edit, says):
    adapter = get_adapter(model_type)
    with pytest.raises(ConfigError, match=says):
        adapter.to_config({**adapter.tiny_hf_config(), **edit})


def test_windows_longer_than_the_context_stay_legal():
    hf = {**get_adapter("mistral").tiny_hf_config(), "sliding_window": 4096, "max_position_embeddings": 128}
    config = get_adapter("mistral").to_config(hf)  # Mistral-7B: a 4096 window, a 32k context
    assert config.blocks[0].attention.window == 4096


@pytest.mark.parametrize("model_type", TYPES)
def test_zero_heads_missing_keys_and_huge_ints_are_config_errors(model_type):
    adapter = get_adapter(model_type)
    hf = adapter.tiny_hf_config()
    for key in [k for k in hf if k != "model_type"]:
        for value in (0, -1, 10**400, None, {}, []):
            try:
                adapter.to_config({**hf, key: value})
            except LLMZooError:
                pass  # accepted values are fine too: the key may be optional
        smaller = {k: v for k, v in hf.items() if k != key}
        try:
            adapter.to_config(smaller)
        except LLMZooError:
            pass


def test_unknown_and_non_string_model_type():
    with pytest.raises(UnsupportedError, match=r"config\.json: model_type 'llamma' is not supported"):
        get_adapter("llamma")
    with pytest.raises(UnsupportedError, match=r"model_type \['llama'\] is not supported"):
        get_adapter(["llama"])


# ------------------------------------------------------------------------------ from_pretrained


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    from conftest import save_tiny_checkpoint

    folder = tmp_path_factory.mktemp("hostile") / "llama"
    save_tiny_checkpoint("llama", folder)
    return folder


def test_from_pretrained_config_by_name_path_or_mapping(llama_folder, tmp_path):
    hf = json.loads((llama_folder / "config.json").read_text())
    config = get_adapter("llama").to_config(hf)
    path = tmp_path / "mine.yaml"
    path.write_text(config.to_yaml())
    ids = torch.tensor([[1, 2, 3, 4]])
    want = llmzoo.from_pretrained(llama_folder)(ids)
    for given in (config, config.to_dict(), str(path)):
        assert torch.equal(llmzoo.from_pretrained(llama_folder, config=given)(ids), want)
    # a zoo name is a config: its shapes do not fit these weights, which the error says
    with pytest.raises(llmzoo.CheckpointError, match="wrong shape"):
        llmzoo.from_pretrained(llama_folder, config="llama-2-7b")
    with pytest.raises(NotFoundError, match="no zoo model named 'llama-2-7'"):
        llmzoo.from_pretrained(llama_folder, config="llama-2-7")


def test_string_boolean_in_config_json_never_loads(llama_folder, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(llama_folder, bad)
    hf = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**hf, "tie_word_embeddings": "false"}))
    with pytest.raises(LLMZooError, match=r"config\.json: tie_word_embeddings: expected true or false"):
        llmzoo.from_pretrained(bad)


# ------------------------------------------------------------------------------ checkpoint files


@pytest.fixture
def ckpt(llama_folder, tmp_path):
    """A fresh copy of the tiny sharded llama checkpoint (4 safetensors shards + index)."""
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(llama_folder, folder)
    return folder


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


INDEX = "model.safetensors.index.json"


@pytest.mark.parametrize("shard, says", [
    ("../outside.safetensors", "not a plain file name inside the checkpoint folder"),
    ("/etc/passwd", "not a plain file name inside the checkpoint folder"),
    ("sub/model.safetensors", "not a plain file name inside the checkpoint folder"),
    ("..", "not a plain file name"),
    ("", "not a plain file name"),
    (7, "is a int, not a file name"),
    (None, "is a NoneType, not a file name"),
    ("config.json", "does not end in .safetensors"),
])
def test_index_shard_names_are_plain_files_inside_the_folder(ckpt, shard, says):
    (ckpt.parent / "outside.safetensors").write_bytes((ckpt / sorted(ckpt.glob("*.safetensors"))[0].name).read_bytes())

    def change(d):
        d["weight_map"]["model.norm.weight"] = shard

    edit_json(ckpt / INDEX, change)
    with pytest.raises(llmzoo.CheckpointError, match=rf"{INDEX}: weight_map: .*{says}"):
        llmzoo.from_pretrained(ckpt)


@pytest.mark.parametrize("content, says", [
    (b'{"weight_map": ["a"]}', "weight_map: expected an object of tensor name → shard file, got list"),
    (b'{"metadata": {}}', "weight_map: expected an object .* got nothing"),
    (b'[1, 2]', "weight_map: expected an object"),
    (b'{"weight_map": {}}', "weight_map: expected an object"),
    (b'{"weight_map": ', "not valid JSON"),
    (b'\xff\xfe{}', r"not UTF-8 text \(byte 0xff at offset 0\)"),
    (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
])
def test_malformed_index_file_is_named(ckpt, content, says):
    (ckpt / INDEX).write_bytes(content)
    with pytest.raises(llmzoo.CheckpointError, match=rf"{INDEX}: ({says})"):
        llmzoo.from_pretrained(ckpt)


def test_symlinked_shards_of_the_hub_cache_still_load(ckpt, tmp_path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for shard in ckpt.glob("*.safetensors"):  # as huggingface_hub lays out a snapshot
        target = blobs / f"sha-{shard.name}"
        shard.rename(target)
        shard.symlink_to(target)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.isfinite(llmzoo.from_pretrained(ckpt)(ids)).all()


def rewrite_tensor(folder, name, change):
    from safetensors import safe_open
    from safetensors.torch import save_file

    index = json.loads((folder / INDEX).read_text())
    shard = folder / index["weight_map"][name]
    with safe_open(str(shard), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors[name] = change(tensors[name])
    save_file(tensors, str(shard), metadata={"format": "pt"})


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_int_and_bool_tensors_where_floats_belong(ckpt, dtype):
    rewrite_tensor(ckpt, "model.layers.1.self_attn.k_proj.weight", lambda t: t.to(dtype))
    with pytest.raises(llmzoo.CheckpointError, match=r"wrong dtype: 'model\.layers\.1\.self_attn\.k_proj\.weight'"
                       r" → 'blocks\.1\.attn\.k\.weight' is stored as torch\.\w+; the model needs floating"):
        llmzoo.from_pretrained(ckpt)


def test_float8_without_quantization_config_is_refused(ckpt):
    rewrite_tensor(ckpt, "model.layers.0.mlp.up_proj.weight", lambda t: t.to(torch.float8_e4m3fn))
    with pytest.raises(llmzoo.CheckpointError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.* declares no "
                       r"quantization_config with quant_method 'fp8'"):
        llmzoo.from_pretrained(ckpt)


def test_mismatch_names_both_vocabularies(ckpt):
    rewrite_tensor(ckpt, "model.layers.1.self_attn.k_proj.weight", lambda t: t[:-1])
    with pytest.raises(llmzoo.CheckpointError, match=r"'model\.layers\.1\.self_attn\.k_proj\.weight' \[\[\d+, \d+\]\]"
                       r" → 'blocks\.1\.attn\.k\.weight'"):
        llmzoo.from_pretrained(ckpt)
    import shutil

    single = ckpt.parent / "single"
    shutil.copytree(ckpt, single)
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = {}
    for shard in sorted(single.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
        shard.unlink()
    (single / INDEX).unlink()
    del tensors["model.layers.1.self_attn.v_proj.weight"]
    save_file(tensors, str(single / "model.safetensors"))
    with pytest.raises(llmzoo.CheckpointError, match=r"missing tensor: 'model\.layers\.1\.self_attn\.v_proj\.weight'"
                       r" → 'blocks\.1\.attn\.v\.weight'"):
        llmzoo.from_pretrained(single)


def test_bin_holding_non_tensors(ckpt, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text((ckpt / "config.json").read_text())
    for blob, says in [({"model.norm.weight": torch.ones(4), "step": 7}, r"'step' \(int\)"),
                       ([torch.ones(2)], "holds a list, not a state dict"),
                       ({"a": {"b": torch.ones(2)}}, r"'a' \(dict\)")]:
        torch.save(blob, folder / "pytorch_model.bin")
        with pytest.raises(llmzoo.CheckpointError, match=rf"pytorch_model\.bin: .*{says}"):
            llmzoo.from_pretrained(folder)


@pytest.mark.parametrize("quant, method", [
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "'gptq'"),
    ({"quant_method": "awq", "bits": 4}, "'awq'"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "'bitsandbytes'"),
    ({"load_in_8bit": True}, "'bitsandbytes'"),
    ({"quant_method": "compressed-tensors"}, "'compressed-tensors'"),
])
def test_quantised_checkpoints_are_refused_in_one_line(ckpt, quant, method):
    edit_json(ckpt / "config.json", lambda d: d.update(quantization_config=quant))
    with pytest.raises(UnsupportedError, match=rf"quantization_config\.quant_method {method}: llmzoo reads") as e:
        llmzoo.from_pretrained(ckpt)
    assert "\n" not in str(e.value)


def test_quantised_tensors_without_config_are_refused_in_one_line(ckpt):
    rewrite_tensor(ckpt, "model.layers.0.mlp.up_proj.weight", lambda t: t)
    from safetensors.torch import save_file

    save_file({"model.layers.0.mlp.up_proj.qweight": torch.zeros(4, 4, dtype=torch.int32)}, str(ckpt / "q.safetensors"))
    edit_json(ckpt / INDEX, lambda d: d["weight_map"].update({"model.layers.0.mlp.up_proj.qweight": "q.safetensors"}))
    with pytest.raises(UnsupportedError, match=r"quantised tensors \(model\.layers\.0\.mlp\.up_proj\.qweight: GPTQ") as e:
        llmzoo.from_pretrained(ckpt)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("field, value, says", [
    ("weight_block_size", [0, 0], "weight_block_size"),
    ("weight_block_size", ["a", "a"], "weight_block_size"),
    ("weight_block_size", [128, 64], "weight_block_size"),
    ("weight_block_size", 128, r"weight_block_size: expected an array"),
    ("fmt", "e5m2", r"quantization_config\.fmt 'e5m2'"),
    ("activation_scheme", "static", r"quantization_config\.activation_scheme 'static'"),
])
def test_malformed_fp8_fields_are_named(ckpt, field, value, says):
    edit_json(ckpt / "config.json", lambda d: d.update(quantization_config={"quant_method": "fp8", field: value}))
    with pytest.raises(LLMZooError, match=says):
        llmzoo.from_pretrained(ckpt)


def test_plan_is_linear_in_the_number_of_tensors():
    from llmzoo.hf.rules import Rule, StackExperts, plan_load

    rules = [Rule("layers.{i}.experts.{e}.w", "blocks.{i}.moe.w", StackExperts())]
    names = ["layers.0.experts.0.w", "layers.0.experts.999999999.w", "layers.0.experts.10000000000000.w"]
    groups, problems = plan_load(rules, names)  # quadratic (or a walk to 10^9) would hang here
    assert not groups
    assert any("unexpected tensor 'layers.0.experts.10000000000000.w'" in p for p in problems)
    assert any("'layers.0.experts.1.w'" in p and "999999993 more" in p for p in problems)


# ------------------------------------------------------------------------------ GLM SAT folder


def sat_folder(path):
    from llmzoo.hf import glm
    from llmzoo.reference.glm130b import random_official_state

    cfg = glm.tiny_config()
    a = cfg.block.attention
    state = random_official_state(vocab=cfg.vocab_size, hidden=cfg.d_model, num_layers=cfg.n_layers,
                                  num_heads=a.n_heads, inner=cfg.block.mlp.d_ff, seed=0)
    glm.save_sat_checkpoint(glm.split_tp(state, 2), path)
    return cfg


def test_sat_conversion_never_writes_through_a_planted_symlink(tmp_path):
    from llmzoo.hf.glm import load_glm

    folder, outside = tmp_path / "sat", tmp_path / "outside"
    outside.mkdir()
    cfg = sat_folder(folder)
    (folder / "safetensors").symlink_to(outside)
    with pytest.raises(llmzoo.CheckpointError, match=r"safetensors: is a symlink .*writes converted shards only"):
        load_glm(folder, cfg)
    assert list(outside.iterdir()) == []
    (folder / "safetensors").unlink()
    (folder / "latest").write_text("../../etc")  # the iteration folder must be inside the checkpoint
    with pytest.raises(llmzoo.CheckpointError, match=r"latest: '\.\./\.\./etc' is not the name of an iteration"):
        load_glm(folder, cfg)


def test_failed_sat_conversion_leaves_no_partial_output(tmp_path):
    from llmzoo.hf.glm import load_glm

    folder = tmp_path / "sat"
    cfg = sat_folder(folder)
    rank1 = next(folder.glob("*/mp_rank_01_model_states.pt"))
    blob = torch.load(rank1, weights_only=True)
    key = next(k for k in blob["module"] if k.endswith("dense.weight"))
    blob["module"][key] = blob["module"][key][:-1]  # does not concatenate with rank 0's piece
    torch.save(blob, rank1)
    with pytest.raises(llmzoo.CheckpointError, match="converting to safetensors failed, nothing written"):
        load_glm(folder, cfg)
    assert sorted(p.name for p in folder.iterdir()) == sorted(["latest", rank1.parent.name])
    torch.save({"module": {**blob["module"], key: torch.ones(2)}, "x": 1}, rank1)  # a different failure
    with pytest.raises(LLMZooError):
        load_glm(folder, cfg)
    assert sorted(p.name for p in folder.iterdir()) == sorted(["latest", rank1.parent.name])
