"""Speed benchmark: llmzoo against transformers on the same random-weight checkpoint.

For every shape: build random weights once (llmzoo.build, seed), write them as a Hugging Face
checkpoint (llmzoo.save_pretrained), load that checkpoint into llmzoo (llmzoo.from_pretrained) and
into transformers (AutoModelForCausalLM, sdpa), one model in memory at a time, and measure
  load_s       checkpoint load time from local safetensors, per repeat, in a fresh interpreter per
               backend (one untimed load first: lazy imports; the page cache is warm)
  load_peak    peak RSS growth during one load in that interpreter (its heap trimmed after the untimed
               load; VmHWM reset through /proc/self/clear_refs where Linux allows, else sampled every
               5 ms), against model_bytes (the loaded parameters and buffers)
  agree        max|Δlogits| of the two on one batch (llmzoo's logits kept on CPU meanwhile)
  prefill      seconds of one forward over a batch×length grid, per repeat
  ttft_s       batch-1 prompt → first token, taken in every timed generate call
  decode       seconds of every single decode step (the gap between two consecutive tokens, device
               synchronised, taken inside the generate loop: a streamer for transformers), batch 1 and N
  peak_mem     torch.cuda.max_memory_allocated on CUDA; peak RSS growth over the pre-load RSS on CPU
Every timing is a sample list summarised as median, quartiles and min/max ("spread"); a rate is
items / median seconds, never a difference of two totals. Ratios are transformers' median / llmzoo's
median, with a spread from the quartiles (h.q1 / z.q3 … h.q3 / z.q1). On a noisy (shared) machine read
the spread before the ratio. Ratios >1: llmzoo faster (peak mem: llmzoo / transformers, <1 is smaller); on CUDA the MFU
(2·active_params·tokens/s / --peak-tflops; active params include the embedding, attention-score FLOPs are
left out) and decode's share of HBM bandwidth
((weight bytes + KV-cache bytes read per step) · steps/s / --peak-gbps).

Shapes: a zoo name (the full shape), name@tiny / name@small (llmzoo.scale_down preset), or one of DERIVED
(zoo entries narrowed to a few hundred million parameters: mistral-7b@0.2b, deepseek-v2-lite@0.4b).
  python scripts/bench.py                                   # CPU defaults, ~1 minute
  python scripts/bench.py --dtype float32 bfloat16          # both dtypes in one run
  python scripts/bench.py --device cuda --out results.json  # the GPU plan: llama-2-7b, mistral-7b, deepseek-v2-lite
  python scripts/bench.py --plan cuda --device cpu --dry-run # the same plan on CPU, tiny shapes (the test suite)
  python scripts/bench.py --only load --dtype float32 bfloat16   # loading only: real-size shapes, as stored
  python scripts/bench.py --only load --cast bfloat16       # a float32 checkpoint loaded as bfloat16
Shapes also take name@<N>l: the full widths with only the first N layers (a real-size MoE layer that fits).
The GPU plan (prefill 1x512 and 4x2048, decode b=1 and b=32 for 64 tokens after 512, 3 repeats, compiled
decode step reused across calls) is sized to finish in < 8 min on one H100/H200 with transformers' side.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

import torch

import llmzoo
import llmzoo.linear
from llmzoo.config import deep_merge

CPU_SHAPES = ["llama-2-7b@small", "mistral-7b@small", "deepseek-v2-lite@small"]
CUDA_SHAPES = ["llama-2-7b", "mistral-7b", "deepseek-v2-lite"]
# --only load: real sizes (>= 100 M parameters): GPT-2 (Conv1D transposes, fused qkv), a Qwen2 and a
# Llama decoder, and one full-width DeepSeek-V2-Lite MoE layer (64 experts stacked) after its dense one
LOAD_SHAPES = ["gpt-2-small", "qwen-2.5-0.5b", "llama-3.2-1b@2l", "deepseek-v2-lite@2l"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", help=f"default: {CPU_SHAPES} on CPU, {CUDA_SHAPES} on CUDA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--plan", choices=["cpu", "cuda"], help="which defaults (shapes, grid, batch, lengths); default: the device's")
    p.add_argument("--dry-run", action="store_true",
                   help="the plan's code path on tiny shapes: every shape → name@tiny, lengths ÷ 64, 4 new tokens, 1 repeat")
    p.add_argument("--dtype", nargs="+", help="one or more of float32 bfloat16 float16; default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--only", choices=["load"], help="load: loading only (time, peak RSS, logits agree); "
                   f"default shapes {LOAD_SHAPES}, 5 repeats")
    p.add_argument("--cast", help="load the --dtype checkpoint as this dtype (e.g. bfloat16 from float32); "
                   "default: as stored")
    p.add_argument("--prefill-grid", nargs="+", help="BxL pairs; default CPU 1x64 4x128, CUDA 1x512 4x2048")
    p.add_argument("--decode-batch", type=int, help="the batch-N of decode; default 4 on CPU, 32 on CUDA")
    p.add_argument("--new-tokens", type=int, help="default 16 on CPU, 64 on CUDA")
    p.add_argument("--prompt-len", type=int, help="default 32 on CPU, 512 on CUDA")
    p.add_argument("--repeats", type=int, help="timed repeats (median reported); default 3")
    p.add_argument("--load-repeats", type=int, help="timed loads; default --repeats on CPU, 2 on CUDA")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the repeats")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="llmzoo.generate(compile=...): auto = on for the CUDA plan, off on CPU")
    p.add_argument("--tune-layout", choices=["on", "off"], default="off",
                   help="llmzoo side: llmzoo.tune_layout(model, rows=--tune-rows) after the load, timed "
                        "apart from it (docs/performance.md: what it buys on CPU and what it costs)")
    p.add_argument("--tune-rows", nargs="+", type=int, default=[1],
                   help="the row counts tune_layout times (its choice minimises their sum); default 1 (decode b=1)")
    p.add_argument("--split-linear", choices=["on", "off"], default="on",
                   help="llmzoo side: few-row float32 CPU products split across threads (llmzoo.linear.SPLIT); "
                        "off = plain F.linear, for an A/B")
    p.add_argument("--compile-backend", help="torch.compile backend (default inductor; 'eager' for a quick dry run)")
    p.add_argument("--tol", type=float, help="max|Δlogits| allowed; default 1e-3 (fp32) or 0.05·max|logits| (16-bit)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s (H100 SXM: 989)")
    p.add_argument("--peak-gbps", type=float, default=3350.0, help="peak HBM GB/s (H100 SXM: 3350)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backends", nargs="+", default=["llmzoo", "transformers"], choices=["llmzoo", "transformers"])
    p.add_argument("--tmpdir", help="where the checkpoint is written (needs ~2 bytes/param in bf16); default $TMPDIR")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--markdown", nargs="+", metavar="JSON",
                   help="print the ratio table of saved results (docs/performance.md) and exit")
    a = p.parse_args(argv)
    a.plan = a.plan or ("cuda" if a.device.startswith("cuda") else "cpu")
    cuda = a.plan == "cuda"
    a.shapes = a.shapes or (LOAD_SHAPES if a.only == "load" else CUDA_SHAPES if cuda else CPU_SHAPES)
    a.dtype = a.dtype or ["bfloat16" if cuda else "float32"]
    a.prefill_grid = a.prefill_grid or (["1x512", "4x2048"] if cuda else ["1x64", "4x128"])
    a.decode_batch = a.decode_batch or (32 if cuda else 4)
    a.new_tokens = a.new_tokens or (64 if cuda else 16)
    a.prompt_len = a.prompt_len or (512 if cuda else 32)
    a.repeats = a.repeats or (5 if a.only == "load" else 3)
    a.load_repeats = a.load_repeats or (2 if cuda else a.repeats)
    a.compile = a.compile == "on" or (a.compile == "auto" and cuda)
    a.tune_layout = a.tune_layout == "on"
    a.split_linear = a.split_linear == "on"
    if a.dry_run:
        a.shapes = [s.partition("@")[0] + "@tiny" for s in a.shapes]
        a.prefill_grid = [f"{b}x{max(1, int(n) // 64)}" for b, _, n in (g.lower().partition("x") for g in a.prefill_grid)]
        a.prompt_len, a.new_tokens = max(2, a.prompt_len // 64), min(a.new_tokens, 4)
        a.repeats, a.load_repeats, a.warmup = 1, 1, min(a.warmup, 1)
    if a.new_tokens < 2:
        p.error("--new-tokens must be ≥ 2 (decode speed is measured between the first and last token)")
    try:
        a.grid = [tuple(int(x) for x in g.lower().split("x")) for g in a.prefill_grid]
    except ValueError:
        p.error(f"--prefill-grid takes BxL pairs such as 1x512, got {a.prefill_grid}")
    return a


# Zoo entries narrowed to a few hundred million parameters, structure kept (CPU table, docs/performance.md):
# a sliding window shorter than the prompt, and MLA + DeepSeekMoE (64 experts, top-6, 2 shared, dense layer 0)
DERIVED = {
    "mistral-7b@0.2b": ("mistral-7b", {"d_model": 768, "n_layers": 12, "block": {
        "attention": {"n_heads": 12, "n_kv_heads": 4, "head_dim": 64, "window": 32}, "mlp": {"d_ff": 2048}}}),
    "deepseek-v2-lite@0.4b": ("deepseek-v2-lite", {"d_model": 1024, "n_layers": 4, "block": {
        "attention": {"n_heads": 8}, "mlp": {"d_expert": 192}}, "overrides": [
        {"layers": "0:1", "block": {"mlp": {"type": "glu", "activation": "silu", "d_ff": 2816, "bias": False}}}]}),
}


def shape_config(shape: str) -> llmzoo.ModelConfig:
    """A zoo name, name@tiny / name@small (llmzoo.scale_down), or a DERIVED name."""
    if shape in DERIVED:
        base, patch = DERIVED[shape]
        return llmzoo.get_config(deep_merge(llmzoo.get_config(base).model_dump(), {**patch, "name": shape}))
    name, _, preset = shape.partition("@")
    if preset[:-1].isdigit() and preset.endswith("l"):  # full widths, the first N layers
        cfg = llmzoo.get_config(name)
        return llmzoo.ModelConfig.model_validate({**cfg.to_dict(), "name": f"{cfg.name}-{preset}",
                                                  "n_layers": int(preset[:-1]), "published_params": None,
                                                  "published_active_params": None})
    return llmzoo.scale_down(name, preset=preset) if preset else llmzoo.get_config(name)


# ---------------------------------------------------------------- timing and memory


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Wall seconds of fn(), one per run, over `repeats` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def summary(xs: list[float]) -> dict:
    """median, quartiles, min, max and count of a sample list (seconds)."""
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return dict(median=statistics.median(xs), q1=q[0], q3=q[2], min=xs[0], max=xs[-1], n=len(xs))


def ratio(h: dict, z: dict) -> dict:
    """transformers time / llmzoo time from the medians, with the quartile spread (low, high)."""
    return dict(median=h["median"] / z["median"], low=h["q1"] / max(z["q3"], 1e-12), high=h["q3"] / max(z["q1"], 1e-12))


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


def _trim_heap() -> None:
    """Return freed heap memory to the OS (glibc), so the next load's RSS growth is its own."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: /proc/self/clear_refs 5); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers (a tied or shared tensor counted once)."""
    seen = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in seen.values())


def load_child(spec: dict) -> dict:
    """In this (fresh) interpreter: one untimed load, then `repeats` timed loads; the first timed one
    also gives the peak RSS growth (heap trimmed, VmHWM reset) or CUDA peak allocation."""
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    with torch.inference_mode():
        del_model = load(spec["backend"], spec["folder"], device, dtype)
    del del_model
    _trim_heap()
    times, peak, size = [], 0, 0
    for i in range(spec["repeats"]):
        exact = i == 0 and device.type == "cpu" and _reset_peak_rss()
        with PeakMemory(device) as mem, torch.inference_mode():
            sync(device)
            t = time.perf_counter()
            model = load(spec["backend"], spec["folder"], device, dtype)
            sync(device)
            times.append(time.perf_counter() - t)
        if i == 0:
            peak = max(mem.peak, _peak_rss() - mem.base) if exact else mem.peak
            size = model_bytes(model)
        del model
        _trim_heap()
    return dict(load_s=summary(times), load_peak_bytes=peak, model_bytes=size)


def measure_load(backend: str, folder: str, a, device: torch.device, dtype: torch.dtype) -> dict:
    """load_child in a fresh interpreter per backend: the two loads never share a heap."""
    spec = dict(backend=backend, folder=folder, device=str(device), dtype=str(dtype).removeprefix("torch."),
                repeats=a.load_repeats)
    root = os.path.dirname(os.path.dirname(os.path.abspath(llmzoo.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--load-child", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{backend} load in a child interpreter failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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


class Stamps:
    """A transformers streamer that notes the time each new token reaches the host (put() gets a CPU
    tensor: the device is synchronised). The first put() is the prompt."""

    def __init__(self):
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self) -> None:
        pass


def generate_stamped(backend: str, model, ids: torch.Tensor, new: int, compile, device) -> tuple[float, list[float]]:
    """One greedy generate call of exactly `new` tokens: (time to first token, [seconds of each later step])."""
    mask = torch.ones_like(ids)
    sync(device)
    t0 = time.perf_counter()
    if backend == "llmzoo":  # no eos: always `new` tokens
        stamps = []
        for _ in llmzoo.stream(model, ids, mask, max_new_tokens=new, compile=compile):
            sync(device)
            stamps.append(time.perf_counter())
    else:
        streamer = Stamps()
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, pad_token_id=0, streamer=streamer)
        stamps = streamer.times
    if len(stamps) != new:
        raise RuntimeError(f"{backend} produced {len(stamps)} tokens, {new} asked")
    return stamps[0] - t0, [b - a for a, b in zip(stamps, stamps[1:])]


def run_backend(backend: str, folder: str, cfg, a, device, dtype, check_ids) -> tuple[dict, torch.Tensor]:
    r: dict = measure_load(backend, folder, a, device, dtype)
    gen = torch.Generator().manual_seed(a.seed + 1)
    compile = backend == "llmzoo" and a.compile and ({"backend": a.compile_backend} if a.compile_backend else True)

    def rand_ids(b: int, n: int) -> torch.Tensor:
        return torch.randint(0, cfg.vocab_size, (b, n), generator=gen).to(device)

    with PeakMemory(device) as mem, torch.inference_mode():  # load time and RSS: measure_load's child
        model = load(backend, folder, device, dtype)
        if backend == "llmzoo" and a.tune_layout and a.only != "load":
            t0 = time.perf_counter()
            choices = llmzoo.tune_layout(model, rows=tuple(a.tune_rows))
            r["layout_s"] = time.perf_counter() - t0
            r["layout_column_major"] = [list(c.shape) for c in choices if c.column_major]
        logits = forward(backend, model, check_ids).float().cpu()
        r["prefill_s"] = {}
        for b, n in (() if a.only == "load" else a.grid):
            ids = rand_ids(b, n)
            r["prefill_s"][f"{b}x{n}"] = summary(timed(lambda: forward(backend, model, ids), device, a.repeats, a.warmup))
        r["decode_step_s"], r["ttft_s"] = {}, None
        for b in (() if a.only == "load" else sorted({1, a.decode_batch})):
            ids = rand_ids(b, a.prompt_len)
            for _ in range(a.warmup):  # compiles the decode step when asked
                try:
                    generate_stamped(backend, model, ids, a.new_tokens, compile, device)
                except Exception as e:  # a step that does not compile: recorded, decode measured eager
                    if not compile:
                        raise
                    r["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                    print(f"  compile failed, eager decode: {r['compile_error']}", file=sys.stderr, flush=True)
                    compile = False
            r.setdefault("compiled_decode", bool(compile))
            ttft, steps = [], []
            for _ in range(a.repeats):
                first, later = generate_stamped(backend, model, ids, a.new_tokens, compile, device)
                ttft.append(first)
                steps += later
            r["decode_step_s"][str(b)] = summary(steps)
            if b == 1:
                r["ttft_s"] = summary(ttft)
    r["peak_mem_bytes"] = mem.peak
    r["prefill_tps"] = {k: int(k.split("x")[0]) * int(k.split("x")[1]) / v["median"] for k, v in r["prefill_s"].items()}
    r["decode_tps"] = {k: int(k) / v["median"] for k, v in r["decode_step_s"].items()}
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return r, logits


def bench_shape(shape: str, dtype_name: str, a) -> dict:
    device, dtype = torch.device(a.device), getattr(torch, dtype_name)
    loaded = getattr(torch, a.cast) if a.cast else dtype  # the checkpoint is written in dtype, loaded as this
    cfg = shape_config(shape)
    n = llmzoo.count_params(cfg)
    itemsize = torch.empty((), dtype=loaded).element_size()
    res: dict = dict(shape=shape, device=str(device), dtype=dtype_name + (f"→{a.cast}" if a.cast else ""),
                     params=n.total, active_params=n.active)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmzoo-bench-", dir=a.tmpdir) as folder:
        model = llmzoo.build(cfg, device=device, dtype=dtype, seed=a.seed)
        llmzoo.save_pretrained(model, folder)
        del model
        gc.collect()
        g = torch.Generator().manual_seed(a.seed)
        check_ids = torch.randint(0, cfg.vocab_size, (2, min(a.prompt_len, 64)), generator=g).to(device)
        logits = {}
        for backend in a.backends:
            print(f"[{shape} {dtype_name}] {backend} ... ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            res[backend], logits[backend] = run_backend(backend, folder, cfg, a, device, loaded, check_ids)
    if len(logits) == 2:
        ref = logits["transformers"]
        diff = (logits["llmzoo"] - ref).abs().max().item()
        tol = a.tol if a.tol is not None else (1e-3 if itemsize == 4 else 0.05 * max(1.0, ref.abs().max().item()))
        res["agree"] = dict(max_abs_diff=diff, max_abs_logit=ref.abs().max().item(), tol=tol, passed=diff <= tol)
        z, h = res["llmzoo"], res["transformers"]
        mem = z["peak_mem_bytes"] / max(h["peak_mem_bytes"], 1)
        load_rss = z["load_peak_bytes"] / max(h["load_peak_bytes"], 1)
        res["ratios"] = dict(
            load=ratio(h["load_s"], z["load_s"]),
            load_peak=dict(median=load_rss, low=load_rss, high=load_rss),
            **({} if a.only == "load" else dict(ttft=ratio(h["ttft_s"], z["ttft_s"]))),
            peak_mem=dict(median=mem, low=mem, high=mem),
            **{f"prefill_{k}": ratio(h["prefill_s"][k], z["prefill_s"][k]) for k in z["prefill_s"]},
            **{f"decode_b{k}": ratio(h["decode_step_s"][k], z["decode_step_s"][k]) for k in z["decode_step_s"]},
        )
    res["wall_s"] = time.perf_counter() - t0
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
    """One row per metric: each backend's median (quartiles), the ratio of medians (quartile spread)."""
    cols = ["shape", "dtype", "metric", "llmzoo", "transformers", "ratio"]
    rows = []
    for res in results:
        z, h, q = res.get("llmzoo"), res.get("transformers"), res.get("ratios", {})
        head = [res["shape"], res["dtype"]]
        if "agree" in res:
            g = res["agree"]
            rows.append([*head, "max|Δlogits|", f"{g['max_abs_diff']:.2e}", f"tol {g['tol']:.1e}",
                         "PASS" if g["passed"] else "FAIL"])

        def row(metric, get, fmt, ratio_key=None):
            vals = []
            for r in (z, h):
                v = None if r is None else get(r)
                if v is None:
                    vals.append("-")
                elif isinstance(v, dict):  # a timing summary
                    vals.append(f"{fmt(v['median'])} ({fmt(v['q1'])}–{fmt(v['q3'])})")
                else:
                    vals.append(fmt(v))
            rq = q.get(ratio_key)
            rows.append([*head, metric, *vals, "-" if rq is None else f"{rq['median']:.2f}x ({rq['low']:.2f}–{rq['high']:.2f})"])

        r0 = z or h
        row("load ms", lambda r: r["load_s"], lambda v: f"{1e3 * v:.0f}", "load")
        row("load peak MiB", lambda r: r["load_peak_bytes"], lambda v: f"{v / 2**20:,.0f}", "load_peak")
        if z is not None and "layout_s" in z:
            rows.append([*head, "layout tuning ms", f"{1e3 * z['layout_s']:.0f}", "-", "-"])
        row("load peak / model bytes", lambda r: r["load_peak_bytes"] / max(r["model_bytes"], 1), lambda v: f"{v:.3f}")
        if r0.get("ttft_s") is not None:
            row("ttft ms (b=1)", lambda r: r["ttft_s"], lambda v: f"{1e3 * v:.1f}", "ttft")
        for k in r0["prefill_s"]:
            row(f"prefill ms {k}", lambda r: r["prefill_s"][k], lambda v: f"{1e3 * v:.1f}", f"prefill_{k}")
        for k in r0["decode_step_s"]:
            row(f"decode ms/step b={k}", lambda r: r["decode_step_s"][k], lambda v: f"{1e3 * v:.2f}", f"decode_b{k}")
            row(f"decode tok/s b={k}", lambda r: r["decode_tps"][k], lambda v: f"{v:,.1f}")
        row("peak mem MiB", lambda r: r["peak_mem_bytes"], lambda v: f"{v / 2**20:,.0f}", "peak_mem")
        if "mfu_prefill" in r0:
            for k in r0["mfu_prefill"]:
                row(f"MFU prefill {k}", lambda r: r["mfu_prefill"][k], lambda v: f"{100 * v:.1f}%")
            for k in r0["hbm_share_decode"]:
                row(f"HBM share decode b={k}", lambda r: r["hbm_share_decode"][k], lambda v: f"{100 * v:.1f}%")
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)])


def markdown(results: list[dict]) -> str:
    """The docs/performance.md table: per shape and dtype, each ratio as median (quartile spread) and
    llmzoo's own median; decode also as tokens/s."""
    def cell(res: dict, key: str, z_value: str) -> str:
        q = res.get("ratios", {}).get(key)
        return "-" if q is None else f"**{q['median']:.2f}×** ({q['low']:.2f}–{q['high']:.2f})<br>{z_value}"

    grids = sorted({k for r in results for k in r["llmzoo"]["prefill_s"]})
    batches = sorted({k for r in results for k in r["llmzoo"]["decode_step_s"]}, key=int)
    head = ["shape (params)", "dtype", "load", "TTFT", *(f"prefill {g}" for g in grids),
            *(f"decode b={b}" for b in batches), "peak RSS"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        z = r["llmzoo"]
        cells = [f"{r['shape']} ({r['params'] / 1e6:.0f} M)", r["dtype"],
                 cell(r, "load", f"{z['load_s']['median']:.2f} s"
                      + (f" + {z['layout_s']:.2f} s layout" if "layout_s" in z else "")),
                 cell(r, "ttft", f"{1e3 * z['ttft_s']['median']:.0f} ms")]
        cells += [cell(r, f"prefill_{g}", f"{1e3 * z['prefill_s'][g]['median']:.0f} ms") if g in z["prefill_s"] else "-"
                  for g in grids]
        cells += [cell(r, f"decode_b{b}", f"{1e3 * z['decode_step_s'][b]['median']:.1f} ms/step, "
                       f"{z['decode_tps'][b]:.1f} tok/s") if b in z["decode_step_s"] else "-" for b in batches]
        q = r.get("ratios", {}).get("peak_mem")
        cells.append("-" if q is None else f"**{q['median']:.2f}×**<br>{z['peak_mem_bytes'] / 2**20:,.0f} MiB")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def cpu_name() -> str | None:
    """The CPU as /proc/cpuinfo names it, with its family and model numbers (a VM may say only "AMD EPYC")."""
    try:
        info = dict(line.split(":", 1) for line in open("/proc/cpuinfo").read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        return None
    info = {k.strip(): v.strip() for k, v in info.items()}
    return f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model {info.get('model', '?')})"


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    llmzoo.linear.SPLIT.enabled = a.split_linear
    if a.markdown:
        results = [r for path in a.markdown for r in json.load(open(path))["results"]]
        print(markdown(results))
        return {"results": results}
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    out = dict(
        settings=dict(device=a.device, plan=a.plan, dry_run=a.dry_run, dtype=a.dtype, prefill_grid=a.prefill_grid,
                      decode_batch=a.decode_batch, new_tokens=a.new_tokens, prompt_len=a.prompt_len,
                      only=a.only, cast=a.cast,
                      repeats=a.repeats, load_repeats=a.load_repeats, warmup=a.warmup, compile=a.compile,
                      compile_backend=a.compile_backend, peak_tflops=a.peak_tflops, peak_gbps=a.peak_gbps,
                      tune_layout=a.tune_layout, split_linear=a.split_linear, cpu=cpu_name(),
                      cpu_capability=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads(),
                      torch=torch.__version__, gpu=torch.cuda.get_device_name() if a.device.startswith("cuda") else None),
        results=[],
        wall_s=0.0,
    )
    for d in a.dtype:
        for shape in a.shapes:
            out["results"].append(bench_shape(shape, d, a))
            out["wall_s"] = time.perf_counter() - t0
            if a.out:  # after every shape: a run cut short keeps what it measured
                with open(a.out, "w") as f:
                    json.dump(out, f, indent=1)
    print(table(out["results"]))
    print(f"median (q1–q3) over repeats (decode: over every step of every repeat); ratio: transformers median / "
          f"llmzoo median (>1 = llmzoo faster), spread h.q1/z.q3–h.q3/z.q1; peak mem: llmzoo / transformers. "
          f"{out['wall_s']:.0f} s total", flush=True)
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--load-child"]:  # measure_load's fresh interpreter
        print(json.dumps(load_child(json.loads(sys.argv[2]))))
    else:
        main()
