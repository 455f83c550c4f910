"""docs/img/kv_cache.png and docs/img/params.png, with the numbers they draw in docs/img/plots.json.

    python scripts/gen_plots.py          # needs llmzoo[plot] (matplotlib)

tests/test_docs.py recomputes the numbers (not the pixels) and compares them with plots.json, so a
config change that moves a curve fails CI until this script is re-run.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmzoo.plot import draw_kv_cache, draw_params, kv_cache_data, param_data

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
# one entry per attention kind: MHA, GQA, MQA, MLA, GQA with a sliding window
KV_ENTRIES = ["llama-2-7b", "llama-3.1-8b", "falcon-7b", "deepseek-v3", "mistral-7b"]
# dense, MoE without and with shared experts
PARAM_ENTRIES = ["llama-2-70b", "mistral-7b", "mixtral-8x7b", "deepseek-v3"]


def data() -> dict:
    return {"kv_cache": kv_cache_data(KV_ENTRIES), "params": param_data(PARAM_ENTRIES)}


def render_json() -> str:
    return json.dumps(data(), indent=1) + "\n"


def main() -> None:
    d = data()
    IMG.mkdir(parents=True, exist_ok=True)
    (IMG / "plots.json").write_text(render_json())
    draw_kv_cache(d["kv_cache"], IMG / "kv_cache.png")
    draw_params(d["params"], IMG / "params.png")
    print(f"wrote {IMG / 'plots.json'}, kv_cache.png, params.png")


if __name__ == "__main__":
    main()
