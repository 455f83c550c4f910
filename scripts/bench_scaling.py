"""Prefill and decode cost against context length (256 → 8k) for a dense, a sliding-window and an MLA shape.

    python scripts/bench_scaling.py                     # docs/img/scaling.json + scaling.png (~6 min, 2 cores)
    python scripts/bench_scaling.py --preset tiny --window 8 --lengths 16 32 --out-dir /tmp/s   # a smoke run

Each shape is a zoo entry scaled down (llmzoo.scale_down preset, max_seq_len raised to the longest
length): dense = mistral-7b@small without its window, sliding window = the same with --window, MLA =
deepseek-v2-lite@small (absorbed latent cache, DeepSeekMoE). For every length L one batch-1 greedy
llmzoo.stream call over a random prompt of L tokens is timed per token (scripts/bench.py's
generate_stamped): prefill = prompt → first token, decode = the gap between two later tokens. Prefill is
reported as seconds per prompt token, decode as seconds per step; each is median (quartiles) over
--repeats calls (decode: over every step of every call). A sliding-window layer keeps `window` rows,
so its decode step should cost the same at every length past the window.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py: timing and summaries)

import llmzoo  # noqa: E402
from llmzoo.config import deep_merge  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LENGTHS = [256, 512, 1024, 2048, 4096, 8192]
KINDS = ("dense", "sliding window", "MLA")


def shapes(preset: str, window: int, longest: int) -> dict[str, llmzoo.ModelConfig]:
    """{label: config} of the three shapes at this preset, each holding `longest` positions."""
    def scaled(name: str, patch: dict) -> llmzoo.ModelConfig:
        c = llmzoo.scale_down(name, preset, max_seq_len=longest)
        return llmzoo.get_config(deep_merge(c.model_dump(), patch))

    return {
        "dense": scaled("mistral-7b", {"name": f"mistral-7b@{preset}-global", "block": {"attention": {"window": None}}}),
        "sliding window": scaled("mistral-7b", {"name": f"mistral-7b@{preset}-window{window}",
                                                "block": {"attention": {"window": window}}}),
        "MLA": scaled("deepseek-v2-lite", {"name": f"deepseek-v2-lite@{preset}"}),
    }


def describe(c: llmzoo.ModelConfig) -> dict:
    a = c.block.attention
    return dict(name=c.name, params=llmzoo.count_params(c).total, d_model=c.d_model, n_layers=c.n_layers,
                attention=a.type, n_heads=a.n_heads, window=getattr(a, "window", None), vocab_size=c.vocab_size)


def measure(c: llmzoo.ModelConfig, lengths: list[int], new: int, repeats: int, seed: int) -> dict:
    model = llmzoo.build(c, seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    cpu = torch.device("cpu")
    out = dict(prefill_s_per_token=[], decode_step_s=[])
    with torch.inference_mode():
        bench.generate_stamped("llmzoo", model, torch.randint(0, c.vocab_size, (1, lengths[0]), generator=gen), new,
                               False, cpu)  # warm-up
        for n in lengths:
            ids = torch.randint(0, c.vocab_size, (1, n), generator=gen)
            ttft, steps = [], []
            for _ in range(repeats):
                first, later = bench.generate_stamped("llmzoo", model, ids, new, False, cpu)
                ttft.append(first / n)
                steps += later
            out["prefill_s_per_token"].append(bench.summary(ttft))
            out["decode_step_s"].append(bench.summary(steps))
            print(f"  L={n}: prefill {1e6 * out['prefill_s_per_token'][-1]['median']:.1f} µs/token, "
                  f"decode {1e3 * out['decode_step_s'][-1]['median']:.2f} ms/step", file=sys.stderr, flush=True)
    return out


def draw(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (pre, dec) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, entry in data["shapes"].items():
        L = data["lengths"]
        for ax, key, scale in ((pre, "prefill_s_per_token", 1e6), (dec, "decode_step_s", 1e3)):
            s = entry[key]
            med = [scale * x["median"] for x in s]
            ax.plot(L, med, marker="o", label=f"{label}: {entry['config']['name']}")
            ax.fill_between(L, [scale * x["q1"] for x in s], [scale * x["q3"] for x in s], alpha=0.25)
        w = entry["config"]["window"]
        if w:
            for ax in (pre, dec):
                ax.axvline(w, color="grey", linestyle=":", linewidth=1)
    pre.set(xscale="log", yscale="log", xlabel="prompt length (tokens)", ylabel="µs per prompt token",
            title="prefill (prompt → first token), batch 1")
    dec.set(xscale="log", yscale="log", xlabel="context length (tokens)", ylabel="ms per decode step",
            title="decode step after the prompt, batch 1")
    for ax in (pre, dec):
        ax.minorticks_off()
        ax.set_xticks(data["lengths"], [str(n) for n in data["lengths"]])
        ax.grid(True, which="both", alpha=0.3)
    dec.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"llmzoo on {data['machine']['cpu']} ({data['machine']['threads']} threads), "
                 f"{data['dtype']}; dotted: the window; band: quartiles", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", help="llmzoo.scale_down preset of the three shapes")
    p.add_argument("--window", type=int, default=1024, help="the sliding-window shape's window")
    p.add_argument("--lengths", nargs="+", type=int, default=LENGTHS)
    p.add_argument("--new-tokens", type=int, default=12, help="tokens per call (≥ 2: decode is timed between them)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="a subset of the shapes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=str(ROOT / "docs" / "img"), help="where scaling.json and scaling.png go")
    a = p.parse_args(argv)
    longest = max(a.lengths) + a.new_tokens
    t0 = time.perf_counter()
    data = dict(machine=dict(cpu=cpu_model(), threads=torch.get_num_threads(), torch=torch.__version__,
                             omp_num_threads=os.environ.get("OMP_NUM_THREADS")),
                dtype="float32", preset=a.preset, window=a.window, lengths=a.lengths, new_tokens=a.new_tokens,
                repeats=a.repeats, shapes={})
    for label, c in shapes(a.preset, a.window, longest).items():
        if label not in a.kinds:
            continue
        print(f"[{label}] {c.name}", file=sys.stderr, flush=True)
        data["shapes"][label] = dict(config=describe(c), **measure(c, a.lengths, a.new_tokens, a.repeats, a.seed))
    data["wall_s"] = time.perf_counter() - t0
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(data, indent=1) + "\n")
    draw(data, out / "scaling.png")
    print(f"wrote {out / 'scaling.json'} and scaling.png ({data['wall_s']:.0f} s)", file=sys.stderr)
    return data


if __name__ == "__main__":
    main()
