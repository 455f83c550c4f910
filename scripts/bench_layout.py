"""tune_layout's effect, interleaved: one checkpoint loaded twice in one process, one copy as loaded
and one through llmzoo.tune_layout, generate calls alternated between them so both see the same load.

    python scripts/bench_layout.py CHECKPOINT [--rows 1] [--batches 1 4] [--out docs/bench/layout-ab.json]

Per batch: decode ms/step of each copy (median over every step of every call but the first round),
their ratio (as loaded / tuned, > 1: tuning helps) with the quartile spread, and the TTFT ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import llmzoo


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--rows", nargs="+", type=int, default=[1], help="tune_layout's row counts")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out")
    a = p.parse_args(argv)
    loaded = llmzoo.from_pretrained(a.checkpoint).eval()
    tuned = llmzoo.from_pretrained(a.checkpoint).eval()
    t0 = time.perf_counter()
    choices = llmzoo.tune_layout(tuned, rows=tuple(a.rows))
    res: dict = {"tune_s": time.perf_counter() - t0, "rows": a.rows,
                 "column_major": [list(c.shape) for c in choices if c.column_major], "batches": {}}
    for b in a.batches:
        ids = torch.randint(0, loaded.config.vocab_size, (b, a.prompt_len), generator=torch.Generator().manual_seed(b))
        steps: dict = {"loaded": [], "tuned": []}
        ttft: dict = {"loaded": [], "tuned": []}
        with torch.inference_mode():
            for r in range(a.rounds):
                for key, model in (("loaded", loaded), ("tuned", tuned)):
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
        res["batches"][str(b)] = dict(
            loaded_ms=1e3 * med["loaded"], tuned_ms=1e3 * med["tuned"], ratio=med["loaded"] / med["tuned"],
            spread=[q["loaded"][0] / q["tuned"][2], q["loaded"][2] / q["tuned"][0]],
            ttft_ratio=statistics.median(ttft["loaded"]) / statistics.median(ttft["tuned"]))
        print(b, json.dumps(res["batches"][str(b)]), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
