"""One llmzoo speed option, A/B and interleaved: generate calls alternate between the two arms, so both
see the same machine state (a sequential A-then-B run on a shared VM drifts ±15–30 %).

    python scripts/bench_ab.py CHECKPOINT --variant split   [--batches 1 4] [--out docs/bench/split-ab.json]
    python scripts/bench_ab.py CHECKPOINT --variant layout  [--rows 1]

Variants (arm A, arm B):
  split   plain F.linear, then llmzoo.linear's split few-row products (llmzoo.linear.SPLIT.enabled), one model
  layout  the checkpoint as loaded, then a second copy through llmzoo.tune_layout(rows=--rows)
Per batch: decode ms/step of each arm (median over every step of every call but the first round),
their ratio (A / B, > 1: B is faster) with the quartile spread (A.q1/B.q3 … A.q3/B.q1), and the TTFT ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

import llmzoo
import llmzoo.linear


@contextlib.contextmanager
def split(enabled: bool):
    saved, llmzoo.linear.SPLIT.enabled = llmzoo.linear.SPLIT.enabled, enabled
    try:
        yield
    finally:
        llmzoo.linear.SPLIT.enabled = saved


def arms(a: argparse.Namespace) -> tuple[dict, dict]:
    """{name: (model, context)} for arm A and arm B, and what to record of the setup."""
    model = llmzoo.from_pretrained(a.checkpoint).eval()
    if a.variant == "split":
        return {"plain": (model, lambda: split(False)), "split": (model, lambda: split(True))}, {}
    tuned = llmzoo.from_pretrained(a.checkpoint).eval()
    t0 = time.perf_counter()
    choices = llmzoo.tune_layout(tuned, rows=tuple(a.rows))
    setup = {"tune_s": time.perf_counter() - t0, "rows": a.rows,
             "column_major": [list(c.shape) for c in choices if c.column_major]}
    return {"loaded": (model, contextlib.nullcontext), "tuned": (tuned, contextlib.nullcontext)}, setup


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--variant", choices=["split", "layout"], default="split")
    p.add_argument("--rows", nargs="+", type=int, default=[1], help="layout: tune_layout's row counts")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out")
    a = p.parse_args(argv)
    both, setup = arms(a)
    (name_a, _), (name_b, _) = both.items()
    res: dict = {"variant": a.variant, "arms": [name_a, name_b], **setup, "threads": torch.get_num_threads(),
                 "batches": {}}
    vocab = next(iter(both.values()))[0].config.vocab_size
    for b in a.batches:
        ids = torch.randint(0, vocab, (b, a.prompt_len), generator=torch.Generator().manual_seed(b))
        steps: dict = {k: [] for k in both}
        ttft: dict = {k: [] for k in both}
        with torch.inference_mode():
            for r in range(a.rounds):
                for key, (model, context) in both.items():
                    with context():
                        start = last = time.perf_counter()
                        for i, _ in enumerate(llmzoo.stream(model, ids, max_new_tokens=a.new_tokens)):
                            now = time.perf_counter()
                            if i == 0:
                                ttft[key].append(now - start)
                            elif r:  # round 0 warms both
                                steps[key].append(now - last)
                            last = now
        med = {k: statistics.median(v) for k, v in steps.items()}
        q = {k: statistics.quantiles(v, n=4) for k, v in steps.items()}
        res["batches"][str(b)] = {
            f"{name_a}_ms": 1e3 * med[name_a], f"{name_b}_ms": 1e3 * med[name_b],
            "ratio": med[name_a] / med[name_b],
            "spread": [q[name_a][0] / q[name_b][2], q[name_a][2] / q[name_b][0]],
            "ttft_ratio": statistics.median(ttft[name_a]) / statistics.median(ttft[name_b])}
        print(b, json.dumps(res["batches"][str(b)]), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
