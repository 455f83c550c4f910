"""Pictures of the zoo: KV-cache bytes per token against context length, and where the parameters are.

The numbers come from the config alone (`kv_cache_bytes`, `count_params`): `kv_cache_data` and
`param_data` return them as plain dicts (what docs/img/plots.json stores), `plot_kv_cache` and
`plot_params` draw them with matplotlib (extra `plot`, imported only to draw).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import ModelConfig
from .params import count_params, kv_cache_bytes
from .zoo import get_config
from .errors import require

# powers of two from 256 to 128K tokens
DEFAULT_CONTEXTS = [2**k for k in range(8, 18)]


def attention_label(c: ModelConfig) -> str:
    """"GQA 8 KV heads, window 4096": the attention kind of the first layer and any windows."""
    a = c.block.attention
    kind = a.type.upper()
    kv = getattr(a, "n_kv_heads", None)
    label = f"{kind} ({kv} KV heads)" if kind in ("GQA", "MQA", "MHA") and kv else kind
    windows = sorted({getattr(b.attention, "window", None) for b in c.blocks if getattr(b.attention, "window", None)})
    if windows:
        local = sum(1 for b in c.blocks if getattr(b.attention, "window", None))
        label += f", window {'/'.join(map(str, windows))}" + ("" if local == c.n_layers else f" on {local}/{c.n_layers} layers")
    return label


def kv_cache_data(names: list[str], contexts: list[int] | None = None, dtype: str = "bfloat16") -> dict[str, Any]:
    """{"dtype", "contexts", "entries": {name: {"attention", "max_seq_len", "bytes_per_token": [...]}}}:
    KV-cache bytes per cached token for one sequence of each context length (up to max_seq_len;
    longer contexts are null). Sliding windows make the cost per token fall once the context passes them."""
    contexts = contexts or DEFAULT_CONTEXTS
    entries = {}
    for name in names:
        c = get_config(name)
        entries[name] = {
            "attention": attention_label(c),
            "max_seq_len": c.max_seq_len,
            "bytes_per_token": [kv_cache_bytes(c, n, dtype=dtype) / n if n <= c.max_seq_len else None
                                for n in contexts],
        }
    return {"dtype": dtype, "contexts": contexts, "entries": entries}


PARTS = ["embedding + head", "attention", "MLP (dense, shared experts)", "routed experts", "norms, router, positions"]


def param_data(names: list[str]) -> dict[str, Any]:
    """{name: {"total": {part: n}, "active": {part: n}}} with the parts of PARTS; "active" is what one
    token uses (routed experts: its top-k), equal to "total" for a dense model. Each sums to
    count_params(name).total / .active."""
    out = {}
    for name in names:
        n = count_params(name)
        p = n.parts
        total = {
            PARTS[0]: p.get("embedding", 0) + p.get("head", 0),
            PARTS[1]: p.get("attention", 0),
            PARTS[2]: p.get("mlp", 0),
            PARTS[3]: p.get("moe_experts", 0),
            PARTS[4]: p.get("norms", 0) + p.get("moe_router", 0) + p.get("positions", 0) + p.get("conv", 0),
        }
        active = {**total, PARTS[3]: n.active - (n.total - p.get("moe_experts", 0))}
        out[name] = {"total": total, "active": active}
    return out


def _figure(width: float, height: float):
    require("matplotlib", "plot", "drawing plots")
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    return Figure(figsize=(width, height), dpi=100)


def _save(fig, path: str | Path) -> Path:
    """Lay out and write the figure as a PNG (no Software tag: the bytes depend on the data only)."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    return path


def _human_bytes(x: float, _pos: Any = None) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if x >= size:
            return f"{x / size:g} {unit}"
    return f"{x:g} B"


def draw_kv_cache(data: dict[str, Any], path: str | Path) -> Path:
    """Draw kv_cache_data's numbers (log-log) into a PNG."""
    from matplotlib.ticker import FuncFormatter

    fig = _figure(8, 4.8)
    ax = fig.add_subplot()
    for name, e in data["entries"].items():
        xs = [x for x, y in zip(data["contexts"], e["bytes_per_token"]) if y is not None]
        ys = [y for y in e["bytes_per_token"] if y is not None]
        ax.plot(xs, ys, marker="o", markersize=3, label=f"{name}: {e['attention']}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(FuncFormatter(_human_bytes))
    ax.set_xlabel("context length (tokens; each line ends at the model's max_seq_len)")
    ax.set_ylabel(f"KV-cache bytes per token ({data['dtype']})")
    ax.set_title("KV cache per token: MHA vs GQA vs MQA vs MLA vs sliding window")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def draw_params(data: dict[str, Any], path: str | Path) -> Path:
    """Draw param_data's numbers into a PNG: per entry a "total" and an "active" bar, stacked by part,
    as a share of the entry's total (so a 7B and a 671B model read alike), labelled with the count."""
    fig = _figure(8, 0.8 * len(data) + 1.8)
    ax = fig.add_subplot()
    colors = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#bab0ac"]
    ticks, labels = [], []
    for i, (name, d) in enumerate(reversed(list(data.items()))):
        whole = sum(d["total"].values())
        for j, which in enumerate(("active", "total")):
            y = 2.6 * i + j
            left = 0.0
            for part, color in zip(PARTS, colors):
                share = 100 * d[which][part] / whole
                ax.barh(y, share, left=left, color=color, label=part if (i, j) == (0, 0) else None)
                left += share
            ax.text(left + 1, y, f"{sum(d[which].values()) / 1e9:.1f}B", va="center", fontsize=8)
            ticks.append(y)
            labels.append(f"{name} {which}")
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlim(0, 118)
    ax.set_xlabel("share of the entry's total parameters (%)")
    ax.set_title("Where the parameters are: total vs active per token")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, frameon=False)
    return _save(fig, path)


def plot_kv_cache(names: list[str], path: str | Path, max_context: int = 131072, dtype: str = "bfloat16") -> Path:
    """KV-cache bytes per token against context length for zoo entries, as a PNG."""
    contexts = [n for n in DEFAULT_CONTEXTS if n <= max_context] or [max_context]
    return draw_kv_cache(kv_cache_data(names, contexts, dtype), path)


def plot_params(names: list[str], path: str | Path) -> Path:
    """Parameter breakdown (embedding / attention / MLP / experts, total vs active) as a PNG."""
    return draw_params(param_data(names), path)
