"""`llmzoo` command line: list, show, params, tiny, parity, verify, generate.

Each verb is a function `cmd_<verb>(args) -> int` plus an entry in `VERBS`; `main` wires argparse.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch
from torch import nn

from .builder import build
from .generation import stream
from .hf import from_pretrained, save_pretrained
from .hf.loader import resolve_source
from .parallel.memory import memory_estimate
from .params import count_params, kv_cache_bytes
from .parity import parity, verify
from .scaling import scale_down
from .serve import serve
from .tokenizer import Tokenizer
from .zoo import config_path, get_config, list_models


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """Plain aligned text table (numbers right-aligned)."""
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) and len(cells) > 1 for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _is_number(s: str) -> bool:
    try:
        float(s.replace(",", "").rstrip("%BMK"))
        return True
    except ValueError:
        return s in ("-", "")


def human(n: float | None) -> str:
    """1.23B / 456.7M / 12.3K."""
    if n is None:
        return "-"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def cmd_list(args: argparse.Namespace) -> int:
    rows = [(name, config_path(name).parent.name) for name in list_models(args.family)]
    print(format_table(rows, ["name", "family"]))
    return 0


def module_tree(model: nn.Module, depth: int = 2) -> list[tuple[str, int]]:
    """(qualified name, parameter count) down to `depth`; repeated blocks show only the first."""
    rows: list[tuple[str, int]] = []

    def walk(prefix: str, module: nn.Module, level: int) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Identity):
                continue
            qual = f"{prefix}.{name}" if prefix else name
            count = sum(p.numel() for p in child.parameters())
            if isinstance(module, nn.ModuleList) and name != "0":
                continue
            label = f"{qual} (×{len(module)})" if isinstance(module, nn.ModuleList) else qual
            rows.append(("  " * level + label, count))
            if level + 1 < depth or isinstance(child, nn.ModuleList):
                walk(qual, child, level + 1)

    walk("", model, 0)
    return rows


def cmd_show(args: argparse.Namespace) -> int:
    config = get_config(args.name)
    print(config.to_yaml())
    model = build(config, device="meta")
    print(format_table([(n, f"{c:,}") for n, c in module_tree(model, args.depth)], ["module", "params"]))
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    rows = []
    for name in args.names or list_models():
        c = get_config(name)
        n = count_params(c)
        delta = f"{100 * (n.total / c.published_params - 1):+.1f}%" if c.published_params else "-"
        kv = kv_cache_bytes(c, seq_len=1, batch=1, dtype="bfloat16")
        rows.append((name, human(c.published_params), human(n.total), delta,
                     human(c.published_active_params), human(n.active), f"{kv / 1024:.1f}"))
    print(format_table(rows, ["name", "published", "computed", "Δ", "pub. active", "active", "KV KiB/token"]))
    return 0


def cmd_tiny(args: argparse.Namespace) -> int:
    config = scale_down(args.name, preset=args.preset)
    if args.out is None:
        print(config.to_yaml(), end="")
        return 0
    save_pretrained(build(config, seed=args.seed), args.out)
    print(f"wrote {config.name} to {args.out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    folder, _ = resolve_source(args.source)
    tokenizer = Tokenizer(folder)
    model = from_pretrained(args.source, dtype=args.dtype, device=args.device).eval()
    ids, mask = tokenizer.encode_batch([args.prompt])
    sampling = dict(do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    seed=args.seed) if args.sample else {}
    decoder = tokenizer.stream_decoder()
    seq2seq = model.config.encoder is not None  # T5: the prompt is the source, the output a new text
    print(args.prompt, end="\n" if seq2seq else "", flush=True)
    for token in stream(model, ids.to(args.device), mask.to(args.device), max_new_tokens=args.max_new_tokens,
                        repetition_penalty=args.repetition_penalty, eos_token_id=tokenizer.eos_token_ids,
                        pad_token_id=tokenizer.pad_token_id, **sampling):
        print(decoder.push(int(token[0])), end="", flush=True)
    print()
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    report = parity(args.source, dtype=args.dtype, seq_len=args.seq_len, seed=args.seed)
    print(report)
    return 0 if report.passed else 1


def cmd_verify(args: argparse.Namespace) -> int:
    reports = verify(args.model_types or None, seed=args.seed, dtype=args.dtype)
    return 0 if all(r.passed for r in reports) else 1


DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp8": "float8_e4m3fn"}


def cmd_memory(args: argparse.Namespace) -> int:
    dtype = DTYPE_ALIASES.get(args.dtype, args.dtype)
    m = memory_estimate(args.name, tp=args.tp, dp=args.dp, ep=args.ep, dtype=dtype, seq_len=args.seq, batch=args.batch)
    gib = 2**30
    print(f"{args.name}: tp={args.tp} dp={args.dp}{' ep' if args.ep else ''} ({args.tp * args.dp} ranks), {dtype}, "
          f"{args.batch} × {args.seq} tokens")
    rows = [
        ("parameters, whole model", f"{m['params_total'] / gib:.2f}"),
        ("parameters per rank", f"{m['params'] / gib:.2f}"),
        ("  (count_params / ranks)", f"{m['params_ideal'] / gib:.2f}"),
        (f"KV cache per rank (⌈{args.batch}/{args.dp}⌉ seqs)", f"{m['kv_cache'] / gib:.2f}"),
        ("total per rank (no activations)", f"{(m['params'] + m['kv_cache']) / gib:.2f}"),
    ]
    print(format_table(rows, ["bytes per rank", "GiB"]))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    serve(args.source, host=args.host, port=args.port, model_name=args.model_name, dtype=args.dtype,
          device=args.device, block_size=args.block_size, n_blocks=args.n_blocks, max_seqs=args.max_seqs,
          max_batch_tokens=args.max_batch_tokens)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmzoo", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)

    s = sub.add_parser("list", help="zoo entries")
    s.add_argument("--family", default=None)
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("show", help="resolved config and a per-module parameter tree")
    s.add_argument("name")
    s.add_argument("--depth", type=int, default=3)
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("params", help="published vs computed parameter counts")
    s.add_argument("names", nargs="*")
    s.set_defaults(func=cmd_params)

    s = sub.add_parser("tiny", help="the scaled-down config as YAML, or a tiny random HF checkpoint with --out")
    s.add_argument("name")
    s.add_argument("--preset", default="tiny")
    s.add_argument("--out", default=None)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_tiny)

    s = sub.add_parser("generate", help="continue a prompt with a checkpoint, printing text as it is produced")
    s.add_argument("source", help="checkpoint folder (config.json, safetensors, tokenizer.json) or hub id")
    s.add_argument("--prompt", required=True)
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--repetition-penalty", type=float, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", default=None, help="e.g. bfloat16 (default: as stored)")
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("parity", help="compare llmzoo with transformers on a checkpoint: |Δlogits|, top-1, KL")
    s.add_argument("source", help="checkpoint folder, .safetensors file or hub id")
    s.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    s.add_argument("--seq-len", type=int, default=24)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_parity)

    s = sub.add_parser("verify", help="tiny random reference per supported model_type vs llmzoo, one table")
    s.add_argument("model_types", nargs="*", help="default: every supported model_type")
    s.add_argument("--dtype", default="float32")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("memory", help="bytes per rank under llmzoo.parallel (tensor parallel × FSDP2)")
    s.add_argument("name")
    s.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks")
    s.add_argument("--dp", type=int, default=1, help="FSDP2 (data-parallel) ranks")
    s.add_argument("--ep", action="store_true", help="split MoE experts across the tp ranks")
    s.add_argument("--dtype", default="bf16", help="bf16, fp16, fp32 or a torch dtype name")
    s.add_argument("--seq", type=int, default=4096, help="tokens per sequence in the KV cache")
    s.add_argument("--batch", type=int, default=1, help="sequences across the dp ranks")
    s.set_defaults(func=cmd_memory)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (paged KV cache, continuous batching)")
    s.add_argument("source", help="checkpoint folder (config.json, safetensors, tokenizer.json) or hub id")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--model-name", default=None, help="the id clients send as 'model' (default: SOURCE)")
    s.add_argument("--dtype", default=None, help="e.g. bfloat16 (default: as stored)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    s.add_argument("--n-blocks", type=int, default=None, help="blocks per pool (default: max-seqs full sequences)")
    s.add_argument("--max-seqs", type=int, default=32, help="requests running at once")
    s.add_argument("--max-batch-tokens", type=int, default=256, help="tokens one step may feed (prefill chunks)")
    s.set_defaults(func=cmd_serve)

    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"llmzoo {args.verb}: error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
