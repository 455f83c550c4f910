"""Continuous batching over a PagedCache (Orca, Yu et al. OSDI'22; vLLM, Kwon et al. arXiv:2309.06180).

Every `step()` the scheduler retires finished requests and admits waiting ones, so a request joins
or leaves the batch between any two tokens. A step spends a token budget: running requests first
(one token each when decoding, a chunk of their prompt when prefilling — chunked prefill), then
waiting requests in arrival order while blocks and budget last. When a running request needs a
block and none is free, the latest admitted request is preempted by recompute: its blocks are
freed and it waits again with its prompt + generated tokens as the new prompt.

Decode rows (one new token) and prefill rows run as two forwards, so a 1-token row is never padded
to a prompt chunk's width. Each request has its own sampling settings, generator and stop rules;
logits are processed in `llmzoo.generation`'s order, so a greedy (or seeded) request yields the
tokens `llmzoo.generate` gives for its prompt alone.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import UnsupportedError
from .generation import repetition_penalty_, top_k_filter, top_p_filter
from .paged import PagedCache


@dataclass
class SamplingParams:
    """Per-request settings. temperature 0: greedy; > 0: sample (then top_k, top_p apply).

    stop_token_ids: end the request (the stop token is part of the output, as llmzoo.generate
    emits it); the model's eos ids stop it too unless ignore_eos."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop_token_ids: Sequence[int] = ()
    ignore_eos: bool = False

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be ≥ 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be ≥ 1, got {self.top_k}")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


@dataclass(eq=False)
class Request:
    id: object
    prompt: list[int]
    params: SamplingParams
    output: list[int] = field(default_factory=list)
    computed: int = 0  # tokens of prompt + output held in the cache
    finish_reason: str | None = None  # "stop", "length" or "abort"
    arrival: float = field(default_factory=time.perf_counter)
    token_times: list[float] = field(default_factory=list)
    n_preempted: int = 0
    generator: torch.Generator | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Engine:
    """Continuous-batching generation for a CausalLM over a paged KV cache.

    n_blocks: blocks per pool (default: max_seqs sequences of min(max_len, 1024)); block_size: tokens
    per block; max_batch_tokens: tokens one step may feed (chunked prefill budget); max_seqs: requests
    running at once; eos_token_ids: stop every request unless it sets ignore_eos; max_len: longest
    prompt + output (default the model's max_seq_len)."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        n_blocks: int | None = None,
        block_size: int = 16,
        max_batch_tokens: int = 256,
        max_seqs: int = 32,
        eos_token_ids: Iterable[int] = (),
        max_len: int | None = None,
    ):
        if not hasattr(model, "blocks") or not hasattr(model, "prefix_lm"):
            raise UnsupportedError(f"{type(model).__name__}: the engine serves decoder-only CausalLM models only")
        self.model = model
        self.max_len = max_len or model.config.max_seq_len
        self.block_size, self.max_seqs, self.max_batch_tokens = block_size, max_seqs, max_batch_tokens
        if n_blocks is None:  # max_seqs sequences of up to 1024 tokens; longer ones preempt each other
            n_blocks = max_seqs * -(-min(self.max_len, 1024) // block_size)
        self.cache = PagedCache.for_model(model, n_blocks, block_size)
        self.eos = [int(i) for i in eos_token_ids]
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._ids = itertools.count()
        self.stats = {"steps": 0, "preemptions": 0, "aborted": 0, "max_blocks": 0, "util": []}
        self.device = next(model.parameters()).device

    # ---------------------------------------------------------------- requests in and out

    def check(self, prompt: Sequence[int], params: SamplingParams) -> None:
        """Raise ValueError if this request can never run here (read-only: safe from any thread)."""
        if not prompt:
            raise ValueError("prompt is empty: at least one token is needed")
        if len(prompt) >= self.max_len:
            raise ValueError(f"prompt has {len(prompt)} tokens; the model holds {self.max_len} (prompt + output)")
        vocab = self.model.config.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise ValueError(f"prompt token ids must lie in [0, {vocab})")
        if self.cache.blocks_for(len(prompt) + 1) > self.cache.n_blocks:
            raise ValueError(f"prompt of {len(prompt)} tokens needs more than the pool's {self.cache.n_blocks} blocks")

    def add(self, prompt: Sequence[int], params: SamplingParams | None = None, request_id=None) -> Request:
        """Queue a request; it joins the batch at the next step with room for it."""
        params = params or SamplingParams()
        prompt = [int(t) for t in prompt]
        self.check(prompt, params)
        return self.enqueue(Request(next(self._ids) if request_id is None else request_id, prompt, params))

    def enqueue(self, req: Request) -> Request:
        """Queue a Request built (and `check`ed) by the caller."""
        if req.params.temperature > 0 and req.generator is None:
            req.generator = torch.Generator(device=self.device)
            req.generator.manual_seed(req.params.seed if req.params.seed is not None else torch.seed())
        self.waiting.append(req)
        return req

    def abort(self, req: Request) -> None:
        """Drop a request (a client went away): its blocks go back to the pool at once."""
        if req.finished:
            return
        self.stats["aborted"] += 1
        if req in self.waiting:
            self.waiting.remove(req)
        if req in self.running:
            self.running.remove(req)
            self.cache.free(req.id)
        req.finish_reason = "abort"

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def run(self, prompts: Iterable[Sequence[int]], params: SamplingParams | Sequence[SamplingParams] | None = None):
        """Generate for every prompt at once; the generated ids of each, in order."""
        prompts = list(prompts)
        per = params if isinstance(params, (list, tuple)) else [params] * len(prompts)
        reqs = [self.add(p, s) for p, s in zip(prompts, per)]
        while self.has_work:
            self.step()
        return [r.output for r in reqs]

    # ---------------------------------------------------------------- scheduling

    def _chunk(self, req: Request, budget: int) -> int:
        """Tokens `req` feeds this step: the rest of its tokens, cut to the budget — except that a
        prefix-LM prompt (bidirectional) is never cut."""
        left = len(req.tokens) - req.computed
        if self.model.prefix_lm and req.computed < len(req.prompt):
            return left
        return min(left, budget)

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.cache.free(req.id)
        req.computed = 0
        req.n_preempted += 1
        self.stats["preemptions"] += 1
        self.waiting.appendleft(req)

    def schedule(self) -> list[tuple[Request, int]]:
        """Pick this step's rows (request, new tokens) and grow their blocks."""
        rows: list[tuple[Request, int]] = []
        budget = self.max_batch_tokens
        for req in list(self.running):
            if req not in self.running or budget <= 0:
                continue
            n = self._chunk(req, budget)
            if n > budget and rows:
                continue
            while not self.cache.can_grow(req.id, n):
                if self.running == [req]:  # alone and still no room: the pool is its limit
                    self._finish(req, "length")
                    self._events.append((req, None))
                    break
                victim = self.running[-1]  # lowest priority: admitted last (never a row already chosen)
                self._preempt(victim)
                if victim is req:
                    break
            if req not in self.running:
                continue
            self.cache.grow(req.id, n)
            rows.append((req, n))
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            req = self.waiting[0]
            n = self._chunk(req, budget)
            if n > budget and rows:
                break
            self.cache.add(req.id, prefix=len(req.prompt) if self.model.prefix_lm else 0)
            if not self.cache.can_grow(req.id, n):
                self.cache.free(req.id)
                break
            self.cache.grow(req.id, n)
            self.waiting.popleft()
            self.running.append(req)
            rows.append((req, n))
            budget -= n
        return rows

    # ---------------------------------------------------------------- one step

    @torch.no_grad()
    def _forward(self, rows: list[tuple[Request, int]]) -> Tensor:
        """Feed each row's next tokens; logits (B, V) at each row's last new token."""
        T = max(n for _, n in rows)
        ids = torch.zeros(len(rows), T, dtype=torch.long)
        for b, (req, n) in enumerate(rows):
            ids[b, :n] = torch.tensor(req.tokens[req.computed : req.computed + n])
        self.cache.plan([r.id for r, _ in rows], [n for _, n in rows])
        logits = self.model(ids.to(self.device), cache=self.cache)  # (B, T, V)
        last = torch.tensor([n - 1 for _, n in rows], device=logits.device)
        return logits[torch.arange(len(rows), device=logits.device), last]

    def _sample(self, req: Request, logits: Tensor) -> int:
        p = req.params
        scores = logits.float()[None]  # (1, V)
        if p.repetition_penalty is not None:
            seen = torch.zeros(1, scores.shape[-1], dtype=torch.bool, device=scores.device)
            seen[0, torch.tensor(req.tokens, device=scores.device)] = True
            scores = repetition_penalty_(scores, seen, p.repetition_penalty)
        if p.temperature == 0:
            return int(scores.argmax(-1))
        if p.temperature != 1.0:
            scores = scores / p.temperature
        if p.top_k is not None:
            scores = top_k_filter(scores, p.top_k)
        if p.top_p is not None and p.top_p < 1.0:
            scores = top_p_filter(scores, p.top_p)
        return int(torch.multinomial(scores.softmax(-1), 1, generator=req.generator)[0, 0])

    def step(self) -> list[tuple[Request, int]]:
        """One scheduling round and its forwards; the (request, new token) pairs it produced (token None:
        the request ended without one, its blocks ran out). A request is finished (finish_reason set,
        blocks freed) once its last pair is returned."""
        self._events: list = []
        rows = self.schedule()
        if not rows:
            return self._events
        self.stats["steps"] += 1
        held = self.cache.slots_held()
        if held:
            self.stats["util"].append(self.cache.tokens_held() / held)
        self.stats["max_blocks"] = max(self.stats["max_blocks"], self.cache.blocks_in_use())
        out = self._events
        for part in ([r for r in rows if r[1] == 1], [r for r in rows if r[1] > 1]):
            if not part:
                continue
            logits = self._forward(part)
            now = time.perf_counter()
            for (req, n), row in zip(part, logits):
                req.computed += n
                if req.computed < len(req.tokens):  # a prompt chunk: nothing to sample yet
                    continue
                token = self._sample(req, row)
                req.output.append(token)
                req.token_times.append(now)
                out.append((req, token))
                stops = list(req.params.stop_token_ids) + ([] if req.params.ignore_eos else self.eos)
                if token in stops:
                    req.finish_reason = "stop"
                elif len(req.output) >= req.params.max_tokens or len(req.tokens) >= self.max_len:
                    req.finish_reason = "length"
                if req.finished:
                    self._finish(req, req.finish_reason)
        return out

    def _finish(self, req: Request, reason: str) -> None:
        req.finish_reason = reason
        self.running.remove(req)
        self.cache.free(req.id)
