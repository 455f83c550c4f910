"""What each component kind answers, so params, cache, scaling, parallel, builder and config ask the
component instead of branching on its type. A component subclasses its kind's spec base and module
base and overrides what differs from the defaults (docs/extending.md: who asks what, and an example).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple

from torch import Tensor, nn

from .registry import ComponentSpec

Draw = Callable[[str, Tensor, float], None]  # draw(param name, param, std): fill it with N(0, std)


class KVLayout(NamedTuple):
    """What one layer caches per token: `heads` rows of a `k_dim` key and a `v_dim` value."""

    heads: int
    k_dim: int
    v_dim: int

    @property
    def dims(self) -> int:
        return self.heads * (self.k_dim + self.v_dim)


class KindSpec(ComponentSpec):
    def scaled(self, s: Any) -> "KindSpec":
        """This spec in a scaled-down model (s: llmzoo.scaling.Scaler); default unchanged."""
        return self

    def updated(self, **fields: Any) -> "KindSpec":
        """A validated copy with `fields` replaced."""
        return type(self).model_validate({**self.model_dump(), **fields})


class NormSpecBase(KindSpec):
    def n_params(self, dim: int) -> int:
        raise NotImplementedError(f"norm {self.type!r}: n_params(dim)")


class PositionSpecBase(KindSpec):
    score_bias: ClassVar[bool] = False  # adds a per-head bias to the scores (ALiBi, T5 buckets)
    relative_table: ClassVar[bool] = False  # gives attention a relative-embedding table (DeBERTa)

    def n_params(self, d_model: int, n_heads: int) -> int:
        return 0

    def rotary_dims(self, rotary_head_dim: int) -> int:
        """Dims of each head it rotates, given the attention's rotary_head_dim (0: no rotary)."""
        return 0

    @property
    def rope_layout(self) -> str:
        return "halves"

    def check(self, attention: "AttentionSpecBase", where: str, layer: int) -> None:
        """Raise ValueError if layer `layer`'s attention cannot apply this encoding."""
        if self.score_bias and not attention.takes_score_bias:
            raise ValueError(f"{where}.type: {self.type!r} is not defined for {attention.type.upper()} attention")
        if self.relative_table != attention.reads_relative_table:
            need = "needs" if attention.reads_relative_table else "has no use for"
            raise ValueError(f"{where}.type: {attention.type!r} attention (layer {layer}) {need} a relative "
                             f"embedding table (position type 'relative_embedding'), got {self.type!r}")


class AttentionSpecBase(KindSpec):
    n_heads: int  # query heads (ALiBi slopes and relative-bias tables count them)
    takes_score_bias: ClassVar[bool] = True
    own_positions: ClassVar[str | None] = None  # names the position scheme it computes itself (Transformer-XL)
    reads_relative_table: ClassVar[bool] = False  # projects the position's relative embeddings (DeBERTa)

    @property
    def rotary_head_dim(self) -> int:
        """Dims per head a rotary encoding may act on (0: none)."""
        return 0

    def n_params(self, d_model: int) -> int:
        raise NotImplementedError(f"attention {self.type!r}: n_params(d_model)")

    def kv_layout(self, latent: bool = True) -> KVLayout:
        """Per-token cache layout; latent=False: plain per-head keys/values where a compressed form exists (MLA)."""
        raise NotImplementedError(f"attention {self.type!r}: kv_layout()")

    @property
    def kv_cache_dims(self) -> int:
        return self.kv_layout().dims

    def kv_window(self) -> int | None:
        """Keys a query sees back, itself included (caches keep and group layers by it); None: all."""
        return None

    def cached_tokens(self, max_len: int) -> int:
        w = self.kv_window()
        return min(w, max_len) if w is not None else max_len

    def sees_prefix(self) -> bool:
        """Tokens before prefix_len attend bidirectionally (prefix-LM)."""
        return False

    def tp_local(self, tp: int, where: str) -> "AttentionSpecBase":
        """The spec one of `tp` ranks holds; default whole, matching the module's default tp_plan."""
        return self

    def check_cross(self, where: str) -> None:
        """Raise ValueError unless it can attend over an encoder output."""
        raise ValueError(f"{where}.type: {self.type!r} cannot be used as cross-attention")

    def scaled_d_model(self, s: Any) -> int:
        """d_model of a scaled model whose base block has this attention."""
        return s.heads(self.n_heads, self.n_heads)[0] * s.head_dim


class MLPSpecBase(KindSpec):
    def n_params(self, d_model: int) -> int:
        raise NotImplementedError(f"mlp {self.type!r}: n_params(d_model)")

    def param_parts(self, d_model: int) -> dict[str, tuple[int, int]]:
        """part → (parameters, those one token uses), parts named as in llmzoo.params.count_params."""
        n = self.n_params(d_model)
        return {"mlp": (n, n)}


def default_init(module: nn.Module, std: float, draw: Draw | None = None) -> None:
    """N(0, std) weights (through `draw`), zero biases and buffers; the module's own tensors only."""
    for name, p in module.named_parameters(recurse=False):
        if name.endswith("bias"):
            p.zero_()
        elif draw is None:
            p.normal_(0.0, std)
        else:
            draw(name, p, std)
    for _, b in module.named_buffers(recurse=False):
        b.zero_()


class Module(nn.Module):
    def init_weights(self, std: float, draw: Draw | None = None) -> None:
        """Initialise this module's own tensors (children get their own turn). Sharded init passes a
        `draw` that fills only this rank's slice: use it, or elementwise fills, never the global RNG."""
        default_init(self, std, draw)

    def tp_plan(self, tp: int, ep: bool = False) -> dict:
        """{submodule: ParallelStyle} over `tp` ranks; default {}: whole and the same on every rank."""
        return {}

    def expert_parallel(self) -> list[nn.Module]:
        """Stacked (E, ·, ·) gate/up/down expert modules an expert-parallel split owns; default none."""
        return []


class NormModule(Module):
    def init_weights(self, std: float, draw: Draw | None = None) -> None:
        self.reset_parameters()  # unit gains, zero shifts: never drawn

    def reset_parameters(self) -> None:
        raise NotImplementedError(f"{type(self).__name__}: reset_parameters()")


class AttentionModule(Module):
    def beta_scaled(self) -> list[nn.Module]:
        """What DeepNorm's β multiplies at init (arXiv:2203.00555: value and output projections)."""
        return []


def init_module(module: nn.Module, std: float, draw: Draw | None = None) -> None:
    """One module's own tensors: a component's init_weights, a plain torch module's default_init."""
    (module.init_weights if isinstance(module, Module) else lambda *a: default_init(module, *a))(std, draw)
