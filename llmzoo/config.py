"""The architecture schema: one `ModelConfig` describes a published model completely.

Every choice a paper makes is a field; components read their own spec (see registry.py).
Per-layer differences (DeepSeek's dense first layers, GPT-3's banded layers) are `overrides`:
partial block specs deep-merged onto `block` for the layers they select.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_serializer, field_validator, model_validator

from .errors import ConfigError, clip
from .registry import Component, Spec

# Bounds on the sizes a config may state: far above every published model (the zoo's largest are
# vocab 256k, d_model 20480, 126 layers, 164k positions), far below what would exhaust memory just
# to describe the model. The parameter count is bounded too, before any module is built
# (builder.check_size).
MAX_VOCAB = 2**24
MAX_D_MODEL = 2**17
MAX_LAYERS = 1024
MAX_SEQ_LEN = 2**24
MAX_SCALE = 1e4  # a multiplier of activations (embedding / head scale, residual α): beyond it float32 overflows


def _check_scale(value: Any, field: str) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 < value <= MAX_SCALE:
        raise ValueError(f"{field}: a numeric scale must lie in (0, {MAX_SCALE:g}], got {value!r}")
    return value

NormField = Component("norm")
PositionField = Component("position")
AttentionField = Component("attention")
MLPField = Component("mlp")


class Reference(Spec):
    paper: str | None = None
    hf_repo: str | None = None
    url: str | None = None


class EmbeddingSpec(Spec):
    scale: Literal["none", "sqrt_d_model"] | float = Field(
        "none", description="multiply token embeddings (Gemma: sqrt_d_model)"
    )
    norm: NormField | None = Field(None, description="norm right after the embedding (BLOOM)")  # type: ignore[valid-type]
    d_embed: int | None = Field(None, gt=0, le=MAX_D_MODEL, description="embedding width if != d_model (OPT-350m project_in/out)")

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: Any) -> Any:
        return _check_scale(v, "scale")


class HeadTransformSpec(Spec):
    """A dense layer (d_model → d_model, with bias), activation and norm between the final hidden state
    and the output matrix: BERT's and DeBERTa's masked-LM prediction head (dense → act → LayerNorm)."""

    activation: Literal["relu", "gelu", "gelu_tanh", "silu"]  # llmzoo.mlp.ACTIVATIONS
    norm: NormField  # type: ignore[valid-type]

    def n_params(self, d_model: int) -> int:
        return d_model * d_model + d_model + self.norm.n_params(d_model)


class LayerConvSpec(Spec):
    """DeBERTa-v2's convolution beside one layer (transformers' deberta_v2 `ConvLayer`, config.json
    conv_kernel_size / conv_groups / conv_act; microsoft/deberta-v2-xlarge, -xxlarge): the layer's
    input x (the embedding output, padding rows zero) goes through a Conv1d over the sequence
    (d_model → d_model, `kernel_size`, zero padding (kernel_size - 1) / 2, `groups`, with bias),
    padding rows set to 0, then `activation`; the layer's output h becomes norm(h + act(conv(x))),
    padding rows zero. Encoder-only: the kernel sees later tokens."""

    kernel_size: int = Field(gt=0, le=1023, description="odd: only then padding (k-1)/2 keeps the length")
    groups: int = Field(1, gt=0, description="conv_groups: d_model must be a multiple")
    activation: Literal["relu", "gelu", "gelu_tanh", "silu", "tanh"]  # llmzoo.mlp.ACTIVATIONS; conv_act
    norm: NormField  # type: ignore[valid-type]
    layer: int = Field(0, ge=0, description="the layer whose input is convolved and whose output it joins")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"kernel_size: {v} is even; padding (k - 1) / 2 keeps the sequence length "
                             "only for an odd kernel")
        return v

    def n_params(self, d_model: int) -> int:
        return d_model * (d_model // self.groups) * self.kernel_size + d_model + self.norm.n_params(d_model)

    def scaled(self, s: Any) -> "LayerConvSpec":
        """Same kernel and activation; groups kept where they divide the scaled width (else their gcd)."""
        return LayerConvSpec.model_validate({**self.model_dump(), "norm": self.norm.scaled(s),
                                             "groups": math.gcd(self.groups, s.d_model)})


class HeadSpec(Spec):
    tied: bool = Field(description="output projection shares the token embedding matrix")
    bias: bool = False
    normalize: bool = Field(False, description="L2-normalise each vocab row before the product (Baichuan-2 NormHead)")
    scale: Literal["none", "inv_sqrt_d_model"] | float = Field(
        "none", description="multiply the final hidden state before the head (T5 v1.0, tied: inv_sqrt_d_model)"
    )
    softcap: float | None = Field(None, gt=0, description="logits → cap·tanh(logits/cap) (Gemma-2 final_logit_softcapping)")
    transform: HeadTransformSpec | None = Field(None, description="dense → act → norm before the output "
                                                "matrix (masked-LM heads: BERT, DeBERTa)")

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: Any) -> Any:
        return _check_scale(v, "scale")


class BlockSpec(Spec):
    """One transformer layer.

    placement: pre  x + F(N(x));  post  N(x + F(x))·;  sandwich  x + N'(F(N(x))) (Gemma-2/3's four norms);
               output  x + N(F(x)), no input norm (OLMo-2's reordered norm, arXiv:2501.00656 §3.2);
               deepnorm  α·N(x) + F(N(x)) (GLM-130B's DeepNorm, arXiv:2203.00555 with the normed residual).
    parallel:  shared_norm  x + Attn(N(x)) + MLP(N(x)) (GPT-J, PaLM, Falcon-7B);
               two_norms  x + Attn(N1(x)) + MLP(N2(x)) (GPT-NeoX, Falcon-40B)."""

    placement: Literal["pre", "post", "sandwich", "output", "deepnorm"] = "pre"
    parallel: Literal["none", "shared_norm", "two_norms"] = "none"
    alpha: float = Field(1.0, gt=0, le=MAX_SCALE, description="residual scale α (DeepNorm: (2N)^½ for GLM-130B)")
    init_beta: float = Field(1.0, gt=0, le=MAX_SCALE, description="DeepNorm β: init scale of value, output and FFN weights")
    norm: NormField  # type: ignore[valid-type]
    attention: AttentionField  # type: ignore[valid-type]
    mlp: MLPField  # type: ignore[valid-type]
    cross_attention: AttentionField | None = Field(  # type: ignore[valid-type]
        None, description="attention over the encoder output, between self-attention and MLP (encoder-decoder)"
    )
    position: PositionField | None = Field(  # type: ignore[valid-type]
        None, description="this layer's own rotary encoding instead of the model's (Gemma-3 local layers: "
        "base 10k vs 1M; SmolLM3 NoPE layers: none); parameter-free, set through `overrides`"
    )

    @property
    def n_norms(self) -> int:
        """Norm modules of one block (each of width d_model), as block.py builds them for the placement."""
        own = {"sandwich": 4}.get(self.placement, 1 if self.parallel == "shared_norm" else 2)
        return own + (1 if self.cross_attention is not None else 0)

    @model_validator(mode="after")
    def _check(self) -> "BlockSpec":
        if self.cross_attention is not None:
            self.cross_attention.check_cross("cross_attention")
            if self.placement not in ("pre", "post") or self.parallel != "none":
                raise ValueError("cross_attention needs placement 'pre' or 'post' and parallel 'none'")
        if self.parallel != "none" and self.placement != "pre":
            raise ValueError(f"parallel: {self.parallel!r} needs placement 'pre', not {self.placement!r}")
        if self.position is not None and self.position.n_params(1, 1):
            raise ValueError(f"position.type: {self.position.type!r} has parameters; a layer's own position "
                             "must be parameter-free (rope, none)")
        if self.alpha != 1.0 and self.placement not in ("post", "deepnorm"):
            raise ValueError(f"alpha: a residual scale needs placement 'post' or 'deepnorm', not {self.placement!r}")
        return self

    def scaled(self, s: Any) -> "BlockSpec":
        """This block in a scaled-down model: every component scales itself (llmzoo.scaling)."""
        parts = dict(norm=self.norm.scaled(s), attention=self.attention.scaled(s), mlp=self.mlp.scaled(s))
        for k, v in (("cross_attention", self.cross_attention), ("position", self.position)):
            if v is not None:
                parts[k] = v.scaled(s)
        return BlockSpec.model_validate({**self.model_dump(), **parts})


class LayerOverride(Spec):
    layers: str | list[int] = Field(description="python slice over layer indices ('1::2', '0:3') or a list")
    block: dict[str, Any] = Field(description="partial block spec deep-merged onto the base block")

    def select(self, n_layers: int) -> list[int]:
        if isinstance(self.layers, list):
            bad = [i for i in self.layers if not 0 <= i < n_layers]
            if bad:
                raise ValueError(f"layers {bad} out of range for n_layers={n_layers}")
            return list(self.layers)
        parts = self.layers.split(":")
        if len(parts) not in (2, 3) or not all(p.strip().lstrip("-").isdigit() or not p.strip() for p in parts):
            raise ValueError(f"layers {self.layers!r} is not a slice such as '1::2' or '0:3'")
        return list(range(n_layers))[slice(*(int(p) if p.strip() else None for p in parts))]


def rotary_dim(pos: Any, attention: Any) -> int:
    """Dims of each head a position scheme rotates (0: none): the position asks the attention."""
    return pos.rotary_dims(attention.rotary_head_dim)


def check_position(pos: Any, blocks: list[BlockSpec], where: str) -> None:
    """Errors for a position scheme that the attention of some layer cannot apply (the position asks)."""
    for i, b in enumerate(blocks):
        pos.check(b.attention, where, i)


def deep_merge(base: dict, patch: dict) -> dict:
    """Merge patch into base; a sub-mapping that names a different `type` replaces the whole entry."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and value.get("type", old.get("type")) == old.get("type"):
            out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class EncoderSpec(Spec):
    """The encoder of an encoder-decoder model (T5, arXiv:1910.10683 §3.1): blocks of bidirectional
    self-attention over the input, sharing the token embedding with the decoder; its output is what
    every decoder block's `cross_attention` reads. The top-level fields describe the decoder."""

    n_layers: int = Field(gt=0, le=MAX_LAYERS)
    position: PositionField  # type: ignore[valid-type]
    block: BlockSpec
    final_norm: NormField | None  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _check(self) -> "EncoderSpec":
        if self.block.cross_attention is not None:
            raise ValueError("block.cross_attention: encoder blocks have no cross-attention")
        return self


class MTPSpec(Spec):
    """DeepSeek-V3's multi-token prediction (arXiv:2412.19437, §2.2): n_layers sequential modules, the
    k-th predicting token i+k+1 from module k-1's state and the embedding of token i+k. Each is one
    block like the base block plus two norms and a (2·d_model → d_model) projection; it shares the
    embedding and the output head. Not part of the plain forward; not in the headline parameter count."""

    n_layers: int = Field(1, gt=0, le=MAX_LAYERS)


class ModelConfig(Spec):
    name: str
    family: str
    reference: Reference = Field(default_factory=Reference)
    published_params: float | None = Field(None, gt=0, description="headline size from the paper / model card")
    published_active_params: float | None = Field(None, gt=0, description="activated per token (MoE)")
    notes: str | None = None
    vocab_size: int = Field(gt=0, le=MAX_VOCAB)
    d_model: int = Field(gt=0, le=MAX_D_MODEL)
    n_layers: int = Field(gt=0, le=MAX_LAYERS)
    max_seq_len: int = Field(gt=0, le=MAX_SEQ_LEN)
    position: PositionField  # type: ignore[valid-type]
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    block: BlockSpec
    overrides: list[LayerOverride] = Field(default_factory=list)
    final_norm: NormField | None  # type: ignore[valid-type]
    head: HeadSpec
    encoder: EncoderSpec | None = Field(None, description="encoder stack: makes this an encoder-decoder model")
    mtp: MTPSpec | None = Field(None, description="multi-token prediction modules (DeepSeek-V3); None: not built")
    encoder_only: bool = Field(
        False, description="every token sees every non-padding token and the head predicts tokens in place "
        "(masked LM: BERT, DeBERTa); built as a MaskedLM, which has no KV cache and no generate")
    layer_conv: LayerConvSpec | None = Field(
        None, description="DeBERTa-v2 xlarge's convolution beside one layer (encoder_only models)")

    _blocks: list[BlockSpec] = PrivateAttr(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise ValueError(f"name {v!r} must be a non-empty word")
        return v

    @field_serializer("published_params", "published_active_params")
    def _count(self, v: float | None) -> float | int | None:
        # a count is a whole number: 7000000000, not 7000000000.0, in YAML, JSON and the CLI
        return int(v) if v is not None and float(v).is_integer() else v

    @model_validator(mode="after")
    def _resolve(self) -> "ModelConfig":
        base = self.block.model_dump()
        blocks = [self.block] * self.n_layers
        for k, ov in enumerate(self.overrides):
            try:
                layers = ov.select(self.n_layers)
                merged = BlockSpec.model_validate(deep_merge(base, ov.block))
            except (ValueError, ValidationError) as e:
                raise ValueError(f"overrides[{k}]: {e}") from None
            for i in layers:
                blocks[i] = merged
        self._blocks = blocks
        check_position(self.position, [b for b in blocks if b.position is None], "position")
        for i, b in enumerate(blocks):
            if b.position is not None:
                check_position(b.position, [b], f"layer {i}: block.position")
        if self.encoder is not None:
            check_position(self.encoder.position, [self.encoder.block], "encoder.position")
        crossing = [i for i, b in enumerate(blocks) if (b.cross_attention is None) == (self.encoder is not None)]
        if crossing and self.encoder is None:
            raise ValueError(f"block.cross_attention (layers {crossing}) needs an `encoder` section to attend to")
        if crossing:
            raise ValueError(f"block.cross_attention: every decoder layer needs one; layers {crossing} have none")
        if self.encoder_only and (self.encoder is not None or self.mtp is not None):
            raise ValueError("encoder_only: a masked LM has no `encoder` section (encoder-decoder) or `mtp` modules")
        if self.layer_conv is not None:
            lc = self.layer_conv
            if not self.encoder_only:
                raise ValueError("layer_conv: needs encoder_only: true (its kernel sees later tokens)")
            if lc.layer >= self.n_layers:
                raise ValueError(f"layer_conv.layer: {lc.layer} is not a layer of {self.n_layers}")
            if self.d_model % lc.groups:
                raise ValueError(f"layer_conv.groups: {lc.groups} does not divide d_model {self.d_model}")
        if self.head.tied and self.head.normalize:
            raise ValueError("head.normalize needs an untied head (its own weight)")
        for where, pos in (("position", self.position), ("encoder.position", getattr(self.encoder, "position", None))):
            if getattr(pos, "type", None) == "learned" and pos.max_positions < self.max_seq_len:
                raise ValueError(f"{where}.max_positions: {pos.max_positions} rows cannot serve max_seq_len "
                                 f"{self.max_seq_len} positions")
        return self

    @property
    def blocks(self) -> list[BlockSpec]:
        """The resolved block spec of each layer (overrides applied)."""
        return self._blocks

    @property
    def d_embed(self) -> int:
        return self.embedding.d_embed or self.d_model

    @property
    def n_heads(self) -> int:
        return self.block.attention.n_heads

    @property
    def rotary_dim(self) -> int:
        return self.position.rotary_dims(self.block.attention.rotary_head_dim)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, width=110)


# A YAML document may not expand (aliases followed) to more nodes than this: a few lines of nested
# aliases ("billion laughs") otherwise make validation and its error message exponentially large.
MAX_YAML_NODES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {clip(key, 80)!r} appears twice (first {seen[key].start_mark})",
                    key_node.start_mark,
                )
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)


def _expanded_size(obj: Any, memo: dict[int, int], limit: int) -> int:
    """Nodes in `obj` with shared (aliased) sub-trees counted once per use; stops past `limit`."""
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, dict):
        items = [*obj.keys(), *obj.values()]
    elif isinstance(obj, list):
        items = obj
    else:
        return 1
    memo[key] = limit + 1  # a cycle (a recursive alias) counts as too large
    n = 1
    for x in items:
        n += _expanded_size(x, memo, limit)
        if n > limit:
            break
    memo[key] = n
    return n


def read_yaml(path: str | Path) -> Any:
    """A YAML file's data; ConfigError names the file for unreadable or non-UTF-8 bytes, invalid or
    duplicated keys, and documents that expand past MAX_YAML_NODES nodes."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {clip(e, 500)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    if _expanded_size(data, {}, MAX_YAML_NODES) > MAX_YAML_NODES:
        raise ConfigError(f"{path}: the YAML expands (aliases followed) to more than {MAX_YAML_NODES} nodes")
    return data


def validate_config(data: Any, where: str) -> ModelConfig:
    """ModelConfig.model_validate with a ConfigError naming `where` (a file, or 'config mapping')."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    if _expanded_size(data, {}, MAX_YAML_NODES) > MAX_YAML_NODES:
        raise ConfigError(f"{where}: the config has more than {MAX_YAML_NODES} nodes")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{where}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None


def load_config(source: str | Path | dict | ModelConfig) -> ModelConfig:
    """A ModelConfig from a YAML path, a mapping or a ModelConfig; errors name the file."""
    if isinstance(source, ModelConfig):
        return source
    if isinstance(source, dict):
        return validate_config(source, "config mapping")
    if not isinstance(source, (str, Path)):
        raise ConfigError(f"config: expected a zoo name, a YAML path, a mapping or a ModelConfig, "
                          f"got {type(source).__name__}")
    return validate_config(read_yaml(source), str(source))
