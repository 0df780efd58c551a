"""The command line explains itself: every subcommand and every option of every ``sst``
subcommand has help text, each default worth knowing is shown, and a ``sst segment`` run
that fails before writing anything leaves no empty ``--out`` folder behind."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sst.client import segment_cli
from sst.client.cli import build_parser, main
from sst.tracker.errors import InputError

from .synthetic import specimen


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ("sst",)
              ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``("sst segment", parser)`` for the parser and each subcommand, nested ones too."""
    yield " ".join(prefix), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name))


def _options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            yield action


COMMANDS = dict(_commands(build_parser()))


def test_every_subcommand_is_found() -> None:
    assert {"sst segment", "sst serve", "sst watch", "sst demo", "sst export", "sst retrieve",
            "sst crop", "sst mask clean", "sst mask from-prompts"} <= COMMANDS.keys()


def test_every_command_has_a_handler_that_exists() -> None:
    """Handlers are named by module and function in ``sst.client.arguments`` (so that
    parsing imports no model library); each name must resolve to a function."""
    import importlib

    leaves = {c: p for c, p in COMMANDS.items()
              if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)}
    assert len(leaves) >= 11
    for command, parser in leaves.items():
        handler = parser.get_default("func")
        assert handler is not None, f"{command} has no handler"
        module, function = repr(handler).split(":")
        assert callable(getattr(importlib.import_module(module), function)), command


def test_parsing_imports_no_model_library() -> None:
    code = ("import sys; from sst.client.arguments import build_parser; "
            "build_parser().parse_args(['segment', '--queries', 'q', '--out', 'o']); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'sam2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_every_subcommand_has_help() -> None:
    missing = []
    for command, parser in COMMANDS.items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                known = {a.dest for a in action._choices_actions if a.help}
                missing += [f"{command} {name}" for name in action.choices
                            if name not in known]
    assert not missing, f"subcommands without help: {missing}"


def test_every_option_has_help() -> None:
    missing = [f"{command} {'/'.join(a.option_strings) or a.dest}"
               for command, parser in COMMANDS.items() for a in _options(parser)
               if not (a.help or "").strip()]
    assert not missing, f"options without help text: {missing}"


def _shows_default(action: argparse.Action) -> bool:
    """Defaults that say nothing (None, off, empty) need not be shown; the others are,
    in the help text (argparse's BooleanOptionalAction adds its own)."""
    default = action.default
    if default is None or default is False or default == [] or default == argparse.SUPPRESS:
        return True
    if isinstance(action, argparse.BooleanOptionalAction):
        return True
    return "default" in (action.help or "").lower()


def test_every_default_worth_knowing_is_in_the_help() -> None:
    hidden = [f"{command} {'/'.join(a.option_strings) or a.dest} (default {a.default!r})"
              for command, parser in COMMANDS.items() for a in _options(parser)
              if not _shows_default(a)]
    assert not hidden, f"options whose help hides their default: {hidden}"


def test_serve_help_shows_its_default_ports() -> None:
    res = subprocess.run([sys.executable, "-m", "sst.client.cli", "serve", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    for shown in ("default: 8001", "default: 8002", "default: 127.0.0.1", "default: 64",
                  "default: 120"):
        assert shown in text, shown


# --------------------------------------------------------------------------- --out


@pytest.fixture()
def support(tmp_path: Path) -> list[str]:
    img, lab = specimen(0)
    Image.fromarray(img).save(tmp_path / "support.png")
    Image.fromarray(lab).save(tmp_path / "mask.png")
    (tmp_path / "queries").mkdir()
    Image.fromarray(specimen(1)[0]).save(tmp_path / "queries" / "q.png")
    return ["segment", "--support", str(tmp_path / "support.png"), "--support-mask",
            str(tmp_path / "mask.png"), "--no-progress"]


def test_a_failed_segment_removes_the_out_folder_it_created(
        tmp_path: Path, support: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A model folder that is not an export, a queries folder that does not exist, a bad
    support mask: status 2, the cause on stderr, and no ``--out`` (nor the parents it
    made) left behind."""
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(small)
    queries = ["--queries", str(tmp_path / "queries")]
    bad_mask = [*support[:4], str(small), *support[5:]]
    cases = {
        "not an exported model folder": [*support, *queries, "--model-dir", str(tmp_path)],
        "nothing-here": [*support, "--queries", str(tmp_path / "nothing-here"),
                         "--server", "127.0.0.1:9"],
        "10x10": [*bad_mask, *queries, "--model-dir", str(tmp_path)],
    }
    for i, (cause, args) in enumerate(cases.items()):
        out = tmp_path / f"new{i}" / "deeper" / "out"
        assert main([*args, "--out", str(out)]) == 2, cause
        assert cause in capsys.readouterr().err, cause
        assert not (tmp_path / f"new{i}").exists(), cause


def test_a_failed_segment_keeps_a_folder_it_did_not_create_or_wrote_into(
        tmp_path: Path, support: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    args = [*support, "--queries", str(tmp_path / "queries"), "--model-dir",
            str(tmp_path / "queries")]
    assert main([*args, "--out", str(existing)]) == 2
    assert existing.is_dir()  # it was there before: it stays, empty

    def writes_then_fails(*_: object, out: Path, **__: object) -> None:
        (Path(out) / "q.png").write_bytes(b"written")
        raise InputError("--server", "went away")

    monkeypatch.setattr(segment_cli, "run_segment",
                        lambda *a, **kw: writes_then_fails(out=a[3]))
    out = tmp_path / "wrote" / "out"
    assert main([*support, "--queries", str(tmp_path / "queries"), "--server",
                 "127.0.0.1:9", "--out", str(out)]) == 2
    assert (out / "q.png").is_file()  # what was written stays


def test_version_names_the_installed_package(capsys) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"sst {version('sst-serve')}"
