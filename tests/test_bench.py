"""Smoke tests of scripts/bench.py: the tiniest shapes, a few new tokens, both backends. No timing is asserted."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")


def load_bench():
    path = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
    spec = importlib.util.spec_from_file_location("bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def check_result(r, grid, batches):
    assert r["agree"]["passed"], r["agree"]
    assert set(r["ratios"]) == {"load", "load_peak", "ttft", "peak_mem", *(f"prefill_{g}" for g in grid),
                                *(f"decode_b{b}" for b in batches)}
    for q in r["ratios"].values():
        assert 0 < q["low"] <= q["median"] <= q["high"] or q["low"] == q["median"] == q["high"] > 0, q
    for backend in ("llmzoo", "transformers"):
        for b in batches:  # every decode step of every repeat is one sample
            s = r[backend]["decode_step_s"][str(b)]
            assert s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"] and s["n"] >= 1, s


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "r.json"
    bench = load_bench()
    bench.main(["--shapes", "llama-2-7b@tiny", "--device", "cpu", "--new-tokens", "3", "--prompt-len", "8",
                       "--prefill-grid", "1x8", "--decode-batch", "2", "--repeats", "2", "--out", str(out),
                       "--dtype", "float32", "bfloat16", "--tune-layout", "on"])
    results = json.loads(out.read_text())["results"]
    assert [r["dtype"] for r in results] == ["float32", "bfloat16"]
    for r in results:
        check_result(r, ["1x8"], [1, 2])
        assert r["llmzoo"]["decode_step_s"]["1"]["n"] == 2 * (3 - 1)
        assert r["llmzoo"]["layout_s"] > 0 and isinstance(r["llmzoo"]["layout_column_major"], list)  # --tune-layout on
        assert "layout_s" not in r["transformers"]
    capsys.readouterr()
    bench.main(["--markdown", str(out)])  # the docs/performance.md table from the saved JSON
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 + len(results) and "prefill 1x8" in lines[0] and "decode b=2" in lines[0]
    for line, r in zip(lines[2:], results):
        assert line.count("×") == 6 and r["dtype"] in line  # load, ttft, prefill, decode ×2, peak RSS
        assert f"{r['ratios']['decode_b1']['median']:.2f}×" in line


def test_bench_only_load(tmp_path):
    """--only load: each backend's loads in its own interpreter (time per repeat, peak RSS against the
    model's bytes), a float32 checkpoint cast to bfloat16, the logits still compared; nothing else run."""
    bench = load_bench()
    got = bench.main(["--only", "load", "--shapes", "gpt-2-small@tiny", "deepseek-v2-lite@tiny", "--device", "cpu",
                      "--repeats", "2", "--cast", "bfloat16", "--tmpdir", str(tmp_path)])
    for r in got["results"]:
        assert r["dtype"] == "float32→bfloat16" and r["agree"]["passed"], r["agree"]
        assert set(r["ratios"]) == {"load", "load_peak", "peak_mem"}
        for backend in ("llmzoo", "transformers"):
            z = r[backend]
            assert z["load_s"]["n"] == 2 and z["load_peak_bytes"] >= 0 and z["model_bytes"] > 0
            assert z["prefill_s"] == {} and z["decode_step_s"] == {}
    assert bench.shape_config("deepseek-v2-lite@2l").n_layers == 2


def test_bench_cuda_plan_dry_run(tmp_path):
    """The GPU command's plan (shapes, grid, batches, compiled decode step) run on CPU with tiny shapes."""
    bench = load_bench()
    a = bench.parse_args(["--device", "cuda"])
    assert a.shapes == bench.CUDA_SHAPES and a.prefill_grid == ["1x512", "4x2048"] and a.decode_batch == 32
    assert a.compile and a.dtype == ["bfloat16"]
    out = tmp_path / "results.json"
    got = bench.main(["--plan", "cuda", "--device", "cpu", "--dry-run", "--compile-backend", "eager",
                      "--dtype", "float32", "--out", str(out)])
    s = got["settings"]
    assert s["plan"] == "cuda" and s["compile"] and s["prefill_grid"] == ["1x8", "4x32"] and s["decode_batch"] == 32
    assert [r["shape"] for r in got["results"]] == [x + "@tiny" for x in bench.CUDA_SHAPES]
    assert json.loads(out.read_text())["results"] == json.loads(json.dumps(got["results"]))
    for r in got["results"]:
        check_result(r, ["1x8", "4x32"], [1, 32])
    # MoE too: the grouped experts read no route count back to the host
    assert all(r["llmzoo"]["compiled_decode"] for r in got["results"]), [r["llmzoo"].get("compile_error") for r in got["results"]]


def load_scaling():
    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_scaling.py"
    spec = importlib.util.spec_from_file_location("bench_scaling", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scaling_smoke(tmp_path):
    """scripts/bench_scaling.py on tiny shapes and two lengths past the window: JSON and PNG written."""
    got = load_scaling().main(["--preset", "tiny", "--window", "8", "--lengths", "12", "24", "--new-tokens", "2",
                               "--repeats", "1", "--out-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "scaling.json").read_text())
    assert saved["shapes"] == json.loads(json.dumps(got["shapes"]))
    assert set(saved["shapes"]) == {"dense", "sliding window", "MLA"}
    for entry in saved["shapes"].values():
        for key in ("prefill_s_per_token", "decode_step_s"):
            assert [s["n"] for s in entry[key]] == [1, 1]  # one call (one step) per length
            assert all(0 < s["min"] <= s["median"] <= s["max"] for s in entry[key])
    assert saved["shapes"]["sliding window"]["config"]["window"] == 8
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_plot_is_current():
    """docs/img/scaling.json was measured on the shapes bench_scaling.py defines now, and
    docs/performance.md shows its plot."""
    root = Path(__file__).resolve().parent.parent
    data = json.loads((root / "docs" / "img" / "scaling.json").read_text())
    mod = load_scaling()
    configs = mod.shapes(data["preset"], data["window"], max(data["lengths"]) + data["new_tokens"])
    assert {k: v["config"] for k, v in data["shapes"].items()} == {k: mod.describe(c) for k, c in configs.items()}, \
        "re-run: python scripts/bench_scaling.py"
    assert (root / "docs" / "img" / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "img/scaling.png" in (root / "docs" / "performance.md").read_text()
