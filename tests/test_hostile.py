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
])
def test_impossible_sizes_are_refused_by_field(path, value, says):
    with pytest.raises(ConfigError) as e:
        llmzoo.get_config(changed(path, value))
    assert path.rsplit(".", 1)[-1] in str(e.value) and says in str(e.value)


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
