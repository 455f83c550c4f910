"""`llmzoo` command line: list, show, params, memory, tiny, export-config, parity, verify, generate, plot, serve.

Each verb is a function `cmd_<verb>(args) -> int` and a `_add_<verb>` that declares its arguments,
help and example; `main` wires argparse. Every failure llmzoo reports on purpose (`LLMZooError`)
and every bad invocation prints one short line on stderr and exits 2; `--debug` adds the traceback.
`--json` (list, show, params, memory, parity, verify) prints one JSON document on stdout; its keys
are documented in docs/cli.md and kept stable.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from typing import Any, Callable, Sequence

from torch import nn

from . import __version__
from .builder import DTYPE_ALIASES, build
from .errors import LLMZooError
from .generation import stream
from .hf import from_pretrained, load_plugins
from .hf.export import save_config, save_tiny
from .hf.loader import resolve_source
from .parallel import memory_estimate
from .params import count_params, kv_cache_bytes
from .parity import parity, tolerance_notes, verify, verify_rows
from .plot import plot_kv_cache, plot_params
from .progress import quiet
from .scaling import PRESETS, scale_down
from .serve import serve
from .tokenizer import Tokenizer
from .zoo import config_path, get_config, list_models

# ------------------------------------------------------------------------------ formatting


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


def _number(x: float | None) -> float | int | None:
    """A JSON-safe number: NaN / inf become null, whole floats stay floats."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    return x


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# ------------------------------------------------------------------------------ argument types

COMPUTE_DTYPES = ["float32", "bfloat16", "float16"]
STORAGE_DTYPES = [*COMPUTE_DTYPES, "float8_e4m3fn", "int8", "int4"]


def dtype_arg(value: str) -> str:
    """--dtype: a dtype name or an alias (bf16, fp16, fp32, fp8); argparse checks the choices."""
    value = value.removeprefix("torch.")
    return DTYPE_ALIASES.get(value, value)


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return n


def non_negative_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ 0")
    return x


def _zoo_name(name: str) -> str:
    """A zoo entry name, or a KeyError with the closest names (raised before any heavy import)."""

    config_path(name)
    return name


# ------------------------------------------------------------------------------ list


def cmd_list(args: argparse.Namespace) -> int:
    import difflib

    wanted = [set(list_models(p, family=args.family)) for p in args.patterns or [None]]
    names = [n for n in list_models(family=args.family) if any(n in w for w in wanted)]
    if not names:
        shown = " ".join(args.patterns)
        close = difflib.get_close_matches(args.patterns[0], list_models(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; try a wildcard such as '*llama*'"
        raise LLMZooError(f"no zoo entry matches {shown!r}" + (f" in family {args.family!r}" if args.family else "")
                          + hint)
    rows = []
    for name in names:
        c = get_config(name)
        rows.append({"name": name, "family": config_path(name).parent.name,
                     "published_params": c.published_params and int(c.published_params)})
    if args.json:
        print_json(rows)
    else:
        print(format_table([(r["name"], r["family"], human(r["published_params"])) for r in rows],
                           ["name", "family", "published"]))
    return 0


# ------------------------------------------------------------------------------ show


def _signature(module: nn.Module) -> tuple:
    """Structure of a module: what makes two layers identical (module kinds, parameter names and shapes)."""
    return (tuple(type(m).__name__ for m in module.modules()),
            tuple((n, tuple(p.shape)) for n, p in module.named_parameters()))


def _runs(layers: nn.ModuleList) -> list[tuple[int, int]]:
    """(first, last) index of each run of identical consecutive layers."""
    runs: list[tuple[int, int]] = []
    prev = None
    for i, layer in enumerate(layers):
        sig = _signature(layer)
        if runs and sig == prev:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
        prev = sig
    return runs


def module_tree(model: nn.Module, depth: int = 3) -> list[dict[str, Any]]:
    """Rows {module, depth, params, layers} down to `depth`; every row's params sum its children's.

    Only identical consecutive layers share a row (`blocks.3-60`, layers: 58, params: all 58 together),
    so DeepSeek's dense first layers and its MoE layers are separate rows. A tied tensor counts once,
    where it first appears (a tied head shows 0 and says so)."""
    owned = {name: p.numel() for name, p in model.named_parameters()}  # deduplicated: a tied tensor once

    def count(prefixes: list[str]) -> int:
        return sum(n for name, n in owned.items() if any(name.startswith(q + ".") for q in prefixes))

    rows: list[dict[str, Any]] = []

    def walk(prefixes: list[str], module: nn.Module, label: str, level: int) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Identity):
                continue
            quals = [f"{q}.{name}" if q else name for q in prefixes]
            lab = f"{label}.{name}" if label else name
            n = count(quals)
            tied = n == 0 and any(True for _ in child.parameters())
            rows.append({"module": lab + (" (tied: counted above)" if tied else ""), "depth": level,
                         "params": n, "layers": None})
            if isinstance(child, nn.ModuleList):
                for first, last in _runs(child):
                    sub = [f"{q}.{i}" for q in quals for i in range(first, last + 1)]
                    sub_lab = f"{lab}.{first}" if first == last else f"{lab}.{first}-{last}"
                    rows.append({"module": sub_lab, "depth": level + 1, "params": count(sub),
                                 "layers": last - first + 1})
                    if level + 2 < depth:
                        walk(sub, child[first], sub_lab, level + 2)
            elif level + 1 < depth:
                walk(quals, child, lab, level + 1)

    walk([""], model, "", 0)
    return rows


def cmd_show(args: argparse.Namespace) -> int:
    if args.preset:
        config = scale_down(args.name, preset=args.preset)
    else:
        config = get_config(args.name)
    model = build(config, device="meta")
    tree = module_tree(model, args.depth)
    total = sum(p.numel() for p in model.parameters())
    if args.json:
        print_json({"config": config.to_dict(), "modules": tree, "total_params": total})
        return 0
    print(config.to_yaml())

    def label(r: dict) -> str:
        each = f" (×{r['layers']}, {r['params'] // r['layers']:,} each)" if r["layers"] and r["layers"] > 1 else ""
        return "  " * r["depth"] + r["module"] + each

    rows = [(label(r), f"{r['params']:,}") for r in tree] + [("total", f"{total:,}")]
    print(format_table(rows, ["module", "params"]))
    return 0


# ------------------------------------------------------------------------------ params


def cmd_params(args: argparse.Namespace) -> int:
    names = [_zoo_name(n) for n in args.names] if args.names else list_models()
    rows = []
    for name in names:
        c = get_config(name)
        n = count_params(c)
        rows.append({
            "name": name,
            "published_params": c.published_params and int(c.published_params),
            "params": n.total,
            "delta": (n.total / c.published_params - 1) if c.published_params else None,
            "published_active_params": c.published_active_params and int(c.published_active_params),
            "active_params": n.active,
            "kv_cache_bytes_per_token": kv_cache_bytes(c, seq_len=1, batch=1, dtype=args.dtype),
        })
    if args.json:
        print_json(rows)
        return 0
    table = [(r["name"], human(r["published_params"]), human(r["params"]),
              "-" if r["delta"] is None else f"{100 * r['delta']:+.1f}%", human(r["published_active_params"]),
              human(r["active_params"]), f"{r['kv_cache_bytes_per_token'] / 1024:.1f}") for r in rows]
    print(format_table(table, ["name", "published", "computed", "Δ", "pub. active", "active",
                               f"KV KiB/token ({args.dtype})"]))
    return 0


# ------------------------------------------------------------------------------ memory


def cmd_memory(args: argparse.Namespace) -> int:
    m = memory_estimate(_zoo_name(args.name), tp=args.tp, dp=args.dp, ep=args.ep, dtype=args.dtype,
                        seq_len=args.seq, batch=args.batch)
    data = {"name": args.name, "tp": args.tp, "dp": args.dp, "ep": args.ep, "ranks": args.tp * args.dp,
            "dtype": args.dtype, "seq_len": args.seq, "batch": args.batch,
            "params_total_bytes": m["params_total"], "params_per_rank_bytes": m["params"],
            "params_ideal_per_rank_bytes": m["params_ideal"], "kv_cache_per_rank_bytes": m["kv_cache"],
            "total_per_rank_bytes": m["params"] + m["kv_cache"]}
    if args.json:
        print_json(data)
        return 0
    gib = 2**30
    print(f"{args.name}: tp={args.tp} dp={args.dp}{' ep' if args.ep else ''} ({args.tp * args.dp} ranks), "
          f"{args.dtype}, {args.batch} × {args.seq} tokens")
    rows = [
        ("parameters, whole model", f"{m['params_total'] / gib:.2f}"),
        ("parameters per rank", f"{m['params'] / gib:.2f}"),
        ("  (count_params / ranks)", f"{m['params_ideal'] / gib:.2f}"),
        (f"KV cache per rank (⌈{args.batch}/{args.dp}⌉ seqs)", f"{m['kv_cache'] / gib:.2f}"),
        ("total per rank (no activations)", f"{(m['params'] + m['kv_cache']) / gib:.2f}"),
    ]
    print(format_table(rows, ["bytes per rank", "GiB"]))
    return 0


# ------------------------------------------------------------------------------ tiny, export-config


def cmd_tiny(args: argparse.Namespace) -> int:
    config = scale_down(_zoo_name(args.name), preset=args.preset)
    if args.out is None:
        print(config.to_yaml(), end="")
        return 0


    folder = save_tiny(config, args.out, seed=args.seed, model_type=args.model_type)
    code = sorted(p.name for p in folder.glob("*.py"))  # remote-code types: transformers needs trust_remote_code
    print(f"wrote {config.name} to {folder} (config.json, generation_config.json, model.safetensors, tokenizer.json"
          f"{''.join(', ' + c for c in code)})")
    return 0


def cmd_export_config(args: argparse.Namespace) -> int:
    path = save_config(get_config(_zoo_name(args.name)), args.out, model_type=args.model_type)
    print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------ parity, verify


def report_dict(r: Any) -> dict[str, Any]:
    """The stable JSON form of a ParityReport (docs/cli.md)."""
    div = r.first_divergence
    return {
        "model_type": r.model_type,
        "dtype": r.dtype,
        "reference": getattr(r, "reference", None),
        "passed": bool(r.passed),
        "max_abs_logits": _number(r.max_abs),
        "mean_abs_logits": _number(r.mean_abs),
        "tolerance": _number(r.tolerance),
        "tolerance_rule": getattr(r, "tolerance_rule", None),
        "nmse": _number(getattr(r, "nmse", None)),
        "nmse_tolerance": _number(getattr(r, "nmse_tolerance", None)),
        "top_k": getattr(r, "top_k", None),
        "top_k_agreement": _number(getattr(r, "top_k_agreement", None)),
        "min_top_k": _number(getattr(r, "min_top_k", None)),
        "routed": bool(getattr(r, "routed", False)),
        "top1": _number(r.top1),
        "kl": _number(r.kl),
        "first_divergence": None if div is None else str(div),
        "seconds": round(r.seconds, 3),
    }


def cmd_parity(args: argparse.Namespace) -> int:
    try:  # llmzoo's own bars show the load; transformers' would print even into a log file
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    report = parity(args.source, dtype=args.dtype, seq_len=args.seq_len, seed=args.seed)
    if args.json:
        print_json(report_dict(report))
    else:
        print(report)
        print(f"  reference: {report.reference}; tolerance: {report.tolerance_rule}")
    return 0 if report.passed else 1


def _check_model_types(wanted: list[str]) -> list[str]:
    import difflib


    load_plugins()
    known = verify_rows()
    for mt in wanted:
        if mt not in known:
            close = difflib.get_close_matches(mt, known, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"supported: {', '.join(known)}"
            raise LLMZooError(f"no model_type {mt!r} to verify; {hint}")
    return wanted


def cmd_verify(args: argparse.Namespace) -> int:
    import io


    wanted = _check_model_types(args.model_types) or None
    reports = verify(wanted, seed=args.seed, dtype=args.dtype, file=io.StringIO() if args.json else None)
    passed = all(r.passed for r in reports)
    if args.json:
        print_json({"passed": passed, "dtype": args.dtype, "rows": [report_dict(r) for r in reports]})
    else:
        print("\n".join(tolerance_notes(reports)))
    return 0 if passed else 1


# ------------------------------------------------------------------------------ generate


def cmd_generate(args: argparse.Namespace) -> int:
    folder, _ = resolve_source(args.source)
    tokenizer = Tokenizer(folder)
    model = from_pretrained(args.source, dtype=args.dtype, device=args.device).eval()
    ids, mask = tokenizer.encode_batch([args.prompt])
    sampling = dict(do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    seed=args.seed) if args.sample else {}
    decoder = tokenizer.stream_decoder()
    tokens = stream(model, ids.to(args.device), mask.to(args.device), max_new_tokens=args.max_new_tokens,
                    repetition_penalty=args.repetition_penalty, eos_token_id=tokenizer.eos_token_ids,
                    pad_token_id=tokenizer.pad_token_id, **sampling)
    first = next(tokens, None)  # errors (e.g. an unsupported model) surface before the prompt is echoed
    seq2seq = model.config.encoder is not None  # T5: the prompt is the source, the output a new text
    print(args.prompt, end="\n" if seq2seq else "", flush=True)
    if first is not None:
        print(decoder.push(int(first[0])), end="", flush=True)
        for token in tokens:
            print(decoder.push(int(token[0])), end="", flush=True)
    print()
    return 0


# ------------------------------------------------------------------------------ plot


def cmd_plot(args: argparse.Namespace) -> int:
    names = [_zoo_name(n) for n in args.names]

    written = []
    if args.kind in ("kv", "both"):
        written.append(plot_kv_cache(names, f"{args.out}/kv_cache.png", max_context=args.max_context,
                                     dtype=args.dtype))
    if args.kind in ("params", "both"):
        written.append(plot_params(names, f"{args.out}/params.png"))
    for path in written:
        print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------ serve


def cmd_serve(args: argparse.Namespace) -> int:
    serve(args.source, host=args.host, port=args.port, model_name=args.model_name, dtype=args.dtype,
          device=args.device, block_size=args.block_size, n_blocks=args.n_blocks, max_seqs=args.max_seqs,
          max_batch_tokens=args.max_batch_tokens)
    return 0


# ------------------------------------------------------------------------------ parser

VERBS: list[tuple[str, str, str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = []


def verb(name: str, summary: str):
    """Register `_add_<verb>(parser)` with its one-line summary; its docstring is the example shown in
    --help (a docstring, so shared code names no zoo entry in its strings)."""
    def wrap(add: Callable[[argparse.ArgumentParser], None]):
        example = "\n  ".join(line.strip() for line in (add.__doc__ or "").strip().splitlines())
        VERBS.append((name, summary, example, add, globals()[f"cmd_{name.replace('-', '_')}"]))
        return add
    return wrap


def _json_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument("--json", action="store_true", help="print one JSON document (keys: docs/cli.md)")


@verb("list", "zoo entries, optionally filtered")
def _add_list(s: argparse.ArgumentParser) -> None:
    """llmzoo list '*llama*'
    llmzoo list --family deepseek --json"""
    s.add_argument("patterns", nargs="*", metavar="PATTERN",
                   help="globs over names (quote them: '*llama*'); a plain word matches as a substring; "
                        "an entry matching any pattern is listed")
    s.add_argument("--family", default=None,
                   help="a family folder under configs/, a glob or a prefix of folder names")
    _json_flag(s)


@verb("show", "resolved config and a per-module parameter tree")
def _add_show(s: argparse.ArgumentParser) -> None:
    """llmzoo show deepseek-v3 --depth 2"""
    s.add_argument("name", help="zoo entry (see llmzoo list)")
    s.add_argument("--depth", type=positive_int, default=3,
                   help="module levels to show; identical consecutive layers share a row (default: %(default)s)")
    s.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="show the scaled-down config instead of the full one")
    _json_flag(s)


@verb("params", "published vs computed parameter counts and KV-cache bytes per token")
def _add_params(s: argparse.ArgumentParser) -> None:
    """llmzoo params llama-2-70b deepseek-v3"""
    s.add_argument("names", nargs="*", help="zoo entries (default: every entry)")
    s.add_argument("--dtype", type=dtype_arg, choices=STORAGE_DTYPES, default="bfloat16",
                   help="KV-cache element type (default: %(default)s; aliases bf16, fp16, fp32, fp8)")
    _json_flag(s)


@verb("memory", "bytes per rank under llmzoo.parallel (tensor parallel × FSDP2)")
def _add_memory(s: argparse.ArgumentParser) -> None:
    """llmzoo memory deepseek-v3 --tp 8 --dp 2 --ep --dtype fp8"""
    s.add_argument("name", help="zoo entry")
    s.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel ranks (default: %(default)s)")
    s.add_argument("--dp", type=positive_int, default=1, help="FSDP2 (data-parallel) ranks (default: %(default)s)")
    s.add_argument("--ep", action="store_true", help="split MoE experts across the tp ranks")
    s.add_argument("--dtype", type=dtype_arg, choices=STORAGE_DTYPES, default="bfloat16",
                   help="parameter and KV-cache type (default: %(default)s; aliases bf16, fp16, fp32, fp8; "
                        "int4 counts half a byte)")
    s.add_argument("--seq", type=positive_int, default=4096, help="tokens per sequence in the KV cache (default: %(default)s)")
    s.add_argument("--batch", type=positive_int, default=1, help="sequences across the dp ranks (default: %(default)s)")
    _json_flag(s)


@verb("tiny", "the scaled-down config as YAML, or (--out) a tiny random checkpoint folder")
def _add_tiny(s: argparse.ArgumentParser) -> None:
    """llmzoo tiny llama-2-7b --out /tmp/tiny && llmzoo generate /tmp/tiny --prompt 'hello'"""
    s.add_argument("name", help="zoo entry")
    s.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="scale-down preset (default: %(default)s)")
    s.add_argument("--out", default=None, metavar="DIR",
                   help="write config.json, generation_config.json, model.safetensors and tokenizer.json here")
    s.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    s.add_argument("--model-type", default=None,
                   help="Hugging Face model_type to write (default: the family's adapter)")


@verb("export-config", "a full-size zoo entry as a Hugging Face config.json (no weights)")
def _add_export_config(s: argparse.ArgumentParser) -> None:
    """llmzoo export-config llama-2-70b /tmp/llama-2-70b"""
    s.add_argument("name", help="zoo entry")
    s.add_argument("out", metavar="DIR", help="folder to write config.json into (created if missing)")
    s.add_argument("--model-type", default=None,
                   help="Hugging Face model_type to write (default: the family's adapter)")


@verb("parity", "compare llmzoo with transformers on a checkpoint: |Δlogits|, top-1, KL")
def _add_parity(s: argparse.ArgumentParser) -> None:
    """llmzoo parity /tmp/tiny --dtype bf16"""
    s.add_argument("source", help="checkpoint folder, .safetensors file or hub id")
    s.add_argument("--dtype", type=dtype_arg, choices=COMPUTE_DTYPES, default="float32",
                   help="compute type of both models (default: %(default)s; aliases bf16, fp16, fp32)")
    s.add_argument("--seq-len", type=positive_int, default=24,
                   help="tokens per test sequence, at most the model's position table (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random test batch (default: %(default)s)")
    _json_flag(s)


@verb("verify", "a tiny random reference per supported model_type vs llmzoo, one table")
def _add_verify(s: argparse.ArgumentParser) -> None:
    """llmzoo verify llama t5 --dtype bf16"""
    s.add_argument("model_types", nargs="*", help="default: every supported model_type and every registered check")
    s.add_argument("--dtype", type=dtype_arg, choices=COMPUTE_DTYPES, default="float32",
                   help="compute type (default: %(default)s; aliases bf16, fp16, fp32); the footer says "
                        "which tolerance applied and why")
    s.add_argument("--seed", type=int, default=0, help="seed of weights and batch (default: %(default)s)")
    _json_flag(s)


@verb("generate", "continue a prompt with a checkpoint, printing text as it is produced")
def _add_generate(s: argparse.ArgumentParser) -> None:
    """llmzoo generate /tmp/tiny --prompt 'Once upon a time' --sample --top-p 0.9"""
    s.add_argument("source", help="checkpoint folder (config.json, safetensors, tokenizer.json) or hub id")
    s.add_argument("--prompt", required=True, help="text to continue")
    s.add_argument("--max-new-tokens", type=positive_int, default=64, help="default: %(default)s")
    s.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    s.add_argument("--temperature", type=non_negative_float, default=1.0, help="with --sample (default: %(default)s)")
    s.add_argument("--top-k", type=positive_int, default=None, help="with --sample: keep the k likeliest tokens")
    s.add_argument("--top-p", type=non_negative_float, default=None, help="with --sample: nucleus mass, e.g. 0.9")
    s.add_argument("--repetition-penalty", type=non_negative_float, default=None, help="e.g. 1.1 (default: none)")
    s.add_argument("--seed", type=int, default=0, help="seed for --sample (default: %(default)s)")
    s.add_argument("--dtype", type=dtype_arg, choices=COMPUTE_DTYPES, default=None,
                   help="cast the weights (default: as stored; aliases bf16, fp16, fp32)")
    s.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")


@verb("plot", "pictures: KV-cache bytes per token vs context, parameter breakdown (needs llmzoo[plot])")
def _add_plot(s: argparse.ArgumentParser) -> None:
    """llmzoo plot llama-2-70b mistral-7b deepseek-v3 --out docs/img"""
    s.add_argument("names", nargs="+", help="zoo entries to compare")
    s.add_argument("--kind", choices=["kv", "params", "both"], default="both", help="which plot (default: %(default)s)")
    s.add_argument("--out", default=".", metavar="DIR", help="folder for kv_cache.png / params.png (default: .)")
    s.add_argument("--max-context", type=positive_int, default=131072,
                   help="longest context on the KV plot's x axis (default: %(default)s)")
    s.add_argument("--dtype", type=dtype_arg, choices=STORAGE_DTYPES, default="bfloat16",
                   help="KV-cache element type (default: %(default)s)")


@verb("serve", "OpenAI-compatible HTTP server (paged KV cache, continuous batching; needs llmzoo[serve])")
def _add_serve(s: argparse.ArgumentParser) -> None:
    """llmzoo serve /tmp/tiny --port 8000 --max-seqs 8"""
    s.add_argument("source", help="checkpoint folder (config.json, safetensors, tokenizer.json) or hub id")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    s.add_argument("--port", type=positive_int, default=8000, help="default: %(default)s")
    s.add_argument("--model-name", default=None, help="the id clients send as 'model' (default: SOURCE)")
    s.add_argument("--dtype", type=dtype_arg, choices=COMPUTE_DTYPES, default=None,
                   help="cast the weights (default: as stored; aliases bf16, fp16, fp32)")
    s.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    s.add_argument("--block-size", type=positive_int, default=16, help="tokens per KV block (default: %(default)s)")
    s.add_argument("--n-blocks", type=positive_int, default=None,
                   help="blocks per pool (default: max-seqs full sequences)")
    s.add_argument("--max-seqs", type=positive_int, default=32, help="requests running at once (default: %(default)s)")
    s.add_argument("--max-batch-tokens", type=positive_int, default=256,
                   help="tokens one step may feed, prefill chunks included (default: %(default)s)")


def _common() -> argparse.ArgumentParser:
    # flags accepted before or after the verb; SUPPRESS keeps a sub-parser from resetting them
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    c.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    return c


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    p = argparse.ArgumentParser(
        prog="llmzoo", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Published LLM architectures from config, as plain PyTorch modules, proved against the reference.",
        epilog="examples:\n" + "\n".join(f"  {ex.splitlines()[0]}" for _, _, ex, _, _ in VERBS)
        + "\n\n`llmzoo VERB --help` documents each verb.")
    p.add_argument("--version", action="version", version=f"llmzoo {__version__}")
    p.set_defaults(debug=False, quiet=False)
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, summary, example, add, func in VERBS:
        s = sub.add_parser(name, help=summary, description=summary, parents=[common],
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="example:\n  " + example)
        add(s)
        s.set_defaults(func=func, subparser=s)
    return p


_parser = build_parser  # the name callers (tests/test_serve.py) knew before


def _one_line(e: BaseException, limit: int = 12) -> str:
    """The error message; a long one keeps its first `limit` lines."""
    text = (e.args[0] if isinstance(e, KeyError) and e.args else str(e)) or type(e).__name__
    lines = str(text).splitlines() or [""]
    if len(lines) > limit:
        lines = [*lines[:limit], f"… {len(lines) - limit} more lines (--debug shows all)"]
    return "\n  ".join(line.strip() if i else line for i, line in enumerate(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse would blame the top-level parser; the verb's usage is the helpful one
        args.subparser.error(f"unrecognized arguments: {' '.join(extra)}")

    with quiet(args.quiet):  # --quiet lasts for this call only (tests and scripts call main in-process)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """The verb, every error one line on stderr (the traceback with --debug)."""
    try:
        return args.func(args)
    except (LLMZooError, KeyError, ValueError, FileNotFoundError, ImportError, NotImplementedError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"llmzoo {args.verb}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llmzoo {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `llmzoo list | head`
        sys.stderr.close()
        return 0
    except Exception as e:  # a bug, not a bad input: still one line, the traceback on request
        if args.debug:
            traceback.print_exc()
        print(f"llmzoo {args.verb}: internal error: {type(e).__name__}: {_one_line(e, 3)} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
