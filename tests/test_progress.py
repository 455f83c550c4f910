"""Progress bars (llmzoo.progress, on tqdm): drawn on stderr when it is a terminal and the work outlasts
tqdm's delay, never when stderr is not a terminal or under `quiet` / the CLI's `--quiet`.

No test waits or times anything: tqdm's clock (`tqdm.std.time`) is replaced by one that moves 5 s on
every reading (each step outlasts the 1 s delay) or one that stands still (nothing outlasts it)."""

from __future__ import annotations

import io
import itertools
import sys

import pytest

import llmzoo
from llmzoo.cli import main
from llmzoo.parity import verify
from llmzoo.progress import quiet


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def use_clock(monkeypatch, step: float) -> None:
    import tqdm.std

    readings = itertools.count(1000.0, step)
    monkeypatch.setattr(tqdm.std, "time", lambda: next(readings))
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)  # no monitor thread reading the real clock


@pytest.fixture
def slow(monkeypatch):
    use_clock(monkeypatch, 5.0)


@pytest.fixture
def stderr(monkeypatch):
    """stderr(tty) replaces sys.stderr for the rest of the test and returns the new stream. Called in
    the test body: pytest puts its own capture back on sys.stderr between fixture setup and the call."""

    def replace(tty: bool = True) -> io.StringIO:
        err = Terminal() if tty else io.StringIO()  # StringIO.isatty() is False, as for a pipe or a file
        monkeypatch.setattr(sys, "stderr", err)
        return err

    return replace


def load(folder):
    return llmzoo.from_pretrained(folder)


def export(folder, tmp_path):
    return llmzoo.save_pretrained(llmzoo.from_pretrained(folder), tmp_path / "export", max_shard_size="20KB")


def run_verify():
    return verify(["llama"], file=io.StringIO())


@pytest.fixture
def checkpoint(tiny_checkpoint):
    folder, _ = tiny_checkpoint("llama")
    return folder


def test_a_sharded_load_draws_a_bar(slow, stderr, checkpoint):
    terminal = stderr()
    load(checkpoint)
    assert "loading weights" in terminal.getvalue() and "\r" in terminal.getvalue()


def test_a_single_file_load_draws_a_bar(slow, stderr, checkpoint, tmp_path):
    out = llmzoo.save_pretrained(llmzoo.from_pretrained(checkpoint), tmp_path / "one", max_shard_size="1GB")
    assert (out / "model.safetensors").is_file()
    err = stderr()
    load(out)
    assert "loading weights" in err.getvalue()


def test_export_draws_a_bar(slow, stderr, checkpoint, tmp_path):
    model = llmzoo.from_pretrained(checkpoint)
    terminal = stderr()
    llmzoo.save_pretrained(model, tmp_path / "export", max_shard_size="20KB")
    assert "writing export" in terminal.getvalue()


def test_verify_draws_a_bar(slow, stderr):
    terminal = stderr()
    run_verify()
    text = terminal.getvalue()
    assert "verify" in text and "llama" in text  # the row being checked is the bar's postfix


@pytest.mark.parametrize("work", ["load", "export", "verify"])
def test_no_bar_when_stderr_is_not_a_terminal(work, slow, stderr, checkpoint, tmp_path):
    pipe = stderr(tty=False)
    {"load": lambda: load(checkpoint), "export": lambda: export(checkpoint, tmp_path), "verify": run_verify}[work]()
    assert pipe.getvalue() == ""


@pytest.mark.parametrize("work", ["load", "export", "verify"])
def test_no_bar_under_quiet(work, slow, stderr, checkpoint, tmp_path):
    terminal = stderr()
    with quiet():
        {"load": lambda: load(checkpoint), "export": lambda: export(checkpoint, tmp_path), "verify": run_verify}[work]()
    assert terminal.getvalue() == ""


def test_no_bar_for_work_shorter_than_the_delay(monkeypatch, stderr, checkpoint, tmp_path):
    use_clock(monkeypatch, 0.0)  # the clock stands still: nothing outlasts the delay
    terminal = stderr()
    export(checkpoint, tmp_path)
    run_verify()
    assert terminal.getvalue() == ""


@pytest.mark.parametrize("argv", [["verify", "llama"], ["tiny", "llama-2-7b", "--out", "{out}"]])
def test_cli_quiet_flag(argv, slow, stderr, tmp_path, capsys):
    argv = [a.format(out=tmp_path / "tiny") for a in argv]
    terminal = stderr()
    assert main(argv) == 0
    assert terminal.getvalue() != "", "a bar is drawn without --quiet"
    terminal.seek(0)
    terminal.truncate()
    assert main([*argv, "--quiet"]) == 0
    assert terminal.getvalue() == ""
    assert main(argv) == 0
    assert terminal.getvalue() != "", "--quiet lasts for its own call only"
