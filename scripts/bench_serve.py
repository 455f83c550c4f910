"""Continuous batching throughput: llmzoo's Engine (paged KV cache) vs transformers' continuous batching
(`generate_batch`) vs sequential `llmzoo.generate`, same random-weight Llama checkpoint, same prompts.

Workload: N concurrent requests (default 32) with prompt lengths drawn from [min_prompt, max_prompt]
and max_new_tokens each (greedy, eos ignored), all submitted at once. Reports, as medians over
--repeats runs: generated tokens/s, time to first token p50/p95, time per output token p50/p95 (after
the first), and the Engine's block utilisation (tokens held / slots in held blocks) and peak blocks.

    python scripts/bench_serve.py [--requests 32] [--new-tokens 64] [--repeats 3] [--skip-hf]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import llmzoo  # noqa: E402
from llmzoo.engine import Engine, SamplingParams  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def make_checkpoint(folder: Path, args) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=args.d_model * 8 // 3,
                      num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
                      max_position_embeddings=1024, tie_word_embeddings=False, eos_token_id=0, bos_token_id=0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    return model


def prompts(args) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(args.min_prompt, args.max_prompt + 1, (args.requests,), generator=g)
    return [torch.randint(1, args.vocab, (int(n),), generator=g).tolist() for n in lengths]


def run_engine(model, ps, args) -> dict:
    engine = Engine(model, block_size=args.block_size, max_seqs=args.requests, max_batch_tokens=args.batch_tokens)
    params = SamplingParams(max_tokens=args.new_tokens, ignore_eos=True)
    t0 = time.perf_counter()
    reqs = [engine.add(p, params) for p in ps]
    for r in reqs:
        r.arrival = t0
    while engine.has_work:
        engine.step()
    wall = time.perf_counter() - t0
    ttft = [r.token_times[0] - r.arrival for r in reqs]
    tpot = [b - a for r in reqs for a, b in zip(r.token_times, r.token_times[1:])]
    util = engine.stats["util"]
    assert engine.cache.blocks_in_use() == 0
    return {"tok/s": sum(len(r.output) for r in reqs) / wall, "wall": wall, "ttft": ttft, "tpot": tpot,
            "util": statistics.mean(util) if util else float("nan"), "peak_blocks": engine.stats["max_blocks"],
            "blocks_needed": sum(-(-(len(p) + args.new_tokens) // args.block_size) for p in ps),
            "outputs": [r.output for r in reqs]}


def run_sequential(model, ps, args) -> dict:
    t0, ttft, tpot, outs = time.perf_counter(), [], [], []
    for p in ps:
        times = []
        for _ in llmzoo.stream(model, torch.tensor([p]), max_new_tokens=args.new_tokens):
            times.append(time.perf_counter())
        ttft.append(times[0] - t0)  # all requests arrive at t0: later ones wait for the earlier
        tpot += [b - a for a, b in zip(times, times[1:])]
        outs.append(len(times))
    wall = time.perf_counter() - t0
    return {"tok/s": sum(outs) / wall, "wall": wall, "ttft": ttft, "tpot": tpot}


def run_hf(hf_model, ps, args) -> dict:
    from transformers import GenerationConfig

    from transformers import ContinuousBatchingConfig

    gen = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    # sized like the Engine: same block size, token budget and request cap; no CUDA graphs, no prefix sharing
    blocks = args.requests * -(-(args.max_prompt + args.new_tokens) // args.block_size)
    cb = ContinuousBatchingConfig(page_size=args.block_size, num_blocks=blocks, max_batch_tokens=args.batch_tokens,
                                  max_requests_per_batch=args.requests, use_cuda_graph=False,
                                  allow_block_sharing=False)
    t0 = time.perf_counter()
    out = hf_model.generate_batch(inputs=ps, generation_config=gen, continuous_batching_config=cb,
                                  record_timestamps=True, progress_bar=False, warmup=False)
    wall = time.perf_counter() - t0
    n = sum(len(o.generated_tokens) for o in out.values())
    ttft, tpot = [], []
    for o in out.values():
        stamps = getattr(o, "timestamps", None) or []
        if stamps:
            ttft.append(stamps[0] - (getattr(o, "created_time", None) or t0))
            tpot += [b - a for a, b in zip(stamps, stamps[1:])]
    return {"tok/s": n / wall, "wall": wall, "ttft": ttft, "tpot": tpot,
            "outputs": {k: list(o.generated_tokens) for k, o in out.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--min-prompt", type=int, default=16)
    ap.add_argument("--max-prompt", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--batch-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-hf", action="store_true", help="leave out transformers' generate_batch")
    ap.add_argument("--skip-sequential", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--json", default=None, help="also write the medians and checks to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ps = prompts(args)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        hf_model = make_checkpoint(Path(tmp), args)
        model = llmzoo.from_pretrained(tmp).eval()
        modes = {"llmzoo Engine (paged, continuous)": lambda: run_engine(model, ps, args)}
        if not args.skip_hf:
            modes["transformers generate_batch"] = lambda: run_hf(hf_model, ps, args)
        if not args.skip_sequential:
            modes["llmzoo.generate, sequential"] = lambda: run_sequential(model, ps, args)
        for name, fn in modes.items():
            for _ in range(args.repeats):
                try:
                    results.setdefault(name, []).append(fn())
                except Exception as e:  # transformers' CB on CPU may not run: say so, keep the others
                    print(f"{name}: failed: {type(e).__name__}: {e}", file=sys.stderr)
                    break
    print(f"{args.requests} requests, prompts {args.min_prompt}-{args.max_prompt} tokens, {args.new_tokens} new "
          f"tokens each (greedy); Llama d_model={args.d_model}, {args.layers} layers, vocab {args.vocab}; "
          f"torch threads {torch.get_num_threads()}; medians of {args.repeats} runs")
    print("| mode | tokens/s | wall s | TTFT p50 ms | TTFT p95 ms | per token p50 ms | per token p95 ms |")
    print("|---|---|---|---|---|---|---|")
    med = lambda rs, f: statistics.median(f(r) for r in rs)  # noqa: E731
    for name, rs in results.items():
        if not rs:
            continue
        print(f"| {name} | {med(rs, lambda r: r['tok/s']):.0f} | {med(rs, lambda r: r['wall']):.2f} | "
              f"{1e3 * med(rs, lambda r: pct(r['ttft'], .5)):.0f} | {1e3 * med(rs, lambda r: pct(r['ttft'], .95)):.0f} | "
              f"{1e3 * med(rs, lambda r: pct(r['tpot'], .5)):.1f} | {1e3 * med(rs, lambda r: pct(r['tpot'], .95)):.1f} |")
    eng = results.get("llmzoo Engine (paged, continuous)", [])
    if eng:
        print(f"\nEngine block utilisation (tokens held / slots of held blocks, mean over steps): "
              f"{med(eng, lambda r: r['util']):.1%}; peak blocks {eng[0]['peak_blocks']} "
              f"(all requests at full length: {eng[0]['blocks_needed']})")
    base = {k: statistics.median(r["tok/s"] for r in v) for k, v in results.items() if v}
    e = base.get("llmzoo Engine (paged, continuous)")
    for k, v in base.items():
        if e and k != "llmzoo Engine (paged, continuous)":
            print(f"Engine / {k}: {e / v:.2f}×")
    hf = results.get("transformers generate_batch", [])
    same = None
    if eng and hf:
        ours = eng[0]["outputs"]
        theirs = [hf[0]["outputs"][k] for k in sorted(hf[0]["outputs"], key=lambda s: int(s.split("_")[-1]))]
        same = sum(a == b for a, b in zip(ours, theirs))
        print(f"greedy outputs identical to transformers' for {same}/{len(ours)} requests")
    if args.json:
        summary = {"tok/s": base, "same_as_transformers": same, "requests": args.requests,
                   "util": med(eng, lambda r: r["util"]) if eng else None}
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
