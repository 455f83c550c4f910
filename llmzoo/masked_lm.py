"""The encoder-only masked LM (BERT, arXiv:1810.04805; DeBERTa, arXiv:2006.03654): embedding →
bidirectional blocks → final norm → prediction head, with the tensor names of `CausalLM`.

Every token sees every non-padding token. Positions are token slots 0…T-1 (transformers' DeBERTa
computes its relative positions from slots, not from the padding mask), so right padding leaves
every real token's output unchanged. There is no KV cache and no generation: a masked LM predicts
the tokens at the positions it is given (`llmzoo.generate` refuses it by name).
"""

from __future__ import annotations

from torch import Tensor, nn

from .block import Block
from .config import ModelConfig
from .model import LanguageModel
from .seq2seq import _check_mask, stack_context


class MaskedLM(LanguageModel):
    """forward(input_ids (B, T), attention_mask (B, T) with 1 for real tokens) -> logits (B, T, vocab)."""

    prefix_lm = False

    def __init__(self, config: ModelConfig):
        if not config.encoder_only:
            raise ValueError(f"{config.name}: MaskedLM needs a config with encoder_only: true")
        super().__init__(config)
        self.blocks = nn.ModuleList(
            Block(spec, config.d_model, i, self.position_of(i).softmax_scale_mult)
            for i, spec in enumerate(config.blocks)
        )

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        _check_mask("attention_mask", attention_mask, tuple(input_ids.shape))
        ctx = stack_context(self.positions, input_ids, attention_mask, False, self.rope_layout)
        ctx.layer_rope = self.rotary_tables(ctx.positions)[1]  # layers with their own rotary table
        x = self.embed_tokens(input_ids, ctx.positions)
        for block in self.blocks:
            x = block(x, ctx)
        return self.logits(x)
