"""Smoke test of scripts/bench.py: the tiniest shape, 2 new tokens, both backends."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")


def test_bench_smoke(tmp_path):
    path = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
    spec = importlib.util.spec_from_file_location("bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    bench.main(["--shapes", "llama-2-7b@tiny", "--device", "cpu", "--new-tokens", "2", "--prompt-len", "8",
                "--prefill-grid", "1x8", "--decode-batch", "2", "--repeats", "1", "--out", str(out)])
    (r,) = json.loads(out.read_text())["results"]
    assert r["agree"]["passed"], r["agree"]
    assert set(r["ratios"]) == {"load", "ttft", "peak_mem", "prefill_1x8", "decode_b1", "decode_b2"}
    assert all(v > 0 for v in r["ratios"].values())
