"""What a component kind answers for itself, so the rest of llmzoo asks instead of branching on its type.

Every kind has a spec base (the YAML side, a pydantic model) and a module base (the nn.Module side).
A component subclasses both and overrides what differs from the defaults; docs/extending.md walks
through one registered from outside the package. Who asks what:

  params   spec.n_params(...), MLP: spec.param_parts(d_model) (total and active per part)
  cache    AttentionSpecBase.kv_layout(latent), .kv_window(), .cached_tokens(max_len)
  scaling  spec.scaled(scaler) for every kind; attention: .scaled_d_model(scaler)
  parallel module.tp_plan(tp, ep) and AttentionSpecBase.tp_local(tp, where) (a rank's spec)
  builder  module.init_weights(std, draw), through `init_module` (norms: their reset_parameters)
  config   PositionSpecBase.rotary_dims / .check(attention) / .rope_layout; attention.check_cross
  block    BlockSpec.n_norms, Block.beta_scaled (config.py, block.py)
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple, Protocol

from torch import Tensor, nn

from .registry import ComponentSpec

Draw = Callable[[str, Tensor, float], None]  # draw(param name, param, std): fill with N(0, std) in place


class Scaler(Protocol):
    """What `llmzoo.scaling.scale_down` hands a spec so it can scale itself (see scaling.py)."""

    full_d_model: int  # d_model of the model being scaled down
    d_model: int  # d_model of the scaled model
    head_dim: int  # preset head dim
    n_experts: int  # preset cap on routed experts
    max_seq_len: int  # preset cap on the sequence length

    def heads(self, n_heads: int, n_kv_heads: int) -> tuple[int, int]: ...  # same sharing class (MHA/GQA/MQA)
    def width(self, n: int) -> int: ...  # an inner width (d_ff, d_expert) scaled like d_model
    def window(self, window: int | None) -> int | None: ...  # a window kept shorter than a test sequence


class KVLayout(NamedTuple):
    """What one layer caches per token: `heads` rows of a `k_dim` key and a `v_dim` value."""

    heads: int
    k_dim: int
    v_dim: int

    @property
    def dims(self) -> int:
        return self.heads * (self.k_dim + self.v_dim)


class KindSpec(ComponentSpec):
    """Defaults every component spec shares."""

    def scaled(self, s: Scaler) -> "KindSpec":
        """This spec in a scaled-down model (default: unchanged)."""
        return self

    def updated(self, **fields: Any) -> "KindSpec":
        """A validated copy with `fields` replaced."""
        return type(self).model_validate({**self.model_dump(), **fields})


class NormSpecBase(KindSpec):
    def n_params(self, dim: int) -> int:
        raise NotImplementedError(f"norm {self.type!r}: n_params(dim)")


class PositionSpecBase(KindSpec):
    """score_bias: adds a per-head bias to attention scores (the attention must take one)."""

    score_bias: ClassVar[bool] = False

    def n_params(self, d_model: int, n_heads: int) -> int:
        return 0

    def rotary_dims(self, rotary_head_dim: int) -> int:
        """Dims of each head this encoding rotates, given what the attention offers (0: no rotary)."""
        return 0

    @property
    def rope_layout(self) -> str:
        """How rotary pairs are laid out in a head ('halves', 'interleaved', ...)."""
        return "halves"

    def check(self, attention: "AttentionSpecBase", where: str, layer: int) -> None:
        """Raise ValueError if layer `layer`'s attention cannot apply this encoding."""
        if self.score_bias and not attention.takes_score_bias:
            raise ValueError(f"{where}.type: {self.type!r} is not defined for {attention.type.upper()} attention")


class AttentionSpecBase(KindSpec):
    """n_heads: query heads (ALiBi slopes and relative-bias tables count them)."""

    n_heads: int
    takes_score_bias: ClassVar[bool] = True  # accepts an additive position bias (ALiBi, T5 buckets)

    @property
    def rotary_head_dim(self) -> int:
        """Dims per head a rotary encoding may act on (0: none)."""
        return 0

    def sees_prefix(self) -> bool:
        """Tokens before prefix_len attend bidirectionally in this layer (prefix-LM)."""
        return False

    def n_params(self, d_model: int) -> int:
        raise NotImplementedError(f"attention {self.type!r}: n_params(d_model)")

    def kv_layout(self, latent: bool = True) -> KVLayout:
        """What a KV cache holds per token for this layer; latent=False asks for plain per-head keys
        and values where the kind also has a compressed form (MLA)."""
        raise NotImplementedError(f"attention {self.type!r}: kv_layout()")

    @property
    def kv_cache_dims(self) -> int:
        """Elements cached per token per layer."""
        return self.kv_layout().dims

    def kv_window(self) -> int | None:
        """Keys a query sees back, itself included (a sliding window; caches group layers by it);
        None: every earlier key."""
        return None

    def cached_tokens(self, max_len: int) -> int:
        """Rows a cache of max_len slots keeps for this layer."""
        w = self.kv_window()
        return min(w, max_len) if w is not None else max_len

    def tp_local(self, tp: int, where: str) -> "AttentionSpecBase":
        """The spec as one of `tp` tensor-parallel ranks holds it (default: whole on every rank,
        matching the module's default empty tp_plan)."""
        return self

    def check_cross(self, where: str) -> None:
        """Raise ValueError unless this spec can attend over an encoder output."""
        raise ValueError(f"{where}.type: {self.type!r} cannot be used as cross-attention")

    def scaled_d_model(self, s: Scaler) -> int:
        """d_model of a scaled model whose base block has this attention."""
        return s.heads(self.n_heads, self.n_heads)[0] * s.head_dim


class MLPSpecBase(KindSpec):
    def n_params(self, d_model: int) -> int:
        raise NotImplementedError(f"mlp {self.type!r}: n_params(d_model)")

    def param_parts(self, d_model: int) -> dict[str, tuple[int, int]]:
        """part → (parameters, of which one token uses); parts as llmzoo.params.count_params names them."""
        n = self.n_params(d_model)
        return {"mlp": (n, n)}


# --------------------------------------------------------------------------------- modules


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
    """Defaults every component module shares (subclass it, or a kind base below)."""

    def init_weights(self, std: float, draw: Draw | None = None) -> None:
        """Initialise this module's own parameters (not its children's; they get their own turn).
        draw(name, p, std) fills a weight with N(0, std); sharded init passes one that draws a slice."""
        default_init(self, std, draw)

    def tp_plan(self, tp: int, ep: bool = False) -> dict:
        """{submodule name: ParallelStyle} for `tp` tensor-parallel ranks (llmzoo.parallel);
        default {}: the module stays whole and computes the same on every rank."""
        return {}


class NormModule(Module):
    """A norm: initialised by its own reset_parameters() (unit gains, zero shifts), never drawn."""

    def init_weights(self, std: float, draw: Draw | None = None) -> None:
        self.reset_parameters()

    def reset_parameters(self) -> None:
        raise NotImplementedError(f"{type(self).__name__}: reset_parameters()")


class AttentionModule(Module):
    """An attention layer: forward(x, ctx) with ctx an llmzoo.attention.Context."""

    def beta_scaled(self) -> list[nn.Module]:
        """Submodules DeepNorm's β multiplies at init (arXiv:2203.00555: value and output projections)."""
        return []


def init_module(module: nn.Module, std: float, draw: Draw | None = None) -> None:
    """Initialise one module's own parameters as the protocol says: a component's init_weights,
    a plain torch module (Linear, Embedding) by default_init."""
    (module.init_weights if isinstance(module, Module) else lambda *a: default_init(module, *a))(std, draw)
