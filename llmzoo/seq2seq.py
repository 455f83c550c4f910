"""The encoder-decoder LM (T5, Raffel et al., arXiv:1910.10683): encoder → memory → decoder with cross-attention.

Built from the same registered components as `CausalLM`. The top-level config fields describe the
decoder and its head; `config.encoder` describes the encoder stack, which shares the token embedding.
Tensor names follow `CausalLM` for the decoder (`embed`, `positions`, `blocks.{i}`, `final_norm`,
`head`), add `blocks.{i}.cross_attn.{q,k,v,o}` and `blocks.{i}.cross_attn_norm`, and put the encoder
under `encoder.` (`encoder.positions`, `encoder.blocks.{i}`, `encoder.final_norm`).

Incremental decoding: `decode(..., cache=StaticCache, cross_kv=model.cross_kv(memory))` runs the
decoder over the next tokens only; self-attention keys/values go to the cache per step (slots and
positions as for a causal LM), cross-attention keys/values are computed once per source by `cross_kv`.
`decoding(input_ids, attention_mask)` packages that as the decoder-only callable `llmzoo.generate`
drives (`generate` / `stream` on an encoder-decoder model start from `decoder_start_token_id`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import Attention, Context, sdpa
from .block import Block
from .config import BlockSpec, EncoderSpec, ModelConfig
from .model import LanguageModel, _check_mask, stack_context  # noqa: F401 (masked_lm imports both from here)
from .registry import build


class CrossAttention(Attention):
    """Encoder-decoder attention (Vaswani et al., arXiv:1706.03762, §3.2.3): queries from the decoder,
    keys and values from the encoder output; no position term, every (non-padding) source token visible."""

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:  # memory (B, S, D)
        """Keys and values (B, KV, S, Dh) of the encoder output: the same for every decoding step."""
        B, S, _ = memory.shape
        # heads as -1, as in Attention: under tensor parallelism a rank holds its own heads only
        k = self.k(memory).view(B, S, -1, self.head_dim).transpose(1, 2)  # (B, KV, S, Dh)
        v = self.v(memory).view(B, S, -1, self.head_dim).transpose(1, 2)
        return k, v

    def forward(self, x: Tensor, memory: Tensor, ctx: Context, kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x (B, T, D), memory (B, S, D); kv: memory_kv(memory) computed earlier (a decoding loop)."""
        B, T, _ = x.shape
        k, v = self.memory_kv(memory) if kv is None else kv
        q = self.q(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        y = sdpa(q, k, v, ctx.mask(None), self.scale)  # (B, H, T, Dh)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


class DecoderBlock(Block):
    """A `Block` with a cross-attention sub-layer between self-attention and MLP.

    pre:  x += Attn(N1 x); x += Cross(N2 x, memory); x += MLP(N3 x)   (T5)
    post: x = N1(x + Attn x); x = N2(x + Cross(x, memory)); x = N3(x + MLP x)   (Vaswani et al.)"""

    def __init__(self, spec: BlockSpec, d_model: int, layer: int, scale_mult: float = 1.0):
        super().__init__(spec, d_model, layer, scale_mult)
        self.cross_attn = CrossAttention(spec.cross_attention, d_model, layer)
        self.cross_attn_norm = build("norm", spec.norm, d_model)

    def forward(
        self, x: Tensor, ctx: Context, memory: Tensor, cross: Context, kv: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:  # (B, T, D); kv: this layer's cross-attention keys/values, if computed once already
        if self.wiring == "_pre":
            x = x + self.attn(self.attn_norm(x), ctx)
            x = x + self.cross_attn(self.cross_attn_norm(x), memory, cross, kv)
            return x + self.mlp(self.mlp_norm(x))
        x = self.attn_norm(self.alpha * x + self.attn(x, ctx))
        x = self.cross_attn_norm(self.alpha * x + self.cross_attn(x, memory, cross, kv))
        return self.mlp_norm(self.alpha * x + self.mlp(x))


class Encoder(nn.Module):
    """The encoder stack: its own position module and blocks, bidirectional self-attention, final norm."""

    def __init__(self, spec: EncoderSpec, config: ModelConfig):
        super().__init__()
        d, a = config.d_model, spec.block.attention
        rotary = ModelConfig.rotary_dim.fget(spec)  # the decoder's rule, read from the encoder's position and block
        self.positions = build("position", spec.position, d_model=d, n_heads=a.n_heads, rotary_dim=rotary)
        self.embed_norm = build("norm", config.embedding.norm, d) if config.embedding.norm else nn.Identity()
        mult = self.positions.softmax_scale_mult
        self.blocks = nn.ModuleList(Block(spec.block, d, i, mult) for i in range(spec.n_layers))
        self.final_norm = build("norm", spec.final_norm, d) if spec.final_norm else nn.Identity()
        self.rope_layout = spec.position.rope_layout


class EncoderDecoderLM(LanguageModel):
    """An encoder-decoder LM assembled from a ModelConfig with an `encoder` section.

    forward(input_ids (B, S), decoder_input_ids (B, T), attention_mask (B, S), decoder_attention_mask
    (B, T), both with 1 for real tokens) -> logits (B, T, vocab). `encode` and `decode` split the two
    halves so a generation loop encodes once."""

    def __init__(self, config: ModelConfig):
        if config.encoder is None:
            raise ValueError(f"{config.name}: EncoderDecoderLM needs a config with an `encoder` section")
        super().__init__(config)
        c = config
        self.encoder = Encoder(c.encoder, c)
        mult = self.positions.softmax_scale_mult
        self.blocks = nn.ModuleList(DecoderBlock(spec, c.d_model, i, mult) for i, spec in enumerate(c.blocks))

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The memory (B, S, D): the encoder's output for the source tokens."""
        B, S = input_ids.shape
        _check_mask("attention_mask", attention_mask, (B, S))
        enc = self.encoder
        ctx = stack_context(enc.positions, input_ids, attention_mask, False, enc.rope_layout)
        x = self.embed_tokens(input_ids, ctx.positions, enc.positions, enc.embed_norm)
        for block in enc.blocks:
            x = block(x, ctx)
        return enc.final_norm(x)

    def cross_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every decoder layer's cross-attention keys and values of `memory` (computed once per source)."""
        return [block.cross_attn.memory_kv(memory) for block in self.blocks]

    def decode(
        self,
        decoder_input_ids: Tensor,
        memory: Tensor,
        attention_mask: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        cache: object | None = None,
        cross_kv: list[tuple[Tensor, Tensor]] | None = None,
        logits_to_keep: int = 0,
    ) -> Tensor:
        """Logits (B, T, vocab) of the decoder over `memory`; attention_mask marks the real source tokens.

        cache: a StaticCache for the decoder's self-attention; decoder_input_ids are then the next T
        tokens after those it holds (decoder_attention_mask, if given, covers at least those T).
        cross_kv: `cross_kv(memory)`, to skip projecting the memory again at every step.
        logits_to_keep: the last n positions only (0: all)."""
        B, T = decoder_input_ids.shape
        S = memory.shape[1]
        _check_mask("attention_mask", attention_mask, (B, S))
        dev = decoder_input_ids.device
        if cache is not None:  # slots and positions continue from what the cache holds
            ctx = cache.context(self, decoder_input_ids, decoder_attention_mask, None, None)
        else:
            _check_mask("decoder_attention_mask", decoder_attention_mask, (B, T))
            ctx = stack_context(self.positions, decoder_input_ids, decoder_attention_mask, True, self.rope_layout)
        cross = Context(
            positions=ctx.positions,
            q_index=torch.arange(T, device=dev),
            k_index=torch.arange(S, device=dev),
            key_padding=attention_mask.bool() if attention_mask is not None else None,
            causal=False,
        )
        x = self.embed_tokens(decoder_input_ids, ctx.positions)
        for i, block in enumerate(self.blocks):
            x = block(x, ctx, memory, cross, cross_kv[i] if cross_kv is not None else None)
        if cache is not None:
            cache.advance(T)
        return self.logits(x, logits_to_keep)

    def decoding(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> "Decoding":
        """The source encoded once (memory and every layer's cross-attention K/V), as a decoder-only
        callable for llmzoo.generation: decoding(ids, mask, position_ids, prefix_len=, cache=) -> logits."""
        return Decoding(self, input_ids, attention_mask)

    def forward(
        self,
        input_ids: Tensor,
        decoder_input_ids: Tensor,
        attention_mask: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
    ) -> Tensor:
        memory = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask)


class Decoding(nn.Module):
    """An EncoderDecoderLM with its source encoded: called like a causal LM on decoder tokens
    (forward(input_ids, attention_mask, position_ids, prefix_len=None, cache=StaticCache)), so the
    generation loop, its cache and its compiled step serve encoder-decoder models unchanged. The
    memory and the cross-attention keys/values are computed here, once; each call runs the decoder."""

    prefix_lm = False

    def __init__(self, model: EncoderDecoderLM, input_ids: Tensor, attention_mask: Tensor | None = None):
        super().__init__()
        self.model, self.config = model, model.config
        self.source_mask = attention_mask
        with torch.no_grad():
            self.memory = model.encode(input_ids, attention_mask)
            self.kv = model.cross_kv(self.memory)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        prefix_len: Tensor | None = None,
        cache: object | None = None,
        logits_to_keep: int = 0,
    ) -> Tensor:
        if position_ids is not None or prefix_len is not None:
            raise ValueError("an encoder-decoder decoder takes no position_ids / prefix_len (positions are its slots)")
        return self.model.decode(input_ids, self.memory, self.source_mask, attention_mask, cache, self.kv,
                                 logits_to_keep)

