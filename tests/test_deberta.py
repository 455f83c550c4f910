"""DeBERTa-v3 as an encoder-only masked LM: the zoo entry's count from its published sizes, right padding
leaves real tokens unchanged, and generation is refused by name. Logits against transformers'
DebertaV2ForMaskedLM: test_parity / test_flags (model_type deberta-v2); the attention: test_relative."""

import pytest
import torch

import llmzoo
from llmzoo.errors import UnsupportedError
from llmzoo.masked_lm import MaskedLM


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
