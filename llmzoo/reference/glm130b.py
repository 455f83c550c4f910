"""An independent reference of the official GLM forward, for parity checks (tests and `llmzoo verify`).

Written line by line from the code the released weights run on, and sharing no code with llmzoo's
builder (it imports torch only):

- GLM-130B: SwissArmyTransformer 0.2.12 `model/official/glm130B_model.py` (DeepNormWithGLUMixin.
  layer_forward, SelfAttentionWithFP32SoftmaxMixin.attention_fn, RotaryEmbeddingMixin.attention_forward,
  GEGLU), `model/position_embedding/rotary_embeddings.py` (RotaryEmbedding, apply_rotary_pos_emb_index)
  and THUDM/GLM-130B `generate.py` (get_masks_and_position_ids).
- ChatGLM-6B: THUDM/chatglm-6b `modeling_chatglm.py` (GLMBlock, SelfAttention with
  position_encoding_2d, attention_fn, gelu_impl, get_masks / get_position_ids).

It runs the tensor-parallel computation itself: given the per-rank state dicts of an official
`mp_rank_XX_model_states.pt` checkpoint it computes each rank's heads and GeGLU partition, sums the
row-parallel partial outputs (the all-reduce) and concatenates the vocab-parallel logits (the
gather), so it checks a merge of the shards without using one. Layout follows the official code:
hidden states are [seq, batch, hidden]; the mask is bool with True = do not attend.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# ------------------------------------------------------------------ masks and position ids


def glm130b_masks_and_position_ids(seq: list[int], mask_position: int, max_gen_length: int, gmask: bool):
    """THUDM/GLM-130B generate.py get_masks_and_position_ids for one sequence `seq` that ends with [sop].

    Returns (attention_mask (1, 1, L, L) bool True = masked, position_ids (1, L)) with
    L = len(seq) + max_gen_length: everything before [sop] is visible to every token, [sop] and the
    generated tokens are causal; position ids are a range ([gMASK]) or, for [MASK]/[sMASK], [sop] and
    every generated token take the mask token's index."""
    context_length = len(seq)
    total = context_length + max_gen_length
    attention_mask = torch.ones((1, total, total))
    attention_mask.tril_()
    attention_mask[..., : context_length - 1] = 1
    attention_mask.unsqueeze_(1)
    attention_mask = (attention_mask < 0.5).bool()
    position_ids = torch.arange(total, dtype=torch.long)
    if not gmask:
        position_ids[context_length - 1 :] = mask_position
    return attention_mask, position_ids.unsqueeze(0)


def chatglm_masks_and_position_ids(seq: list[int], bos_index: int, mask_position: int):
    """chatglm-6b get_masks / get_position_ids (position_encoding_2d) for one sequence.

    bos_index: index of the bos ([sop]) token; keys before it are visible to all. Position ids
    (1, 2, L): row 0 is a range with bos and after set to the mask position (both [MASK] and
    [gMASK] in the 2-D scheme), row 1 (block positions) is 0 over the context and 1, 2, ... from bos."""
    total = len(seq)
    attention_mask = torch.ones((1, total, total))
    attention_mask.tril_()
    attention_mask[..., :bos_index] = 1
    attention_mask.unsqueeze_(1)
    attention_mask = (attention_mask < 0.5).bool()
    position_ids = torch.arange(total, dtype=torch.long)
    position_ids[bos_index:] = mask_position
    block_position_ids = torch.cat(
        (torch.zeros(bos_index, dtype=torch.long), torch.arange(total - bos_index, dtype=torch.long) + 1)
    )
    return attention_mask, torch.stack((position_ids, block_position_ids), dim=0).unsqueeze(0)


# --------------------------------------------------------------------------- rotary table


def rotary_table(dim: int, seq_len: int, base: float = 10000, half: bool = True) -> tuple[Tensor, Tensor]:
    """RotaryEmbedding.forward of the pinned code: inv_freq rounded to fp16, positions t in fp16,
    freqs = t ⊗ inv_freq in fp16, emb = [freqs, freqs], cos/sin in fp16. Returns (seq_len, dim) each.

    half=False: the textbook fp32 table (no rounding), for comparison only."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
    if half:
        inv_freq = inv_freq.half()
    t = torch.arange(seq_len, dtype=inv_freq.dtype)
    freqs = torch.einsum("i,j->ij", t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=x1.ndim - 1)


def _apply_rotary_index(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, position_id: Tensor):
    # position_id: [sq, b], q, k: [sq, b, np, hn], cos: [seq, hn] -> [sq, b, 1, hn]
    cos, sin = F.embedding(position_id, cos).unsqueeze(2), F.embedding(position_id, sin).unsqueeze(2)
    # the official table has the activations' dtype (fp16 runs); an fp32 run promotes it exactly
    cos, sin = cos.to(q.dtype), sin.to(q.dtype)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


# ------------------------------------------------------------------------------ the layer


def _gelu_tanh(x: Tensor) -> Tensor:
    """chatglm-6b gelu_impl ("OpenAI's gelu")."""
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


def _attention_fn(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, layer_id: int) -> Tensor:
    """SelfAttentionWithFP32SoftmaxMixin.attention_fn without apex: q / (sqrt(hn)·(l+1)), baddbmm,
    masked_fill -10000, ×(l+1) in fp32, fp32 softmax, probs back to the input dtype, bmm with v."""
    sq, b, nh, hn = q.shape
    coeff = float(layer_id + 1)
    q = q / (math.sqrt(hn) * coeff)
    output_size = (b, nh, sq, k.size(0))
    q = q.reshape(output_size[2], b * nh, -1)
    k = k.reshape(output_size[3], b * nh, -1)
    scores = torch.baddbmm(
        torch.empty(b * nh, output_size[2], output_size[3], dtype=q.dtype),
        q.transpose(0, 1),
        k.transpose(0, 1).transpose(1, 2),
        beta=0.0,
        alpha=1.0,
    ).view(*output_size)
    scores = scores.masked_fill(mask, -10000.0)
    dtype = scores.dtype
    probs = F.softmax(scores.float() * coeff, dim=-1).to(dtype)
    out_size = (v.size(1), v.size(2), sq, v.size(3))
    v = v.reshape(v.size(0), out_size[0] * out_size[1], -1)
    probs = probs.view(out_size[0] * out_size[1], out_size[2], -1)
    context = torch.bmm(probs, v.transpose(0, 1)).view(*out_size)
    context = context.permute(2, 0, 1, 3).contiguous()
    return context.view(*context.size()[:-2], nh * hn)


def _layer_norm(x: Tensor, sd: dict, name: str, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def _self_attention(
    x: Tensor, w: Tensor, b: Tensor, np_: int, mask: Tensor, position_ids: Tensor, cos: Tensor, sin: Tensor,
    layer_id: int, position_encoding_2d: bool,
) -> Tensor:
    """RotaryEmbeddingMixin.attention_forward / SelfAttention.forward up to the output projection, for
    one rank's `np_` heads: x [sq, b, h] -> context [sq, b, np_ * hn]."""
    mixed = F.linear(x, w, b)
    mixed = mixed.view(*mixed.size()[:-1], np_, mixed.size(-1) // np_)  # [sq, b, np, 3 * hn]
    q, k, v = torch.split(mixed, mixed.size(-1) // 3, dim=-1)
    if position_encoding_2d:
        q1, q2 = q.chunk(2, dim=q.ndim - 1)
        k1, k2 = k.chunk(2, dim=k.ndim - 1)
        pos, block = position_ids[:, 0, :].transpose(0, 1), position_ids[:, 1, :].transpose(0, 1)
        q1, k1 = _apply_rotary_index(q1, k1, cos, sin, pos)
        q2, k2 = _apply_rotary_index(q2, k2, cos, sin, block)
        q, k = torch.cat([q1, q2], dim=q1.ndim - 1), torch.cat([k1, k2], dim=k1.ndim - 1)
    else:
        q, k = _apply_rotary_index(q, k, cos, sin, position_ids.transpose(0, 1))
    return _attention_fn(q, k, v, mask, layer_id)


def _layer_forward(
    h: Tensor,
    ranks: list[dict],
    i: int,
    mask: Tensor,
    position_ids: Tensor,
    cos: Tensor,
    sin: Tensor,
    *,
    num_heads: int,
    alpha: float,
    eps: float,
    glu: bool,
    position_encoding_2d: bool,
) -> Tensor:
    """DeepNormWithGLUMixin.layer_forward / GLMBlock.forward over `len(ranks)` tensor-parallel ranks."""
    p = f"transformer.layers.{i}."
    tp = len(ranks)
    attention_input = _layer_norm(h, ranks[0], p + "input_layernorm", eps)
    attention_output = 0
    for sd in ranks:  # each rank holds num_heads / tp heads; RowParallelLinear sums the partial outputs
        context = _self_attention(
            attention_input, sd[p + "attention.query_key_value.weight"], sd[p + "attention.query_key_value.bias"],
            num_heads // tp, mask, position_ids, cos, sin, i, position_encoding_2d,
        )
        attention_output = attention_output + F.linear(context, sd[p + "attention.dense.weight"])
    attention_output = attention_output + ranks[0][p + "attention.dense.bias"]
    hidden = attention_input * alpha + attention_output
    mlp_input = _layer_norm(hidden, ranks[0], p + "post_attention_layernorm", eps)
    mlp_output = 0
    for sd in ranks:
        inter = F.linear(mlp_input, sd[p + "mlp.dense_h_to_4h.weight"], sd[p + "mlp.dense_h_to_4h.bias"])
        if glu:  # GEGLU: x1 * gelu(x2) on this rank's [linear_r | gelu_r]
            x1, x2 = inter.chunk(2, dim=inter.ndim - 1)
            inter = x1 * F.gelu(x2)
        else:
            inter = _gelu_tanh(inter)
        mlp_output = mlp_output + F.linear(inter, sd[p + "mlp.dense_4h_to_h.weight"])
    mlp_output = mlp_output + ranks[0][p + "mlp.dense_4h_to_h.bias"]
    return mlp_input * alpha + mlp_output


def glm_forward(
    ranks: list[dict],
    input_ids: Tensor,
    position_ids: Tensor,
    attention_mask: Tensor,
    *,
    num_layers: int,
    num_heads: int,
    eps: float = 1e-5,
    alpha: float | None = None,
    glu: bool = True,
    position_encoding_2d: bool = False,
    lm_head: Tensor | None = None,
    half_table: bool = True,
) -> Tensor:
    """Logits (batch, seq, vocab) of the official forward.

    ranks: per-rank state dicts with the official names (`transformer.word_embeddings.weight`,
    `transformer.layers.N.attention.query_key_value.weight`, ...), one entry for an unsharded model.
    input_ids (b, s); position_ids (b, s), or (b, 2, s) with position_encoding_2d; attention_mask
    (b or 1, 1, s, s) bool, True = masked. alpha: None gives GLM-130B's (2·num_layers)^½ (ChatGLM-6B
    passes (2·28)^½ whatever its depth). glu: GeGLU (GLM-130B) or a gelu_tanh MLP (ChatGLM-6B).
    lm_head: a separate output matrix (ChatGLM-6B); None ties it to the word embeddings."""
    if alpha is None:
        alpha = (2 * num_layers) ** 0.5
    tp = len(ranks)
    # VocabParallelEmbedding: each rank looks up its row range, zeros elsewhere, all-reduce sums
    h = 0
    start = 0
    for sd in ranks:
        w = sd["transformer.word_embeddings.weight"]
        local = input_ids - start
        outside = (local < 0) | (local >= w.shape[0])
        e = F.embedding(local.masked_fill(outside, 0), w)
        h = h + e.masked_fill(outside[..., None], 0.0)
        start += w.shape[0]
    h = h.transpose(0, 1)  # [s, b, hidden]
    hn = ranks[0]["transformer.layers.0.attention.query_key_value.weight"].shape[0] * tp // (3 * num_heads)
    rot_dim = hn // 2 if position_encoding_2d else hn
    cos, sin = rotary_table(rot_dim, int(position_ids.max()) + 1, half=half_table)
    for i in range(num_layers):
        h = _layer_forward(
            h, ranks, i, attention_mask, position_ids, cos, sin,
            num_heads=num_heads, alpha=alpha, eps=eps, glu=glu, position_encoding_2d=position_encoding_2d,
        )
    h = _layer_norm(h, ranks[0], "transformer.final_layernorm", eps)
    if lm_head is not None:
        return F.linear(h, lm_head).transpose(0, 1).contiguous()
    # FinalForwardMixin per rank, then gather_from_model_parallel_region along the vocab
    parts = [F.linear(h, sd["transformer.word_embeddings.weight"]) for sd in ranks]
    return torch.cat(parts, dim=-1).transpose(0, 1).contiguous()


# ------------------------------------------------------------------ loud random official weights


def random_official_state(
    *,
    vocab: int,
    hidden: int,
    num_layers: int,
    num_heads: int,
    inner: int,
    glu: bool = True,
    lm_head: bool = False,
    rotary_dim: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """An unsharded state dict with the official names and shapes, every tensor drawn loudly
    (norm weights 1 ± 0.3, non-zero biases, matrices ~ 1/sqrt(fan_in)), plus a replicated
    `rotary_emb.inv_freq` buffer per layer as the official module registers one (width rotary_dim,
    default the head dim; ChatGLM-6B's 2-D scheme uses half of it)."""
    g = torch.Generator().manual_seed(seed)

    def mat(out: int, fan_in: int) -> Tensor:
        return torch.randn(out, fan_in, generator=g) / math.sqrt(fan_in)

    def vec(n: int, scale: float = 0.1) -> Tensor:
        return torch.randn(n, generator=g) * scale

    def norm(prefix: str, sd: dict) -> None:
        sd[prefix + ".weight"] = 1.0 + (torch.rand(hidden, generator=g) - 0.5) * 0.6
        sd[prefix + ".bias"] = vec(hidden)

    sd: dict[str, Tensor] = {"transformer.word_embeddings.weight": torch.randn(vocab, hidden, generator=g)}
    up = 2 * inner if glu else inner
    rot = rotary_dim or hidden // num_heads
    for i in range(num_layers):
        p = f"transformer.layers.{i}."
        norm(p + "input_layernorm", sd)
        sd[p + "attention.query_key_value.weight"] = mat(3 * hidden, hidden)
        sd[p + "attention.query_key_value.bias"] = vec(3 * hidden)
        sd[p + "attention.dense.weight"] = mat(hidden, hidden)
        sd[p + "attention.dense.bias"] = vec(hidden)
        sd[p + "attention.rotary_emb.inv_freq"] = (1.0 / 10000 ** (torch.arange(0, rot, 2).float() / rot)).half()
        norm(p + "post_attention_layernorm", sd)
        sd[p + "mlp.dense_h_to_4h.weight"] = mat(up, hidden)
        sd[p + "mlp.dense_h_to_4h.bias"] = vec(up)
        sd[p + "mlp.dense_4h_to_h.weight"] = mat(hidden, inner)
        sd[p + "mlp.dense_4h_to_h.bias"] = vec(hidden)
    norm("transformer.final_layernorm", sd)
    if lm_head:
        sd["lm_head.weight"] = mat(vocab, hidden)
    return {k: v.to(dtype) if v.is_floating_point() and k.find("inv_freq") < 0 else v for k, v in sd.items()}


# ------------------------------------------------------------------ ChatGLM-6B as a module


class ChatGLMReference(torch.nn.Module):
    """ChatGLM-6B (THUDM/chatglm-6b modeling_chatglm.py) with the checkpoint's parameter names:
    GLMBlock (post-LN with α = (2·28)^½ whatever the depth, since its num_layers argument is never
    passed), SelfAttention with position_encoding_2d, attention_fn (fp32 softmax, -10000 fill),
    the GLU class's gelu_impl MLP. Each module runs its own part, so forward hooks see every sub-layer;
    module outputs are batch-first (b, s, h) — the official [s, b, h] layout is used inside attention,
    and norms, residuals and the MLP are position-wise, so the values are the official ones.

    forward(input_ids, attention_mask (b, s) 1 = real token, position_ids (b, 2, s) or (b, s), glm_mask
    (b, 1, s, s) bool True = masked, or prefix_len (b,): the tokens before it are the context):
    without glm_mask the mask is causal (keys before prefix_len visible to all) with padded keys masked;
    without position_ids, positions count the real tokens (padding-aware, as the chatglm tokenizer
    builds them); block positions default to 0."""

    def __init__(self, hf: dict):
        super().__init__()
        self.hf_config = dict(hf)  # what save_reference writes as config.json
        d, v, n, f = hf["hidden_size"], hf["vocab_size"], hf["num_layers"], hf["inner_hidden_size"]
        eps = hf.get("layernorm_epsilon", 1e-5)
        self.num_layers, self.num_heads, self.eps = n, hf["num_attention_heads"], eps
        self.two_d = hf.get("position_encoding_2d", True)
        self.tied = hf.get("tie_word_embeddings", True)
        nn = torch.nn
        heads, two_d, alpha = self.num_heads, self.two_d, (2 * 28) ** 0.5

        class Attention(nn.Module):
            def __init__(self):
                super().__init__()
                self.query_key_value = nn.Linear(d, 3 * d)
                self.dense = nn.Linear(d, d)

            def forward(self, x, mask, position_ids, cos, sin, layer_id):  # x (b, s, h)
                context = _self_attention(x.transpose(0, 1), self.query_key_value.weight, self.query_key_value.bias,
                                          heads, mask, position_ids, cos, sin, layer_id, two_d)
                return self.dense(context).transpose(0, 1)

        class MLP(nn.Module):
            def __init__(self):
                super().__init__()
                self.dense_h_to_4h = nn.Linear(d, f)
                self.dense_4h_to_h = nn.Linear(f, d)

            def forward(self, x):
                return self.dense_4h_to_h(_gelu_tanh(self.dense_h_to_4h(x)))

        class Layer(nn.Module):
            def __init__(self, layer_id):
                super().__init__()
                self.layer_id = layer_id
                self.input_layernorm = nn.LayerNorm(d, eps=eps)
                self.attention = Attention()
                self.post_attention_layernorm = nn.LayerNorm(d, eps=eps)
                self.mlp = MLP()

            def forward(self, h, mask, position_ids, cos, sin):
                attention_input = self.input_layernorm(h)
                attention_output = self.attention(attention_input, mask, position_ids, cos, sin, self.layer_id)
                hidden = attention_input * alpha + attention_output
                mlp_input = self.post_attention_layernorm(hidden)
                return mlp_input * alpha + self.mlp(mlp_input)

        class Transformer(nn.Module):
            def __init__(self):
                super().__init__()
                self.word_embeddings = nn.Embedding(v, d)
                self.layers = nn.ModuleList(Layer(i) for i in range(n))
                self.final_layernorm = nn.LayerNorm(d, eps=eps)

        self.transformer = Transformer()
        self.lm_head = nn.Linear(d, v, bias=False)
        if self.tied:
            self.lm_head.weight = self.transformer.word_embeddings.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                glm_mask: Tensor | None = None, prefix_len: Tensor | None = None) -> Tensor:
        b, s = input_ids.shape
        if glm_mask is None:  # get_masks: ones, tril, the context columns all ones, < 0.5
            glm_mask = torch.ones((b, s, s)).tril_()
            for i, n in enumerate(prefix_len.tolist() if prefix_len is not None else []):
                glm_mask[i, :, :n] = 1
            if attention_mask is not None:
                glm_mask = glm_mask * attention_mask[:, None, :].float()
            glm_mask = (glm_mask < 0.5)[:, None]
        if position_ids is None:  # a range over the real tokens, as the chatglm tokenizer pads them
            ones = attention_mask.long() if attention_mask is not None else torch.ones(b, s, dtype=torch.long)
            position_ids = (ones.cumsum(-1) - 1).clamp(min=0)
        if self.two_d and position_ids.dim() == 2:
            position_ids = torch.stack([position_ids, torch.zeros_like(position_ids)], dim=1)
        hn = self.transformer.word_embeddings.weight.shape[1] // self.num_heads
        cos, sin = rotary_table(hn // 2 if self.two_d else hn, int(position_ids.max()) + 1)
        h = self.transformer.word_embeddings(input_ids)
        for layer in self.transformer.layers:
            h = layer(h, glm_mask, position_ids, cos, sin)
        return self.lm_head(self.transformer.final_layernorm(h))
