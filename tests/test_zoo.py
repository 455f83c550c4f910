"""Every zoo entry: validates, builds on meta, counts exactly, matches its published size, runs tiny."""

import pytest
import torch
import yaml

import llmzoo
from llmzoo.zoo import config_path

MODELS = llmzoo.list_models()


def test_the_zoo_has_the_comparison_table():
    """Every row of the classic comparison table, plus LLaMA-3.1, DeepSeek-V2/V3 and Mixtral."""
    required = [
        "gpt-3-175b", "pangu-alpha-207b", "opt-175b", "palm-540b", "bloom-176b", "mt-nlg-530b", "gopher-280b",
        "chinchilla-70b", "galactica-120b", "lamda-137b", "jurassic-1-178b", "llama-2-70b", "pythia-12b",
        "baichuan2-13b", "qwen-1.5-72b", "internlm2-20b", "falcon-180b", "mpt-30b", "mistral-7b", "gemma-7b",
        "deepseek-67b", "yi-34b", "yulan-12b", "glm-130b", "t5-11b", "llama-3.1-405b", "deepseek-v2",
        "deepseek-v3", "mixtral-8x7b", "mixtral-8x22b", "deepseek-v2-lite", "gemma-2b", "llama-2-7b",
        "llama-2-13b", "qwen-1.5-0.5b", "bloom-560m", "bloom-7b1", "gpt-3-125m", "gpt-3-13b",
    ]
    missing = [m for m in required if m not in MODELS]
    assert not missing, f"zoo lacks {missing}"


@pytest.mark.parametrize("name", MODELS)
def test_entry_file_and_reference(name):
    path = config_path(name)
    raw = yaml.safe_load(path.read_text())
    assert path.stem == name and raw["family"] == path.parent.name
    assert raw.get("reference", {}).get("paper") or raw.get("reference", {}).get("url"), "cite the source"
    assert raw.get("published_params"), "state the published size"


@pytest.mark.parametrize("name", MODELS)
def test_count_equals_numel_on_meta(name):
    model = llmzoo.build(name, device="meta")
    assert llmzoo.count_params(name).total == sum(p.numel() for p in model.parameters())
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_count_is_within_3_percent_of_the_published_size_or_explained(name):
    c = llmzoo.get_config(name)
    n = llmzoo.count_params(c)
    delta = n.total / c.published_params - 1
    if abs(delta) > 0.03:
        assert c.notes and "param" in c.notes.lower(), f"{name}: {delta:+.1%} off and no `notes` explaining it"
    if c.published_active_params and abs(n.active / c.published_active_params - 1) > 0.03:
        assert c.notes and "active" in c.notes.lower(), f"{name}: active {n.active:.3e} and no `notes` on it"


@pytest.mark.parametrize("name", MODELS)
def test_tiny_forward(name):
    model = llmzoo.build(name, scale="tiny", seed=0)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids) if not hasattr(model, "encoder") else model(ids, ids)
    assert logits.shape == (2, 12, model.config.vocab_size) and torch.isfinite(logits).all()


def test_unknown_name_suggests_close_ones():
    with pytest.raises(KeyError, match="did you mean llama-2-70b"):
        llmzoo.get_config("llama2-70b")


def test_dicts_and_yaml_paths_are_accepted(tmp_path):
    d = llmzoo.get_config("llama-2-70b").to_dict()
    assert llmzoo.get_config(d).n_layers == 80
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(d))
    assert llmzoo.build(str(path), device="meta").config.name == "llama-2-70b"


def test_get_config_returns_independent_copies():
    a = llmzoo.get_config("llama-2-70b")
    a.n_layers = 2
    assert llmzoo.get_config("llama-2-70b").n_layers == 80
