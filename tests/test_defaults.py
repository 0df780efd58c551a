"""Defaults are written once, in ``sst.tracker.defaults``: a grep over the library's
source fails when one is written again anywhere else (the server then disagreed with
its own CLI: a 100-label mask passed the client's check and was refused by the server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sst.tracker import defaults

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("export", "tracker", "client", "server_config", "model_repository")
HOME = ROOT / "tracker" / "defaults.py"

#: what -> a pattern that writes that default's value itself
WRITTEN = {
    "max_labels": re.compile(r"(max_labels\w*\s*(:\s*int\s*)?=\s*\d)"
                             r"|(--max-labels\"[^)]*default=\d)"),
    "ports": re.compile(rf"(?<![\d.])({defaults.GRPC_PORT}|{defaults.METRICS_PORT})(?![\d.])"),
    "model names": re.compile(
        rf"""["']({defaults.TRACKER_MODEL}|{defaults.SEGMENT_MODEL})["']"""),
    "idle time": re.compile(r"idle_s\w*\s*(:\s*float\s*)?=\s*\d"),
    "exit timeout": re.compile(r"(exit_timeout\w*\s*(:\s*\w+\s*)?=\s*\d)"
                               r"|(--exit-timeout\"[^)]*default=\d)"),
    "support cache size": re.compile(r"support_cache_mb\w*\"?\s*(:\s*int\s*)?[=,]\s*\d"),
    "session IDs": re.compile(r"randbits\(63\)"),
    "default model": re.compile(rf"""=\s*["']{re.escape(defaults.DEFAULT_MODEL)}["']"""),
    "environment names": re.compile(
        r"""["']SST_(TOKEN|ADMIN_TOKEN|TLS_CA|TRITONSERVER)["']"""),
    "modes": re.compile(r"""=\s*\(["']sequential["'],\s*["']independent["']\)"""),
}


def _sources() -> list[Path]:
    return sorted(p for folder in LIBRARY for p in (ROOT / folder).rglob("*.py")
                  if "__pycache__" not in p.parts)


@pytest.mark.parametrize("what", sorted(WRITTEN))
def test_a_default_is_written_once(what: str) -> None:
    pattern, found = WRITTEN[what], []
    for path in _sources():
        if path == HOME:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, f"{what} written outside tracker/defaults.py:\n" + "\n".join(found)


def test_each_default_is_in_its_home() -> None:
    text = HOME.read_text()
    for what, pattern in WRITTEN.items():
        if what not in ("idle time", "exit timeout", "support cache size", "max_labels"):
            assert pattern.search(text), what
    assert defaults.DEFAULT_SERVER.endswith(f":{defaults.GRPC_PORT}")


def test_every_exception_class_is_defined_in_the_error_module() -> None:
    """One tree, one file: a class deriving from an exception (ours or Python's) is
    defined in ``tracker/errors.py`` only; other modules import and re-export it."""
    import ast

    home = ROOT / "tracker" / "errors.py"
    tree = ast.parse(home.read_text())
    ours = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    builtin = {name for name in dir(__builtins__ if isinstance(__builtins__, dict) else
                                    __builtins__) if name.endswith(("Error", "Exception"))}
    outside = []
    for path in _sources():
        if path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute)
                     else "" for b in node.bases}
            if bases & (ours | builtin | {"Exception", "BaseException"}) - {"Reason"}:
                outside.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not outside, "exception classes outside tracker/errors.py:\n" + "\n".join(outside)


def test_the_in_process_api_is_exported_from_the_package_root_lazily() -> None:
    import subprocess
    import sys

    code = ("import sys, sst.client\n"
            "heavy = [m for m in ('sst.tracker.tracker', 'sst.tracker.engine')\n"
            "         if m in sys.modules]\n"
            "from sst.tracker import Tracker, open_backend, load_image, load_mask, FrameResult\n"
            "assert Tracker.__module__ == 'sst.tracker.tracker', Tracker\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "[]", out  # the client did not pull the engine in
