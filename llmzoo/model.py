"""The causal language model: embedding → blocks → final norm → head."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Context
from .positions import PositionEncoding
from .block import Block
from .config import HeadTransformSpec, ModelConfig, rotary_dim
from .linear import Linear, linear
from .mlp import activation
from .mtp import MTPLayer
from .parallel import plan as styles
from .registry import build


def stack_context(
    positions: PositionEncoding, ids: Tensor, padding: Tensor | None, causal: bool, rope_layout: str,
    key_pos: Tensor | None = None, query_pos: Tensor | None = None, tables: Callable | None = None,
    prefix_len: Tensor | None = None,
) -> Context:
    """Self-attention context of one stack over ids (B, T), without a cache: slots 0..T-1.

    key_pos (B, T): key positions, the slots by default (T5 computes its relative buckets from slots,
    not counted past padding). query_pos: query positions, key_pos by default. tables(pos) -> (rope,
    layer_rope): the rotary tables (LanguageModel.rotary_tables), by default `positions`' own only."""
    B, T = ids.shape
    index = torch.arange(T, device=ids.device)
    key_pos = index.expand(B, T) if key_pos is None else key_pos
    pos = key_pos if query_pos is None else query_pos
    rope, layer_rope = tables(pos) if tables is not None else (positions.rotary(pos), {})
    return Context(
        positions=pos,
        q_index=index,
        k_index=index,
        rope=rope,
        layer_rope=layer_rope,
        rope_layout=rope_layout,
        bias=positions.bias(pos, key_pos),
        relative=positions.relative,
        key_padding=padding.bool() if padding is not None else None,
        prefix_len=prefix_len,
        causal=causal,
    )


def _check_mask(name: str, mask: Tensor | None, shape: tuple[int, int]) -> None:
    if mask is not None and tuple(mask.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {shape}")


class SoftCap(nn.Module):
    """Logit soft-capping (Gemma-2, arXiv:2408.00118 §2): x → cap·tanh(x / cap)."""

    def __init__(self, cap: float):
        super().__init__()
        self.cap = cap

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / self.cap) * self.cap


class HeadTransform(nn.Module):
    """Masked-LM prediction transform (BERT, arXiv:1810.04805; DeBERTa): x → norm(act(W x + b))."""

    def __init__(self, spec: HeadTransformSpec, d_model: int):
        super().__init__()
        self.dense = Linear(d_model, d_model)
        self.act = activation(spec.activation)
        self.norm = build("norm", spec.norm, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.act(self.dense(x)))


class LanguageModel(nn.Module):
    """What every LM here shares: token embedding (scale, project-in, norm), the position module,
    final norm, project-out and the (tied, biased, scaled or normalised) head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_embed)
        self.embed_in = Linear(c.d_embed, c.d_model, bias=False) if c.d_embed != c.d_model else nn.Identity()
        self.positions = build(
            "position", c.position, d_model=c.d_model, n_heads=c.n_heads, rotary_dim=c.rotary_dim
        )
        self.embed_norm = build("norm", c.embedding.norm, c.d_model) if c.embedding.norm else nn.Identity()
        self.final_norm = build("norm", c.final_norm, c.d_model) if c.final_norm else nn.Identity()
        self.head_transform = HeadTransform(c.head.transform, c.d_model) if c.head.transform else nn.Identity()
        self.embed_out = Linear(c.d_model, c.d_embed, bias=False) if c.d_embed != c.d_model else nn.Identity()
        self.head = None if c.head.tied else Linear(c.d_embed, c.vocab_size, bias=c.head.bias)
        self.head_cap = SoftCap(c.head.softcap) if c.head.softcap is not None else nn.Identity()
        if c.head.tied and c.head.bias:
            self.head_bias = nn.Parameter(torch.zeros(c.vocab_size))
        s = c.embedding.scale
        self.embed_scale = math.sqrt(c.d_model) if s == "sqrt_d_model" else 1.0 if s == "none" else float(s)
        h = c.head.scale
        self.head_scale = c.d_model**-0.5 if h == "inv_sqrt_d_model" else 1.0 if h == "none" else float(h)
        self.rope_layout = c.position.rope_layout
        # layers with their own rotary (block.position): one module per distinct spec
        blocks = getattr(c, "blocks", [])
        specs = {b.position.model_dump_json(): b for b in blocks if b.position is not None}
        keys = list(specs)
        self.layer_positions = nn.ModuleList(
            build("position", b.position, d_model=c.d_model, n_heads=b.attention.n_heads,
                  rotary_dim=rotary_dim(b.position, b.attention))
            for b in specs.values()
        )
        self.layer_position = {
            i: keys.index(b.position.model_dump_json()) for i, b in enumerate(blocks) if b.position is not None
        }

    @property
    def refresh_cache_at(self) -> int | None:
        """Sequence length at which cached keys go stale (see PositionEncoding.refresh_cache_at)."""
        at = [m.refresh_cache_at for m in [self.positions, *self.layer_positions] if m.refresh_cache_at]
        return min(at) if at else None

    def position_of(self, layer: int) -> PositionEncoding:
        """The position module whose rotary table `layer` uses."""
        k = self.layer_position.get(layer)
        return self.positions if k is None else self.layer_positions[k]

    def rotary_tables(self, positions: Tensor) -> tuple[tuple[Tensor, Tensor] | None, dict]:
        """cos/sin of the model's position encoding, and {layer: cos/sin} for layers with their own,
        each distinct table computed once."""
        tables = [m.rotary(positions) for m in self.layer_positions]
        return self.positions.rotary(positions), {i: tables[k] for i, k in self.layer_position.items()}

    def cache_context(self, cache, position_ids: Tensor, q_index: Tensor, k_index: Tensor, keys: Callable,
                      cls: type[Context] = Context, **fields) -> Context:
        """The Context of a forward over a cache's slots (cache.context): queries at q_index, keys at
        k_index and keys(); this model's rotary tables, position bias and relative table."""
        rope, layer_rope = self.rotary_tables(position_ids)
        return cls(positions=position_ids, q_index=q_index, k_index=k_index, rope=rope, layer_rope=layer_rope,
                   rope_layout=self.rope_layout, cache=cache, latent_kv=cache.absorbed, keys=keys,
                   bias_fn=self.positions.bias, relative=self.positions.relative, **fields)

    def embed_tokens(
        self,
        input_ids: Tensor,
        positions: Tensor,
        encoding: PositionEncoding | None = None,
        norm: nn.Module | None = None,
    ) -> Tensor:
        """Token embeddings (B, T, D) with their position embedding and norm (the decoder's by default)."""
        x = self.embed(input_ids)
        if self.embed_scale != 1.0:
            x = x * torch.tensor(self.embed_scale, dtype=x.dtype)  # rounded to x's dtype, as Gemma does
        x = self.embed_in(x)
        pos = (encoding or self.positions).embed(positions)
        if pos is not None:
            x = x + pos.to(x.dtype)
        return (norm or self.embed_norm)(x)

    def logits(self, x: Tensor, keep: int = 0) -> Tensor:
        """Logits of the last `keep` positions of x (B, T, D) (0: all; generation's prefill needs 1)."""
        return self.head_cap(self._logits(x[:, -keep:] if keep else x))

    def linear_weights(self) -> list[nn.Parameter]:
        """Every matrix the forward multiplies by through llmzoo.linear: each nn.Linear's weight and, for a
        tied head, the token embedding (`head.tied`); see layout.tune_layout."""
        ws = [m.weight for m in self.modules() if isinstance(m, nn.Linear)]
        return ws + ([self.embed.weight] if self.head is None else [])

    def _logits(self, x: Tensor) -> Tensor:
        x = self.embed_out(self.head_transform(self.final_norm(x)))
        if self.head_scale != 1.0:
            x = x * self.head_scale
        if self.head is None:
            return linear(x, self.embed.weight, getattr(self, "head_bias", None))
        if self.config.head.normalize:
            return linear(x, F.normalize(self.head.weight, dim=-1), self.head.bias)
        return self.head(x)


class CausalLM(LanguageModel):
    """A decoder-only LM assembled from a ModelConfig.

    forward(input_ids (B, T), attention_mask (B, S) with 1 for real tokens, position_ids (B, T),
    prefix_len (B,) for prefix-LM layers, cache, logits_to_keep: the last n positions only (0: all,
    transformers' argument)) -> logits (B, T or n, vocab)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        scale_mult = self.positions.softmax_scale_mult
        self.blocks = nn.ModuleList(
            Block(spec, c.d_model, i, self.position_of(i).softmax_scale_mult) for i, spec in enumerate(c.blocks)
        )
        self.prefix_lm = any(b.attention.sees_prefix() for b in c.blocks)
        if c.mtp is not None:  # DeepSeek-V3 multi-token prediction: used by llmzoo.mtp.predict_ahead only
            self.mtp = nn.ModuleList(MTPLayer(c, k, scale_mult) for k in range(c.mtp.n_layers))

    def context(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        prefix_len: Tensor | None = None,
        cache: object | None = None,
    ) -> Context:
        """Positions, rotary tables, biases and mask inputs shared by every layer of one forward."""
        B, T = input_ids.shape
        dev = input_ids.device
        if prefix_len is not None and not self.prefix_lm:
            raise ValueError(f"prefix_len given, but no attention layer of {self.config.name} is prefix_lm")
        if cache is not None:  # the cache knows the slots, padding and positions of its keys
            return cache.context(self, input_ids, attention_mask, position_ids, prefix_len)
        _check_mask("attention_mask", attention_mask, (B, T))
        # padding-aware positions: count the real tokens before each slot
        key_pos = None if attention_mask is None else (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return stack_context(self.positions, input_ids, attention_mask, True, self.rope_layout,
                             key_pos, position_ids, self.rotary_tables, prefix_len)

    def tp_plan(self, tp: int, ep: bool = False) -> dict:
        """Tensor-parallel plan of the whole model (llmzoo.parallel.parallelize): vocab-parallel embedding
        and head, then each block's attention and MLP plans (their `tp_plan` methods)."""
        plan = {"embed": styles.RowwiseParallel(input_layouts=styles.Replicate(), output_layouts=styles.Replicate())}
        if self.head is not None and not self.config.head.normalize:
            plan["head"] = styles.ColwiseParallel(output_layouts=styles.Replicate())
        for i, block in enumerate(self.blocks):
            # a component's own parameters (key "") are planned on the component itself
            plan.update({f"blocks.{i}.attn{'.' + k if k else ''}": v for k, v in block.attn.tp_plan(tp, ep=ep).items()})
            plan.update({f"blocks.{i}.mlp.{k}": v for k, v in block.mlp.tp_plan(tp, ep=ep).items()})
        return plan

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        prefix_len: Tensor | None = None,
        cache: object | None = None,
        logits_to_keep: int = 0,
    ) -> Tensor:
        ctx = self.context(input_ids, attention_mask, position_ids, prefix_len, cache)
        x = self.embed_tokens(input_ids, ctx.positions)
        for block in self.blocks:
            x = block(x, ctx)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.logits(x, logits_to_keep)
