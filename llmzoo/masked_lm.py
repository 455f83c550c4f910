"""The encoder-only masked LM (BERT, arXiv:1810.04805; DeBERTa, arXiv:2006.03654): embedding →
bidirectional blocks → final norm → prediction head, with the tensor names of `CausalLM`.

Every token sees every non-padding token. Positions are token slots 0…T-1 (transformers' DeBERTa
computes its relative positions from slots, not from the padding mask), so right padding leaves
every real token's output unchanged; padding rows of the embedding output are zero (what
`layer_conv`'s kernel sees past the last real token). There is no KV cache and no generation: a
masked LM predicts the tokens at the positions it is given (`llmzoo.generate` refuses it by name).
"""

from __future__ import annotations

from torch import Tensor, nn

from .block import Block
from .config import ModelConfig
from .conv import LayerConv
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
        if config.layer_conv is not None:  # DeBERTa-v2 xlarge: a convolution beside one layer
            self.conv = LayerConv(config.layer_conv, config.d_model)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        _check_mask("attention_mask", attention_mask, tuple(input_ids.shape))
        ctx = stack_context(self.positions, input_ids, attention_mask, False, self.rope_layout)
        ctx.layer_rope = self.rotary_tables(ctx.positions)[1]  # layers with their own rotary table
        x = self.embed_tokens(input_ids, ctx.positions)
        if attention_mask is not None:  # padding rows zero, as transformers' DeBERTa embeddings
            x = x * attention_mask.unsqueeze(-1).to(x.dtype)
        conv = self.config.layer_conv
        for i, block in enumerate(self.blocks):
            h = block(x, ctx)
            x = self.conv(x, h, attention_mask) if conv is not None and i == conv.layer else h
        return self.logits(x)
