"""DeBERTa-v2/v3 as an encoder-only masked LM: the zoo entries' counts from their published sizes, right
padding leaves real tokens unchanged, generation is refused by name, and deberta-v2-xlarge's convolution
beside layer 0 (`layer_conv`) against transformers' DebertaV2ForMaskedLM, loaded and exported back.
Other logits against transformers: test_parity / test_flags (model_type deberta-v2); the attention:
test_relative."""

import math

import pytest
import torch

import llmzoo
from llmzoo.errors import UnsupportedError
from llmzoo.hf import get_adapter
from llmzoo.masked_lm import MaskedLM
from llmzoo.parity import compare, make_batch, tiny_reference


def test_deberta_v3_base_count_adds_up_from_the_config_json_sizes():
    """vocab 128100, hidden 768, 12 layers, intermediate 3072, 256 buckets (a 512-row table): the model
    card's 98M embedding + 86M backbone."""
    V, d, L, ff, rows = 128100, 768, 12, 3072, 2 * 256
    layer = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d  # q, k, v, o; MLP; two LayerNorms
    head = d * d + d + 2 * d + V  # transform dense + LayerNorm, bias of the tied head
    n = llmzoo.count_params("deberta-v3-base")
    assert n.parts["embedding"] == V * d and round(V * d / 1e6) == 98
    assert n.total == V * d + L * layer + rows * d + 2 * d + 2 * d + head
    assert round((n.total - V * d) / 1e6) == 86
    assert isinstance(llmzoo.build("deberta-v3-base", device="meta"), MaskedLM)


def test_masked_lm_is_bidirectional_and_right_padding_changes_no_real_token():
    model = llmzoo.build("deberta-v3-base", scale="tiny").eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    with torch.no_grad():
        full = model(ids)
        padded = model(torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1),
                       attention_mask=torch.tensor([[1] * 12 + [0] * 5]))
        changed_last = model(torch.cat([ids[:, :-1], (ids[:, -1:] + 1) % model.config.vocab_size], 1))
    torch.testing.assert_close(padded[:, :12], full, atol=1e-5, rtol=1e-5)
    assert (changed_last[0, 0] - full[0, 0]).abs().max() > 1e-4  # the first token sees the last one


def test_deberta_generate_is_refused():
    model = llmzoo.build("deberta-v3-base", scale="tiny")
    with pytest.raises(UnsupportedError, match="deberta-v3-base-tiny is an encoder-only masked LM"):
        llmzoo.generate(model, torch.ones(1, 4, dtype=torch.long), max_new_tokens=2)


def test_deberta_v2_xlarge_count_adds_up_from_the_config_json_sizes():
    """vocab 128100, hidden 1536, 24 layers, intermediate 6144, 256 buckets, conv_kernel_size 3: the model
    card's "Total parameters 900M" (rounded; 887.09M counted)."""
    V, d, L, ff, rows, k = 128100, 1536, 24, 6144, 2 * 256, 3
    layer = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d
    conv = d * d * k + d + 2 * d  # Conv1d weight (groups 1) + bias, its LayerNorm
    head = d * d + d + 2 * d + V
    n = llmzoo.count_params("deberta-v2-xlarge")
    assert n.parts["conv"] == conv
    assert n.total == V * d + L * layer + conv + rows * d + 2 * d + 2 * d + head
    assert abs(n.total / 900e6 - 1) < 0.02
    tiny = llmzoo.build("deberta-v2-xlarge", scale="tiny")
    assert sum(p.numel() for p in tiny.parameters()) == llmzoo.count_params(tiny.config).total


@pytest.mark.parametrize("groups, act", [(1, "gelu"), (2, "tanh")])
def test_layer_conv_matches_transformers_and_exports_back(groups, act, tmp_path):
    """transformers' ConvLayer (conv of the masked embedding output → padding rows 0 → act →
    LayerNorm(layer 0's output + it) × mask), conv_kernel_size 3, right padding in the batch: logits
    ≤ 1e-4 (float32); then llmzoo's export loads in transformers with the same tensors and logits."""
    ref = tiny_reference("deberta-v2", seed=3, overrides={"conv_kernel_size": 3, "conv_groups": groups,
                                                            "conv_act": act})
    w = ref.deberta.encoder.conv.conv.weight
    with torch.no_grad():  # loud at the conv's true fan-in (in/groups · kernel), so tanh does not saturate
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(5)) / math.sqrt(w[0].numel()))
    adapter = get_adapter("deberta-v2")
    adapter.save_reference(ref, str(tmp_path / "ref"), "100MB")
    ours = llmzoo.from_pretrained(tmp_path / "ref")
    assert ours.config.layer_conv.groups == groups and ours.config.layer_conv.activation == act
    ids, mask = make_batch(ours.config.vocab_size, 20, pad=4, seed=2)
    report = compare(ours, ref, adapter.rules(ours.config), ids, mask)
    assert report.passed and report.max_abs <= 1e-4, report
    assert dict(report.boundaries)["conv"] <= 1e-4  # the conv's own output, compared at the real tokens

    out = llmzoo.save_pretrained(ours, tmp_path / "export")
    back = adapter.load_reference(str(out), torch.float32)
    for name, t in ref.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    with torch.no_grad():
        a, b = ours(ids, attention_mask=mask), back(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    assert (a[keep] - b[keep]).abs().max() <= 1e-4
