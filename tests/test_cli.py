"""The `llmzoo` command line: every verb works, every bad invocation is one line and exit 2.

In-process tests (`main([...])`) check the output; the subprocess tests run the real entry points
(`python -m llmzoo`, `python -m llmzoo.cli`) and check exit code, stderr and the absence of a traceback.
"""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import llmzoo
from llmzoo.cli import main, module_tree

ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse: --help, --version, usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    return subprocess.run([sys.executable, "-m", "llmzoo", *argv], capture_output=True, text=True, env=environ,
                          cwd=ROOT, timeout=300)


# ------------------------------------------------------------------------------ list


def test_list(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0 and all(name in out for name in llmzoo.list_models())


def test_list_by_family(capsys):
    code, out, _ = run(capsys, "list", "--family", "llama-2")
    assert code == 0 and "llama-2-70b" in out and "bloom" not in out


def test_list_wildcard_and_family_prefix(capsys):
    names = llmzoo.list_models("*llama*")
    assert names and all("llama" in n for n in names) and "llama-3.1-8b" in names
    assert llmzoo.list_models("LLAMA-2") == [n for n in llmzoo.list_models() if n.startswith("llama-2")]
    code, out, _ = run(capsys, "list", "*llama*")
    assert code == 0 and all(n in out for n in names) and "mistral" not in out
    code, out, _ = run(capsys, "list", "gpt-2-*", "opt-*")
    assert code == 0 and "gpt-2-xl" in out and "opt-175b" in out and "llama" not in out
    # a family prefix lists every matching family folder
    from llmzoo.zoo import families

    prefixed = [f for f in families() if f.startswith("llama")]
    assert "llama-2" in prefixed and "llama-3.1" in prefixed
    assert set(llmzoo.list_models(family="llama")) == {n for f in prefixed for n in llmzoo.list_models(family=f)}


def test_list_json_keys(capsys):
    code, out, _ = run(capsys, "list", "t5-*", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == llmzoo.list_models("t5-*")
    assert set(rows[0]) == {"name", "family", "published_params"} and rows[0]["family"] == "t5"


def test_unknown_family_suggests(capsys):
    code, out, err = run(capsys, "list", "--family", "lama")
    assert code == 2 and out == "" and "did you mean" in err and "llama-2" in err
    with pytest.raises(llmzoo.ConfigError, match="did you mean"):
        llmzoo.list_models(family="lama")


# ------------------------------------------------------------------------------ show


def test_show_prints_config_and_tree(capsys):
    code, out, _ = run(capsys, "show", "llama-2-70b")
    block = sum(p.numel() for p in llmzoo.build("llama-2-70b", device="meta").blocks[0].parameters())
    assert code == 0
    assert "name: llama-2-70b" in out and f"blocks.0-79 (×80, {block:,} each)" in out
    assert "published_params: 70000000000\n" in out


@pytest.mark.parametrize("name", ["deepseek-v3", "gpt-3-175b", "llama-2-7b"])
@pytest.mark.parametrize("preset", [None, "tiny"])
def test_tree_groups_only_identical_layers_and_sums(name, preset):
    config = llmzoo.scale_down(name, preset=preset) if preset else llmzoo.get_config(name)
    model = llmzoo.build(config, device="meta")
    rows = module_tree(model, depth=4)
    total = sum(p.numel() for p in model.parameters())
    assert sum(r["params"] for r in rows if r["depth"] == 0) == total
    groups = [r for r in rows if r["layers"]]
    assert sum(g["layers"] for g in groups if g["module"].startswith("blocks.")
               and g["module"].count(".") == 1) == config.n_layers
    for g in groups:  # every layer of a row has the same parameter count
        first, _, last = g["module"].rpartition(".")[2].partition("-")
        layers = range(int(first), int(last or first) + 1)
        counts = {sum(p.numel() for p in model.blocks[i].parameters()) for i in layers} if g["module"].startswith(
            "blocks.") else None
        if counts is not None:
            assert len(counts) == 1 and g["params"] == counts.pop() * len(layers)
    # each row with children: its children sum to it
    for k, r in enumerate(rows):
        kids, j = [], k + 1
        while j < len(rows) and rows[j]["depth"] > r["depth"]:
            if rows[j]["depth"] == r["depth"] + 1:
                kids.append(rows[j]["params"])
            j += 1
        if kids:
            assert sum(kids) == r["params"], r


def test_show_deepseek_separates_dense_and_moe_layers(capsys):
    code, out, _ = run(capsys, "show", "deepseek-v3", "--depth", "2")
    assert code == 0 and "blocks.0-2 (×3," in out and "blocks.3-60 (×58," in out
    total = llmzoo.count_params("deepseek-v3").total
    assert f"total  {total:,}".split()[-1] in out.splitlines()[-1]


def test_show_json(capsys):
    code, out, _ = run(capsys, "show", "llama-2-7b", "--json")
    data = json.loads(out)
    assert code == 0 and set(data) == {"config", "modules", "total_params"}
    assert data["config"]["name"] == "llama-2-7b" and data["total_params"] == llmzoo.count_params("llama-2-7b").total
    assert set(data["modules"][0]) == {"module", "depth", "params", "layers"}


# ------------------------------------------------------------------------------ params, memory


def test_params_table(capsys):
    code, out, _ = run(capsys, "params", "llama-2-70b")
    line = next(l for l in out.splitlines() if l.startswith("llama-2-70b"))
    assert code == 0 and "70.00B" in line and "68.98B" in line and "-1.5%" in line


def test_params_json(capsys):
    code, out, _ = run(capsys, "params", "deepseek-v3", "--json", "--dtype", "bf16")
    (row,) = json.loads(out)
    n = llmzoo.count_params("deepseek-v3")
    assert code == 0 and row["params"] == n.total and row["active_params"] == n.active
    assert row["kv_cache_bytes_per_token"] == llmzoo.kv_cache_bytes("deepseek-v3", 1, dtype="bfloat16")
    assert isinstance(row["published_params"], int)


def test_memory_json_and_int4(capsys):
    code, out, _ = run(capsys, "memory", "llama-2-7b", "--dtype", "int4", "--json")
    data = json.loads(out)
    assert code == 0 and data["params_total_bytes"] == llmzoo.count_params("llama-2-7b").total / 2
    _, out8, _ = run(capsys, "memory", "llama-2-7b", "--dtype", "int8", "--json")
    assert json.loads(out8)["params_total_bytes"] == 2 * data["params_total_bytes"]


def test_bf16_alias_everywhere():
    from llmzoo.builder import resolve_dtype

    assert resolve_dtype("bf16") is resolve_dtype("bfloat16") is resolve_dtype("torch.bfloat16")
    assert llmzoo.kv_cache_bytes("llama-2-7b", 8, dtype="bf16") == llmzoo.kv_cache_bytes("llama-2-7b", 8)


# ------------------------------------------------------------------------------ tiny, export-config


def test_tiny_prints_a_valid_config(capsys):
    code, out, _ = run(capsys, "tiny", "llama-2-70b")
    config = llmzoo.ModelConfig.model_validate(yaml.safe_load(out))
    assert code == 0 and config.name == "llama-2-70b-tiny" and config.n_layers == 4
    assert config.reference.hf_repo is None and "scaled down" in config.notes


def test_tiny_folder_is_complete_and_readable(tmp_path, capsys):
    out = tmp_path / "tiny"
    code, _, _ = run(capsys, "tiny", "llama-2-7b", "--out", str(out))
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names
    umask = os.umask(0)
    os.umask(umask)
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p.name
    hf = json.loads((out / "config.json").read_text())
    from llmzoo.tokenizer import Tokenizer

    tok = Tokenizer(out)
    assert tok.backend.get_vocab_size() == hf["vocab_size"]
    assert all(0 <= hf[k] < hf["vocab_size"] for k in ("bos_token_id", "eos_token_id", "pad_token_id"))
    assert tok.decode(tok.encode("Hello, zoo!")) == "Hello, zoo!"
    code, text, err = run(capsys, "generate", str(out), "--prompt", "Hi", "--max-new-tokens", "5")
    assert code == 0 and text.startswith("Hi") and err == ""


def test_export_config_writes_full_size(tmp_path, capsys):
    code, out, _ = run(capsys, "export-config", "llama-2-70b", str(tmp_path))
    hf = json.loads((tmp_path / "config.json").read_text())
    assert code == 0 and hf["model_type"] == "llama" and hf["hidden_size"] == 8192 and hf["num_hidden_layers"] == 80
    from llmzoo.hf import get_adapter

    assert get_adapter("llama").to_config(hf).d_model == 8192


def test_tiny_of_an_inexpressible_entry_is_short(tmp_path, capsys):
    code, _, err = run(capsys, "tiny", "gpt-3-175b", "--out", str(tmp_path / "x"))
    assert code == 2 and len(err) < 600 and "closest is" in err and not (tmp_path / "x").exists()


def test_save_pretrained_of_a_meta_model_writes_nothing(tmp_path):
    model = llmzoo.build("llama-2-7b", scale="tiny", device="meta")
    with pytest.raises(llmzoo.LLMZooError, match="meta"):
        llmzoo.save_pretrained(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ errors and entry points


def test_unknown_name_is_an_error_with_a_hint(capsys):
    code, _, err = run(capsys, "show", "llama-2-7O")
    assert code == 2 and "no zoo model named 'llama-2-7O'" in err and "did you mean" in err


def test_verify_unknown_model_type_suggests(capsys):
    code, _, err = run(capsys, "verify", "lama")
    assert code == 2 and "did you mean llama" in err


def test_wrong_flag_prints_the_verb_usage(capsys):
    code, _, err = run(capsys, "list", "--famly", "x", "y")
    assert code == 2 and err.startswith("usage: llmzoo list") and "unrecognized arguments: --famly" in err


def test_help_has_an_example_and_documents_choices(capsys):
    for verb in ("list", "show", "params", "memory", "tiny", "export-config", "parity", "verify", "generate", "plot"):
        code, out, _ = run(capsys, verb, "--help")
        assert code == 0 and "example:\n  llmzoo " in out, verb
    _, out, _ = run(capsys, "parity", "--help")
    assert "{float32,bfloat16,float16}" in out and "--seed" in out
    _, out, _ = run(capsys, "tiny", "--help")
    assert "{small,tiny}" in out


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"llmzoo {llmzoo.__version__}"


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "llmzoo.cli", "list"], capture_output=True, text=True, check=True)
    assert "llama-2-70b" in out.stdout


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("t5")
    assert main(["tiny", "t5-small", "--out", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:  # learned positions: a table with a last row
    folder = tmp_path_factory.mktemp("gpt2")
    assert main(["tiny", "gpt-2-small", "--out", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def rope_folder(tmp_path_factory) -> Path:  # computed positions: no table bounds seq_len, memory does
    folder = tmp_path_factory.mktemp("llama")
    assert main(["tiny", "llama-3.2-1b", "--out", str(folder)]) == 0
    return folder


# (verb's argv, text stderr must contain); each must exit 2 with one short line and no traceback
BAD = [
    (["parity", "some/folder", "--dtype", "int8"], "invalid choice: 'int8'"),
    (["memory", "llama-2-70b", "--tp", "0"], "--tp: 0 must be at least 1"),
    (["memory", "llama-2-70b", "--dtype", "int3"], "invalid choice"),
    (["list", "--family", "lama"], "did you mean"),
    (["list", "--bogus"], "usage: llmzoo list"),
    (["show", "lama-2-7b"], "did you mean"),
    (["params", "nope-7b"], "no zoo model named"),
    (["tiny", "llama-2-7b", "--preset", "huge"], "invalid choice: 'huge'"),
    (["export-config", "palm-540b", "{tmp}/palm"], "no Hugging Face model_type can express"),
    (["verify", "lama"], "did you mean llama"),
    (["generate", "{tmp}/missing", "--prompt", "x"], "missing"),
    (["parity", "{gpt2}", "--seq-len", "100000"], "seq_len 100000"),
    (["parity", "{rope}", "--seq-len", "100000"], "attention scores"),
    (["list", "nothing-like-this"], "no zoo entry matches"),
    (["plot", "nope-7b"], "no zoo model named"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a[:2]) + f" {i}" for i, (a, _) in enumerate(BAD)])
def test_bad_invocation_is_one_line_and_exit_2(argv, message, tmp_path, t5_folder, gpt2_folder, rope_folder):
    folders = {"{tmp}": tmp_path, "{t5}": t5_folder, "{gpt2}": gpt2_folder, "{rope}": rope_folder}
    for key, folder in folders.items():
        argv = [a.replace(key, str(folder)) for a in argv]
    p = cli(*argv)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr and "Traceback" not in p.stdout
    assert len([line for line in p.stderr.splitlines() if "error" in line]) == 1


def test_generate_on_a_tiny_t5_folder(t5_folder):
    p = cli("generate", str(t5_folder), "--prompt", "translate", "--max-new-tokens", "4")
    assert p.returncode == 0 and p.stdout.startswith("translate\n") and "Traceback" not in p.stderr


def test_debug_shows_the_traceback():
    p = cli("show", "lama-2-7b", "--debug")
    assert p.returncode == 2 and "Traceback" in p.stderr and "did you mean" in p.stderr


def test_missing_extra_names_it(tmp_path, t5_folder):
    """transformers / tokenizers absent: the message names the pip extra (imports blocked in a sitecustomize)."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['transformers'] = None\n"
                                            "sys.modules['tokenizers'] = None\n")
    env = {"PYTHONPATH": f"{block}{os.pathsep}{ROOT}"}
    p = cli("parity", str(t5_folder), env=env)
    assert p.returncode == 2 and 'pip install "llmzoo[parity]"' in p.stderr and "Traceback" not in p.stderr
    p = cli("generate", str(t5_folder), "--prompt", "x", env=env)
    assert p.returncode == 2 and 'pip install "llmzoo[generate]"' in p.stderr


def test_no_numpy_warning_on_a_base_install(tmp_path):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['numpy'] = None\n")
    p = cli("list", "t5-*", env={"PYTHONPATH": f"{block}{os.pathsep}{ROOT}"})
    assert p.returncode == 0 and "t5-small" in p.stdout and p.stderr == ""


def test_plot_writes_both_pictures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code, out, _ = run(capsys, "plot", "llama-2-7b", "deepseek-v3", "--out", str(tmp_path))
    assert code == 0 and "kv_cache.png" in out and "params.png" in out
    for png in ("kv_cache.png", "params.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_data_separates_attention_kinds():
    from llmzoo.plot import kv_cache_data, param_data

    d = kv_cache_data(["llama-2-7b", "llama-3.1-8b", "falcon-7b", "deepseek-v3", "mistral-7b"], [1024, 32768])
    at = {n: e["bytes_per_token"] for n, e in d["entries"].items()}
    assert at["llama-2-7b"][0] > at["llama-3.1-8b"][0] > at["deepseek-v3"][0] > at["falcon-7b"][0]
    assert at["llama-2-7b"][1] is None  # beyond its 4096-token table
    assert at["mistral-7b"][1] == at["mistral-7b"][0] * 4096 / 32768  # the window caps the cache
    p = param_data(["deepseek-v3"])["deepseek-v3"]
    n = llmzoo.count_params("deepseek-v3")
    assert sum(p["total"].values()) == n.total and sum(p["active"].values()) == n.active
