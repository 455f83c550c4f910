"""The CLI verbs of the foundation: list, show, params, tiny."""

import subprocess
import sys

import yaml

import llmzoo
from llmzoo.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0 and all(name in out for name in llmzoo.list_models())


def test_list_by_family(capsys):
    code, out, _ = run(capsys, "list", "--family", "llama-2")
    assert code == 0 and "llama-2-70b" in out and "bloom" not in out


def test_show_prints_config_and_tree(capsys):
    code, out, _ = run(capsys, "show", "llama-2-70b")
    assert code == 0
    assert "name: llama-2-70b" in out and "blocks.0 (×80)" in out
    assert f"{sum(p.numel() for p in llmzoo.build('llama-2-70b', device='meta').blocks[0].parameters()):,}" in out


def test_params_table(capsys):
    code, out, _ = run(capsys, "params", "llama-2-70b")
    line = next(l for l in out.splitlines() if l.startswith("llama-2-70b"))
    assert code == 0 and "70.00B" in line and "68.98B" in line and "-1.5%" in line


def test_tiny_prints_a_valid_config(capsys):
    code, out, _ = run(capsys, "tiny", "llama-2-70b")
    config = llmzoo.ModelConfig.model_validate(yaml.safe_load(out))
    assert code == 0 and config.name == "llama-2-70b-tiny" and config.n_layers == 4


def test_unknown_name_is_an_error_with_a_hint(capsys):
    code, _, err = run(capsys, "show", "llama-2-7O")
    assert code == 2 and "no zoo model named 'llama-2-7O'" in err and "did you mean" in err


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "llmzoo.cli", "list"], capture_output=True, text=True, check=True)
    assert "llama-2-70b" in out.stdout
