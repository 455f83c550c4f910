"""llmzoo.linear against F.linear on the matrices decode multiplies by: the evidence for llmzoo.linear.SPLIT.

    python scripts/bench_linear.py [--rows 1 4 16 64 256] [--dtype float32] [--out docs/bench/linear-….json]

For every (out, in) matrix (the heads and layer matrices of gpt-2-small, qwen-2.5-0.5b and a 7B layer,
row-major as a checkpoint stores them, and column-major as GPT-2's Conv1D views are) and every row
count: median seconds of F.linear and of llmzoo.linear (interleaved, `--repeats` each), the GB/s of
weight bytes each reads, and their ratio (F.linear / llmzoo.linear, > 1: the split is faster). The
first line is the bandwidth a `sum` over 1 GiB reads on these threads, the ceiling for both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import llmzoo.linear

SHAPES = [(50257, 768), (3072, 768), (768, 3072), (151936, 896), (4864, 896), (896, 4864), (1152, 896),
          (11008, 4096), (4096, 4096), (1024, 1024)]


def median_s(f, repeats: int) -> float:
    f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", type=int, default=[1, 4, 16, 64, 256])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--shapes", nargs="+", help="OUTxIN, default: the list in the script")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out")
    a = p.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in a.shapes] if a.shapes else SHAPES
    big = torch.ones(1 << 28)
    sum_s = median_s(lambda: big.sum(), 5)
    res: dict = {"dtype": a.dtype, "threads": torch.get_num_threads(), "sum_gbps": big.numel() * 4 / sum_s / 1e9,
                 "policy": vars(llmzoo.linear.SPLIT).copy(), "cases": []}
    del big
    print(f"sum over 1 GiB: {res['sum_gbps']:.1f} GB/s on {res['threads']} threads", flush=True)
    g = torch.Generator().manual_seed(0)
    for n_out, n_in in shapes:
        w_row = (torch.randn(n_out, n_in, generator=g) / n_in**0.5).to(dtype)
        for layout, w in (("row", w_row), ("column", w_row.t().contiguous().t())):
            nbytes = w.numel() * w.element_size()
            for rows in a.rows:
                x = torch.randn(rows, n_in, generator=g).to(dtype)
                plain, split = [], []
                for _ in range(3):  # interleaved thirds: both see the same machine
                    plain.append(median_s(lambda: F.linear(x, w), a.repeats // 3 or 1))
                    split.append(median_s(lambda: llmzoo.linear.linear(x, w), a.repeats // 3 or 1))
                t_plain, t_split = statistics.median(plain), statistics.median(split)
                case = dict(shape=[n_out, n_in], layout=layout, rows=rows, f_linear_s=t_plain, llmzoo_s=t_split,
                            f_linear_gbps=nbytes / t_plain / 1e9, llmzoo_gbps=nbytes / t_split / 1e9,
                            ratio=t_plain / t_split, blocks=llmzoo.linear._blocks(x, w, None))
                res["cases"].append(case)
                print(f"{n_out}x{n_in} {layout:6s} rows {rows:3d}: F.linear {case['f_linear_gbps']:5.1f} GB/s, "
                      f"llmzoo.linear {case['llmzoo_gbps']:5.1f} GB/s ({case['blocks']} blocks) {case['ratio']:.2f}x",
                      flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
