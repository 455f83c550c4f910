"""Speed benchmark: llmzoo against transformers on the same random-weight checkpoint.

For every shape: build random weights once (llmzoo.build, seed), write them as a Hugging Face
checkpoint (llmzoo.save_pretrained), load that checkpoint into llmzoo (llmzoo.from_pretrained) and
into transformers (AutoModelForCausalLM, sdpa), one model in memory at a time, and measure
  load_s       checkpoint load time from local safetensors (after one untimed load)
  agree        max|Δlogits| of the two on one batch (llmzoo's logits kept on CPU meanwhile)
  prefill      tokens/s of one forward over a batch×length grid
  ttft_s       batch-1 prompt → first token (generate with max_new_tokens=1)
  decode       batch-1 and batch-N greedy decode tokens/s: (t(N new) − t(1 new)) / (N − 1) per step
  peak_mem     torch.cuda.max_memory_allocated on CUDA; peak RSS growth over the pre-load RSS on CPU
and print llmzoo/transformers ratios (>1: llmzoo faster / smaller is "mem" <1), plus on CUDA the MFU
(2·active_params·tokens/s / --peak-tflops; active params include the embedding, attention-score FLOPs are
left out) and decode's share of HBM bandwidth
((weight bytes + KV-cache bytes read per step) · steps/s / --peak-gbps).

Shapes: a zoo name (the full shape) or name@tiny / name@small (llmzoo.scale_down preset).
  python scripts/bench.py                                   # CPU defaults, ~1 minute
  python scripts/bench.py --device cuda --out results.json  # llama-2-7b, mistral-7b, deepseek-v2-lite
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Callable

import torch

import llmzoo

CPU_SHAPES = ["llama-2-7b@small", "mistral-7b@small", "deepseek-v2-lite@small"]
CUDA_SHAPES = ["llama-2-7b", "mistral-7b", "deepseek-v2-lite"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", help=f"default: {CPU_SHAPES} on CPU, {CUDA_SHAPES} on CUDA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--prefill-grid", nargs="+", help="BxL pairs; default CPU 1x64 4x128, CUDA 1x512 1x2048 8x512 32x512")
    p.add_argument("--decode-batch", type=int, help="the batch-N of decode; default 4 on CPU, 32 on CUDA")
    p.add_argument("--new-tokens", type=int, help="default 16 on CPU, 128 on CUDA")
    p.add_argument("--prompt-len", type=int, help="default 32 on CPU, 512 on CUDA")
    p.add_argument("--repeats", type=int, help="timed repeats (median reported); default 3 on CPU, 5 on CUDA")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the repeats")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="llmzoo.generate(compile=...): auto = on for CUDA, off on CPU")
    p.add_argument("--tol", type=float, help="max|Δlogits| allowed; default 1e-3 (fp32) or 0.05·max|logits| (16-bit)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s (H100 SXM: 989)")
    p.add_argument("--peak-gbps", type=float, default=3350.0, help="peak HBM GB/s (H100 SXM: 3350)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backends", nargs="+", default=["llmzoo", "transformers"], choices=["llmzoo", "transformers"])
    p.add_argument("--tmpdir", help="where the checkpoint is written (needs ~2 bytes/param in bf16); default $TMPDIR")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    cuda = a.device.startswith("cuda")
    a.shapes = a.shapes or (CUDA_SHAPES if cuda else CPU_SHAPES)
    a.dtype = a.dtype or ("bfloat16" if cuda else "float32")
    a.prefill_grid = a.prefill_grid or (["1x512", "1x2048", "8x512", "32x512"] if cuda else ["1x64", "4x128"])
    a.decode_batch = a.decode_batch or (32 if cuda else 4)
    a.new_tokens = a.new_tokens or (128 if cuda else 16)
    a.prompt_len = a.prompt_len or (512 if cuda else 32)
    a.repeats = a.repeats or (5 if cuda else 3)
    a.compile = a.compile == "on" or (a.compile == "auto" and cuda)
    if a.new_tokens < 2:
        p.error("--new-tokens must be ≥ 2 (decode speed is measured between the first and last token)")
    try:
        a.grid = [tuple(int(x) for x in g.lower().split("x")) for g in a.prefill_grid]
    except ValueError:
        p.error(f"--prefill-grid takes BxL pairs such as 1x512, got {a.prefill_grid}")
    return a


def shape_config(shape: str) -> llmzoo.ModelConfig:
    name, _, preset = shape.partition("@")
    return llmzoo.scale_down(name, preset=preset) if preset else llmzoo.get_config(name)


# ---------------------------------------------------------------- timing and memory


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall seconds of fn() over `repeats` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak allocated bytes on CUDA; on CPU the peak RSS (sampled every 5 ms) above the RSS at start."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.base = rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss() - self.base)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss() - self.base)


# ---------------------------------------------------------------- the two backends


def load(backend: str, folder: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    if backend == "llmzoo":
        return llmzoo.from_pretrained(folder, dtype=dtype, device=device).eval()
    from transformers import AutoModelForCausalLM

    kw = dict(dtype=dtype, attn_implementation="sdpa")
    try:  # straight onto the device when accelerate is there
        model = AutoModelForCausalLM.from_pretrained(folder, device_map=str(device), **kw)
    except (ImportError, ValueError):
        model = AutoModelForCausalLM.from_pretrained(folder, **kw).to(device)
    return model.eval()


def forward(backend: str, model, ids: torch.Tensor) -> torch.Tensor:
    if backend == "llmzoo":
        return model(ids)
    return model(input_ids=ids, use_cache=False).logits


def generate(backend: str, model, ids: torch.Tensor, new: int, compile: bool) -> torch.Tensor:
    mask = torch.ones_like(ids)
    if backend == "llmzoo":  # no eos: always `new` tokens
        return llmzoo.generate(model, ids, mask, max_new_tokens=new, compile=compile)
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, pad_token_id=0)


def run_backend(backend: str, folder: str, cfg, a, device, dtype, check_ids) -> tuple[dict, torch.Tensor]:
    r: dict = {}
    gen = torch.Generator().manual_seed(a.seed + 1)

    def rand_ids(b: int, n: int) -> torch.Tensor:
        return torch.randint(0, cfg.vocab_size, (b, n), generator=gen).to(device)

    if a.warmup:  # one untimed load first: lazy imports and the page cache are not load time
        with torch.inference_mode():
            del_model = load(backend, folder, device, dtype)
        del del_model
        gc.collect()
    with PeakMemory(device) as mem, torch.inference_mode():
        sync(device)
        t = time.perf_counter()
        model = load(backend, folder, device, dtype)
        sync(device)
        r["load_s"] = time.perf_counter() - t
        logits = forward(backend, model, check_ids).float().cpu()
        r["prefill_tps"] = {}
        for b, n in a.grid:
            ids = rand_ids(b, n)
            r["prefill_tps"][f"{b}x{n}"] = b * n / timed(lambda: forward(backend, model, ids), device, a.repeats, a.warmup)
        r["decode_tps"], r["ttft_s"] = {}, None
        for b in sorted({1, a.decode_batch}):
            ids = rand_ids(b, a.prompt_len)
            t1 = timed(lambda: generate(backend, model, ids, 1, a.compile), device, a.repeats, a.warmup)
            tn = timed(lambda: generate(backend, model, ids, a.new_tokens, a.compile), device, a.repeats, a.warmup)
            step = max(tn - t1, 1e-9) / (a.new_tokens - 1)
            r["decode_tps"][str(b)] = b / step
            if b == 1:
                r["ttft_s"] = t1
    r["peak_mem_bytes"] = mem.peak
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return r, logits


def bench_shape(shape: str, a) -> dict:
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    cfg = shape_config(shape)
    n = llmzoo.count_params(cfg)
    itemsize = torch.empty((), dtype=dtype).element_size()
    res: dict = dict(shape=shape, device=str(device), dtype=a.dtype, params=n.total, active_params=n.active)
    with tempfile.TemporaryDirectory(prefix="llmzoo-bench-", dir=a.tmpdir) as folder:
        model = llmzoo.build(cfg, device=device, dtype=dtype, seed=a.seed)
        llmzoo.save_pretrained(model, folder)
        del model
        gc.collect()
        g = torch.Generator().manual_seed(a.seed)
        check_ids = torch.randint(0, cfg.vocab_size, (2, min(a.prompt_len, 64)), generator=g).to(device)
        logits = {}
        for backend in a.backends:
            print(f"[{shape}] {backend} ...", file=sys.stderr, flush=True)
            res[backend], logits[backend] = run_backend(backend, folder, cfg, a, device, dtype, check_ids)
    if len(logits) == 2:
        ref = logits["transformers"]
        diff = (logits["llmzoo"] - ref).abs().max().item()
        tol = a.tol if a.tol is not None else (1e-3 if itemsize == 4 else 0.05 * max(1.0, ref.abs().max().item()))
        res["agree"] = dict(max_abs_diff=diff, max_abs_logit=ref.abs().max().item(), tol=tol, passed=diff <= tol)
        z, h = res["llmzoo"], res["transformers"]
        res["ratios"] = dict(
            load=h["load_s"] / z["load_s"],
            ttft=h["ttft_s"] / z["ttft_s"],
            peak_mem=z["peak_mem_bytes"] / max(h["peak_mem_bytes"], 1),
            **{f"prefill_{k}": z["prefill_tps"][k] / h["prefill_tps"][k] for k in z["prefill_tps"]},
            **{f"decode_b{k}": z["decode_tps"][k] / h["decode_tps"][k] for k in z["decode_tps"]},
        )
    if device.type == "cuda":  # utilisation against the card's peaks
        peak_flops, peak_bw = a.peak_tflops * 1e12, a.peak_gbps * 1e9
        ctx = a.prompt_len + a.new_tokens // 2  # mean context length during decode
        for backend in a.backends:
            r = res[backend]
            r["mfu_prefill"] = {k: 2 * n.active * v / peak_flops for k, v in r["prefill_tps"].items()}
            r["mfu_decode"] = {k: 2 * n.active * v / peak_flops for k, v in r["decode_tps"].items()}
            r["hbm_share_decode"] = {}
            for k, v in r["decode_tps"].items():
                b = int(k)  # weights read once per step: the active ones at batch 1, at most all of them
                weight_bytes = min(n.total, n.active * b) * itemsize
                step_bytes = weight_bytes + llmzoo.kv_cache_bytes(cfg, ctx, batch=b, dtype=dtype)
                r["hbm_share_decode"][k] = step_bytes * (v / b) / peak_bw
    return res


# ---------------------------------------------------------------- report


def table(results: list[dict]) -> str:
    cols = ["shape", "metric", "llmzoo", "transformers", "ratio"]
    rows = []
    for res in results:
        z, h, q = res.get("llmzoo"), res.get("transformers"), res.get("ratios", {})
        if "agree" in res:
            g = res["agree"]
            rows.append([res["shape"], "max|Δlogits|", f"{g['max_abs_diff']:.2e}", f"tol {g['tol']:.1e}",
                         "PASS" if g["passed"] else "FAIL"])

        def row(metric, key, fmt, ratio_key, sub=None):
            vals = []
            for r in (z, h):
                v = None if r is None else (r[key] if sub is None else r[key][sub])
                vals.append("-" if v is None else fmt(v))
            rq = q.get(ratio_key)
            rows.append([res["shape"], metric, *vals, "-" if rq is None else f"{rq:.2f}x"])

        r0 = z or h
        row("load s", "load_s", lambda v: f"{v:.3f}", "load")
        row("ttft ms (b=1)", "ttft_s", lambda v: f"{1e3 * v:.1f}", "ttft")
        for k in r0["prefill_tps"]:
            row(f"prefill tok/s {k}", "prefill_tps", lambda v: f"{v:,.0f}", f"prefill_{k}", k)
        for k in r0["decode_tps"]:
            row(f"decode tok/s b={k}", "decode_tps", lambda v: f"{v:,.1f}", f"decode_b{k}", k)
        row("peak mem MiB", "peak_mem_bytes", lambda v: f"{v / 2**20:,.0f}", "peak_mem")
        if "mfu_prefill" in r0:
            for k in r0["mfu_prefill"]:
                row(f"MFU prefill {k}", "mfu_prefill", lambda v: f"{100 * v:.1f}%", None, k)
            for k in r0["mfu_decode"]:
                row(f"HBM share decode b={k}", "hbm_share_decode", lambda v: f"{100 * v:.1f}%", None, k)
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)])


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    results = [bench_shape(s, a) for s in a.shapes]
    out = dict(
        settings=dict(device=a.device, dtype=a.dtype, prefill_grid=a.prefill_grid, decode_batch=a.decode_batch,
                      new_tokens=a.new_tokens, prompt_len=a.prompt_len, repeats=a.repeats, warmup=a.warmup,
                      compile=a.compile, peak_tflops=a.peak_tflops, peak_gbps=a.peak_gbps,
                      torch=torch.__version__, gpu=torch.cuda.get_device_name() if a.device.startswith("cuda") else None),
        results=results,
        wall_s=time.perf_counter() - t0,
    )
    print(table(results))
    print(f"ratio: transformers time / llmzoo time (>1 = llmzoo faster); peak mem: llmzoo / transformers. "
          f"{out['wall_s']:.0f} s total", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
