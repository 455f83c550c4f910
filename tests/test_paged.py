"""PagedCache and the continuous-batching Engine: ragged paged forwards equal the full forward for every
attention kind, the engine's tokens equal llmzoo.generate (static cache) on every family, batch
invariance, preemption by recompute, window recycling, and no block leaked."""

from __future__ import annotations

import pytest
import torch

import llmzoo
from llmzoo.engine import Engine, SamplingParams
from llmzoo.model import CausalLM
from llmzoo.paged import BlockPool, OutOfBlocks, PagedCache

from test_cache import KINDS, loud, one_per_family  # noqa: E402  (tests/ is on sys.path under pytest)


def prompts(vocab: int, lengths, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def reference(model, prompt: list[int], n: int, **kw) -> list[int]:
    """llmzoo.generate on the prompt alone (a StaticCache): the expected tokens."""
    out = llmzoo.generate(model, torch.tensor([prompt]), max_new_tokens=n, **kw)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("kind", list(KINDS))
def test_ragged_paged_forward_equals_full_forward(kind):
    """Three sequences fed in uneven chunks side by side (blocks of 4) give the logits of one full forward each."""
    model = loud(llmzoo.build(KINDS[kind]))
    seqs = [torch.tensor(p) for p in prompts(model.config.vocab_size, (19, 11, 23))]
    prefix = 9  # prefix-LM: the first 9 slots are bidirectional, fed as one chunk
    chunks = [[9, 1, 3], [9, 2, 0, 1], [9, 5, 1]]  # then one token per step
    cache = PagedCache.for_model(model, 64, 4)
    for i in range(3):
        cache.add(i, prefix=prefix)
    done, out = [0, 0, 0], [[], [], []]
    with torch.no_grad():
        full = [model(s[None], prefix_len=torch.tensor([prefix]) if model.prefix_lm else None)[0] for s in seqs]
        step = 0
        while any(d < len(s) for d, s in zip(done, seqs)):
            rows = []
            for i, s in enumerate(seqs):
                n = min(chunks[i][step] if step < len(chunks[i]) else 1, len(s) - done[i])
                if n:
                    rows.append((i, n))
            ids = torch.zeros(len(rows), max(n for _, n in rows), dtype=torch.long)
            for b, (i, n) in enumerate(rows):
                cache.grow(i, n)
                ids[b, :n] = seqs[i][done[i] : done[i] + n]
            cache.plan([i for i, _ in rows], [n for _, n in rows])
            logits = model(ids, cache=cache)
            for b, (i, n) in enumerate(rows):
                out[i].append(logits[b, :n])
                done[i] += n
            step += 1
    for i in range(3):
        torch.testing.assert_close(torch.cat(out[i]), full[i], atol=1e-4, rtol=0)
        cache.free(i)
    assert cache.blocks_in_use() == 0


@pytest.mark.parametrize("name", one_per_family())
def test_engine_equals_static_cache_generate(name):
    """Per family: three prompts batched by the engine (blocks of 4, prefill chunks of ≤ 8 tokens) give
    llmzoo.generate's greedy tokens for each prompt alone, token for token."""
    model = llmzoo.build(name, scale="tiny")
    if not isinstance(model, CausalLM):
        pytest.skip(f"{name} builds a {type(model).__name__}, not a decoder-only CausalLM")
    model = loud(model)
    ps = prompts(model.config.vocab_size, (5, 13, 21))
    engine = Engine(model, block_size=4, max_batch_tokens=8, n_blocks=40)
    assert engine.run(ps, SamplingParams(max_tokens=12)) == [reference(model, p, 12) for p in ps]
    assert engine.cache.blocks_in_use() == 0


def test_batch_invariance():
    """A request's greedy tokens are the same alone and beside seven others (fp32, CPU), with chunked
    prefill cutting its prompt differently; a seeded sampled request matches generate's sampling."""
    model = loud(llmzoo.build(KINDS["gqa-rope"]))
    target, *others = prompts(model.config.vocab_size, (17, 3, 30, 9, 25, 1, 12, 40))
    params = SamplingParams(max_tokens=16)
    alone = Engine(model, block_size=4, max_batch_tokens=64).run([target], params)[0]
    engine = Engine(model, block_size=4, max_batch_tokens=24)
    others_out = engine.run(others[:3], params)  # warm the pool so blocks are reused out of order
    crowd = engine.run([*others[3:], target, *others[:3]], params)
    assert crowd[len(others) - 3] == alone == reference(model, target, 16)
    assert crowd[len(others) - 2 :] == others_out
    sampled = SamplingParams(max_tokens=16, temperature=0.8, top_k=20, top_p=0.9, seed=7)
    got = engine.run([others[0], target, others[1]], [params, sampled, params])[1]
    expect = reference(model, target, 16, do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=7)
    assert got == expect
    assert engine.cache.blocks_in_use() == 0


def test_preemption_by_recompute():
    """A pool too small for every request at once: requests are preempted and recomputed, and still give
    generate's tokens; every block comes back."""
    model = loud(llmzoo.build(KINDS["alibi-6-heads"]))
    ps = prompts(model.config.vocab_size, (6, 10, 14, 8, 12, 4))
    engine = Engine(model, block_size=4, n_blocks=12, max_batch_tokens=16)
    reqs = [engine.add(p, SamplingParams(max_tokens=20)) for p in ps]
    while engine.has_work:
        engine.step()  # KV held ≤ tokens held + less than one block per sequence
        assert engine.cache.slots_held() - engine.cache.tokens_held() < 4 * len(engine.running) + (not engine.running)
    out = [r.output for r in reqs]
    assert engine.stats["preemptions"] > 0
    assert out == [reference(model, p, 20) for p in ps]
    assert engine.cache.blocks_in_use() == 0


def test_sliding_window_recycles_blocks():
    """All layers windowed (5): a long decode holds at most ⌈(window + block) / block⌉ blocks; tokens still
    match generate. KV held ≤ tokens held + one block per sequence."""
    model = loud(llmzoo.build(KINDS["sliding-window"]))
    engine = Engine(model, block_size=4, n_blocks=8)
    reqs = [engine.add(p, SamplingParams(max_tokens=30)) for p in prompts(model.config.vocab_size, (7, 3))]
    peak = 0
    while engine.has_work:
        engine.step()
        peak = max(peak, engine.cache.blocks_in_use())
        for g in engine.cache.groups:  # per sequence: the window plus one partly filled block
            for table in g.tables.values():
                assert sum(b >= 0 for b in table) <= -(-(5 + 4) // 4)
        assert engine.cache.slots_held() <= engine.cache.tokens_held() + 2 * 4 * len(engine.running)
    assert peak <= 2 * 3 < 2 * -(-(7 + 30) // 4)
    assert [r.output for r in reqs] == [reference(model, r.prompt, 30) for r in reqs]
    assert engine.cache.blocks_in_use() == 0


def test_stop_conditions_and_abort():
    model = loud(llmzoo.build(KINDS["gqa-rope"]))
    p = prompts(model.config.vocab_size, (8,))[0]
    free = reference(model, p, 12)
    stop = free[4]
    engine = Engine(model, block_size=4, eos_token_ids=[free[6]])
    a = engine.add(p, SamplingParams(max_tokens=12, stop_token_ids=[stop]))
    b = engine.add(p, SamplingParams(max_tokens=12, ignore_eos=True))
    c = engine.add(p, SamplingParams(max_tokens=12))
    d = engine.add(p, SamplingParams(max_tokens=3))
    e = engine.add(p, SamplingParams(max_tokens=12))
    engine.step()
    engine.abort(e)  # mid-generation: its blocks are freed at once
    while engine.has_work:
        engine.step()
    assert a.output == free[: free.index(stop) + 1] and a.finish_reason == "stop"
    assert b.output == free and b.finish_reason == "length"
    assert c.output == free[: free.index(free[6]) + 1] and c.finish_reason == "stop"
    assert d.output == free[:3] and d.finish_reason == "length"
    assert e.finish_reason == "abort" and len(e.output) == 1
    assert engine.cache.blocks_in_use() == 0 and not engine.cache.seqs


def test_bad_requests_and_pool():
    model = loud(llmzoo.build(KINDS["gqa-rope"]))
    engine = Engine(model, block_size=4, n_blocks=4)
    for bad in ([], [model.config.vocab_size], list(range(20))):
        with pytest.raises(ValueError):
            engine.add(bad)
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=0)
    pool = BlockPool(3)
    assert pool.take(2) == [0, 1]
    with pytest.raises(OutOfBlocks):
        pool.take(2)
    pool.give([1, 0])
    assert pool.n_free == 3 and pool.take(1) == [0]
    with pytest.raises(llmzoo.LLMZooError):
        Engine(llmzoo.build("t5-11b", scale="tiny"))
