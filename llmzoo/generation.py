"""Autoregressive generation over a StaticCache: greedy or seeded sampling, batched left-padded prompts.

`stream(...)` yields the next token of every row per step; `generate(...)` collects them after the
prompt, like transformers' `generate`. Logits are processed in transformers' order: repetition
penalty, then temperature, top-k, top-p; rows that hit an eos/stop id emit `pad_token_id` afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor

from .cache import StaticCache
from .errors import UnsupportedError


def _ids(x: int | Iterable[int] | None) -> list[int]:
    if x is None:
        return []
    return [int(x)] if isinstance(x, int) else [int(i) for i in x]


def repetition_penalty_(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL's penalty (Keskar et al., arXiv:1909.05858, §4.1) as transformers applies it: a score s of
    a token already in the sequence becomes s / penalty if s > 0, else s · penalty. seen (B, V) bool."""
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k highest scores per row (ties with the k-th kept), -inf elsewhere."""
    k = min(k, logits.shape[-1])
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus sampling (Holtzman et al., arXiv:1904.09751): keep the smallest set of most probable
    tokens whose probability mass reaches p (always at least one)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    mass_before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@torch.no_grad()
def stream(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    eos_token_id: int | Iterable[int] | None = None,
    stop_token_ids: Iterable[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    prefix_len: Tensor | None = None,
    position_ids: Tensor | None = None,
    position_step: int | Sequence[int] = 1,
    cache: StaticCache | None = None,
    compile: bool | dict = False,
    decoder_start_token_id: int | None = None,
) -> Iterator[Tensor]:
    """Yield the next token id of every row, (B,), once per step, for up to max_new_tokens steps.

    input_ids (B, P) left-padded prompts with attention_mask (B, P) (1 = real token); positions come
    from the mask. Stops early once every row has produced an eos/stop id; a finished row yields
    pad_token_id (default: the first eos id).
    prefix_len (B,): for prefix-LM models, the slots before it are the bidirectional context
    (default: the whole prompt; GLM's convention is the index of [sop]).
    position_ids: the prompt's positions, (B, P) or GLM's 2-D (B, 2, P); each generated token then
    takes the previous position + position_step (1 counts on; GLM [MASK]: 0; ChatGLM 2-D: (0, 1)).
    Default: positions count the real tokens of the attention mask.
    cache: a StaticCache for ≥ P + max_new_tokens slots (allocated here when None).
    compile: run the one-token decode step through torch.compile(fullgraph=True, dynamic=False) —
    mode "reduce-overhead" (CUDA graphs) on CUDA; a dict gives torch.compile's keyword arguments.
    Every step has the same shapes and reads the offset from the cache's tensors: one graph. The
    compiled step (and, when no cache is given, its cache) is kept on the model and reused by later
    calls with the same batch and length: no recompilation (see `compiled_step`).
    An encoder-decoder model (config.encoder set, T5): input_ids / attention_mask are the source, encoded
    once (with every layer's cross-attention K/V); decoding starts from decoder_start_token_id (default
    pad_token_id if given, else 0: T5's pad) and the cache holds the decoder's self-attention."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if model.config.encoder_only:
        raise UnsupportedError(f"{model.config.name} is an encoder-only masked LM (encoder_only: true): it "
                               "predicts tokens in place and cannot generate")
    if model.config.encoder is not None:  # the prompt is the source; the decoder starts from one token
        model = model.decoding(input_ids, attention_mask)
        start = decoder_start_id(decoder_start_token_id, pad_token_id)
        input_ids = torch.full((input_ids.shape[0], 1), start, dtype=torch.long, device=input_ids.device)
        attention_mask = None
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    B, P = input_ids.shape
    device = input_ids.device
    stops = _ids(eos_token_id) + _ids(stop_token_ids)
    if pad_token_id is None:
        pad_token_id = stops[0] if stops else 0
    if cache is None and compile:  # the compiled step's cache: same buffers, same graph next call
        cache = reused_cache(model, B, P + max_new_tokens)
    elif cache is None:
        cache = StaticCache.for_model(model, B, P + max_new_tokens)
    elif cache.max_len < P + max_new_tokens - 1:
        raise ValueError(f"cache holds {cache.max_len} slots; prompt {P} + {max_new_tokens} new tokens need more")
    cache.reset()
    generator = None
    if do_sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else torch.seed())
    stop_ids = torch.tensor(stops, dtype=torch.long, device=device)
    vocab = model.config.vocab_size
    seen = torch.zeros(B, vocab, dtype=torch.bool, device=device)
    if repetition_penalty is not None:  # prompt tokens count too, padding does not (as in transformers)
        real = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, vocab)
        seen = torch.zeros(B, vocab + 1, dtype=torch.bool, device=device).scatter_(1, real, True)[:, :vocab]
    if prefix_len is None and model.prefix_lm:
        prefix_len = torch.full((B,), P, dtype=torch.long, device=device)
    step_pos = None
    if position_ids is not None:
        last_pos = position_ids[..., -1]  # (B,) or (B, 2)
        pos_step = torch.as_tensor(position_step, dtype=position_ids.dtype, device=device)
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    step_mask = torch.ones(B, 1, dtype=torch.long, device=device)

    decode = compiled_step(model, compile, device) if compile else model
    logits = model(input_ids, attention_mask, position_ids, prefix_len=prefix_len, cache=cache, logits_to_keep=1)[:, -1]
    # LongRoPE: keys cached before the switch to the long factors are re-computed once, at that length
    refresh = getattr(model, "refresh_cache_at", None) if position_ids is None else None
    refresh = refresh if refresh is not None and refresh > P else None
    if refresh is not None:
        seq = input_ids
        seq_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    for step in range(max_new_tokens):
        scores = logits.float()
        if repetition_penalty is not None:
            scores = repetition_penalty_(scores, seen, repetition_penalty)
        if do_sample:
            if temperature != 1.0:
                scores = scores / temperature
            if top_k is not None:
                scores = top_k_filter(scores, top_k)
            if top_p is not None and top_p < 1.0:
                scores = top_p_filter(scores, top_p)
            token = torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]
        else:
            token = scores.argmax(-1)
        token = torch.where(unfinished, token, torch.full_like(token, pad_token_id))
        seen.scatter_(1, token[:, None], True)
        yield token
        if len(stops):
            unfinished &= ~torch.isin(token, stop_ids)
            if not bool(unfinished.any()):
                return
        if step + 1 < max_new_tokens:
            if position_ids is not None:
                last_pos = last_pos + pos_step
                step_pos = last_pos[..., None]
            if refresh is not None:
                seq, seq_mask = torch.cat([seq, token[:, None]], 1), torch.cat([seq_mask, step_mask], 1)
                if seq.shape[1] == refresh:
                    cache.reset()
                    logits = model(seq, seq_mask, prefix_len=prefix_len, cache=cache, logits_to_keep=1)[:, -1]
                    continue
            logits = decode(token[:, None], step_mask, step_pos, prefix_len=prefix_len, cache=cache)[:, -1]


MAX_REUSED_CACHES = 4


def compiled_step(model: torch.nn.Module, compile: bool | dict, device: torch.device):
    """The model through torch.compile(fullgraph=True, dynamic=False, mode "reduce-overhead" on CUDA,
    plus the `compile` dict), made once per model and options and kept in the model's __dict__ (not a
    submodule): a later generate call finds dynamo's graph for its shapes instead of compiling again
    (each torch.compile call is a new backend, which dynamo's guards would not match)."""
    options = dict(compile) if isinstance(compile, dict) else (
        {"mode": "reduce-overhead"} if device.type == "cuda" else {})
    options = {"fullgraph": True, "dynamic": False, **options}
    steps = model.__dict__.setdefault("_llmzoo_compiled_steps", {})
    key = repr(sorted(options.items()))
    if key not in steps:
        steps[key] = torch.compile(model, **options)
    return steps[key]


def reused_cache(model: torch.nn.Module, batch: int, max_len: int) -> StaticCache:
    """A StaticCache kept on the model per (batch, max_len, dtype, device): a compiled step replays
    over the same buffers (CUDA graphs keep their addresses). Its keys and values are zeroed, so a call
    sees the fresh cache it would have had."""
    p = next(model.parameters())
    caches = model.__dict__.setdefault("_llmzoo_caches", {})
    key = (batch, max_len, p.dtype, p.device)
    if key not in caches:
        if len(caches) >= MAX_REUSED_CACHES:  # the oldest goes: a model serving many shapes stays bounded
            caches.pop(next(iter(caches)))
        caches[key] = StaticCache.for_model(model, batch, max_len)
    cache = caches[key]
    for t in [*cache.k, *cache.v]:
        t.zero_()
    return cache


def decoder_start_id(decoder_start_token_id: int | None, pad_token_id: int | None) -> int:
    """An encoder-decoder's first decoder token: given, else the pad id (T5's convention), else 0."""
    if decoder_start_token_id is not None:
        return int(decoder_start_token_id)
    return int(pad_token_id) if pad_token_id is not None else 0


def generate(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None, **kw) -> Tensor:
    """Prompt + generated ids (B, P + N), N ≤ max_new_tokens; keyword arguments as `stream`.
    An encoder-decoder model returns the decoder sequence, start token + generated ids (B, 1 + N),
    as transformers' generate does."""
    tokens = list(stream(model, input_ids, attention_mask, **kw))
    if model.config.encoder is not None:
        start = decoder_start_id(kw.get("decoder_start_token_id"), kw.get("pad_token_id"))
        input_ids = torch.full((input_ids.shape[0], 1), start, dtype=torch.long, device=input_ids.device)
    if not tokens:
        return input_ids
    return torch.cat([input_ids, torch.stack(tokens, dim=1)], dim=1)
