"""Each validation rule of the config schema; the message names the field at fault."""

import copy

import pytest
import yaml
from pydantic import Field, ValidationError
from torch import nn

import llmzoo
from llmzoo.config import ConfigError, load_config
from llmzoo.registry import ComponentSpec, register

BASE = {
    "name": "toy",
    "family": "toy",
    "vocab_size": 64,
    "d_model": 32,
    "n_layers": 2,
    "max_seq_len": 64,
    "position": {"type": "rope", "theta": 10000.0, "fraction": 1.0},
    "block": {
        "placement": "pre",
        "norm": {"type": "rmsnorm", "eps": 1e-5},
        "attention": {"type": "gqa", "n_heads": 4, "n_kv_heads": 2, "head_dim": 8},
        "mlp": {"type": "glu", "d_ff": 48, "activation": "silu"},
    },
    "final_norm": {"type": "rmsnorm", "eps": 1e-5},
    "head": {"tied": False},
}


def with_change(path: str, value):
    d = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node[p]
    node[last] = value
    return d


def error_of(d) -> str:
    with pytest.raises(ValidationError) as e:
        llmzoo.ModelConfig.model_validate(d)
    return str(e.value)


def test_base_config_is_valid():
    c = llmzoo.ModelConfig.model_validate(BASE)
    assert c.blocks[1].attention.n_kv_heads == 2


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("rope_theta", 1e4, "rope_theta\n  Extra inputs are not permitted"),
        ("block.attention.sliding_windw", 8, "block.attention.sliding_windw\n  Extra inputs are not permitted"),
        ("position.thetta", 1.0, "position.thetta"),
        ("block.norm", {"type": "rmsnrom"}, "block.norm\n  Value error, type: 'rmsnrom' is not one of layernorm, rmsnorm"),
        ("block.mlp", {"type": "swiglu", "d_ff": 8}, "is not one of glu, mlp, moe"),
        ("block.attention.n_kv_heads", 3, "n_heads (4) is not divisible by n_kv_heads (3)"),
        ("block.attention.window", 0, "block.attention.window\n  Input should be greater than 0"),
        ("block.attention.window", -4, "block.attention.window"),
        ("position.fraction", 0.125, "position.fraction: 0.125 × head dim 8 gives 1 rotary dims"),
        ("position.fraction", 0.375, "gives 3 rotary dims in layer 0; it must be even"),
        ("block.placement", "post-ln", "block.placement"),
        ("head", {"tied": True, "normalize": True}, "head.normalize needs an untied head"),
    ],
)
def test_bad_field_is_named(path, value, expected):
    assert expected in error_of(with_change(path, value))


def test_gqa_type_must_fit_kv_heads():
    msg = error_of(with_change("block.attention.n_kv_heads", 4))
    assert "type 'gqa' does not fit n_kv_heads=4 with n_heads=4" in msg
    msg = error_of(with_change("block.attention", {"type": "mqa", "n_heads": 4, "n_kv_heads": 2, "head_dim": 8}))
    assert "type 'mqa' does not fit n_kv_heads=2" in msg


def test_moe_rules():
    moe = {"type": "moe", "n_experts": 4, "top_k": 5, "d_expert": 8}
    assert "top_k (5) exceeds n_experts (4)" in error_of(with_change("block.mlp", moe))
    moe = {"type": "moe", "n_experts": 6, "top_k": 2, "d_expert": 8, "n_groups": 4}
    assert "n_experts (6) is not divisible by n_groups (4)" in error_of(with_change("block.mlp", moe))
    moe = {"type": "moe", "n_experts": 8, "top_k": 6, "d_expert": 8, "n_groups": 4, "topk_groups": 2}
    assert "leave fewer than top_k experts" in error_of(with_change("block.mlp", moe))


def test_parallel_block_needs_pre_placement():
    d = with_change("block.placement", "post")
    d["block"]["parallel"] = "shared_norm"
    assert "parallel: 'shared_norm' needs placement 'pre'" in error_of(d)


def test_residual_alpha_needs_post_or_deepnorm():
    assert "alpha: a residual scale needs placement" in error_of(with_change("block.alpha", 2.0))


def test_overrides_are_validated_and_located():
    d = with_change("overrides", [{"layers": "1::2", "block": {"attention": {"window": 0}}}])
    assert "overrides[0]" in error_of(d) and "window" in error_of(d)
    d = with_change("overrides", [{"layers": [0, 7], "block": {}}])
    assert "layers [7] out of range for n_layers=2" in error_of(d)
    d = with_change("overrides", [{"layers": "odd", "block": {}}])
    assert "'odd' is not a slice" in error_of(d)


def test_override_with_new_type_replaces_the_component():
    d = with_change("overrides", [{"layers": "0:1", "block": {"mlp": {"type": "mlp", "d_ff": 16}}}])
    c = llmzoo.ModelConfig.model_validate(d)
    assert c.blocks[0].mlp.type == "mlp" and c.blocks[0].mlp.d_ff == 16 and c.blocks[0].mlp.activation == "gelu"
    assert c.blocks[1].mlp.type == "glu"


def test_yaml_file_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(with_change("block.attention.n_kv_heads", 3)))
    with pytest.raises(ConfigError, match=r"broken\.yaml.*\n.*block\.attention"):
        load_config(path)
    path.write_text("name: [unclosed")
    with pytest.raises(ValueError, match=r"broken\.yaml: not valid YAML"):
        load_config(path)


class ScaledNormSpec(ComponentSpec):
    type: str = "scalednorm"
    gain: float = Field(2.0, gt=0)

    def n_params(self, dim: int) -> int:
        return 0


def test_user_component_from_yaml_and_double_registration():
    @register("norm", "scalednorm", ScaledNormSpec)
    class ScaledNorm(nn.Module):
        def __init__(self, spec, dim):
            super().__init__()
            self.gain = spec.gain

        def forward(self, x):
            return x * self.gain

    d = with_change("block.norm", {"type": "scalednorm", "gain": 3.0})
    model = llmzoo.build(d)
    assert model.blocks[0].attn_norm.gain == 3.0
    assert "block.norm.gain" in error_of(with_change("block.norm", {"type": "scalednorm", "gain": -1}))
    with pytest.raises(ValueError, match="norm component 'scalednorm' is already registered"):
        register("norm", "scalednorm", ScaledNormSpec)(ScaledNorm)
