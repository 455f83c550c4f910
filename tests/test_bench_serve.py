"""Smoke test of scripts/bench_serve.py: three tiny requests through every mode; the Engine's greedy
tokens equal transformers' continuous batching (generate_batch) for each."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")


def test_bench_serve_smoke(tmp_path):
    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_serve.py"
    spec = importlib.util.spec_from_file_location("bench_serve", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    bench.main(["--requests", "3", "--new-tokens", "4", "--min-prompt", "5", "--max-prompt", "20", "--d-model", "64",
                "--layers", "2", "--vocab", "128", "--block-size", "4", "--repeats", "1", "--json", str(out)])
    r = json.loads(out.read_text())
    assert set(r["tok/s"]) == {"llmzoo Engine (paged, continuous)", "transformers generate_batch",
                               "llmzoo.generate, sequential"}
    assert all(v > 0 for v in r["tok/s"].values())
    assert r["same_as_transformers"] == 3
    assert 0 < r["util"] <= 1
