"""The server the serving benchmarks measure: ``tritonserver`` over a symlink view of an
export (Triton's client library and the launcher are imported here, not in
:mod:`sst.benchmarks.common`)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sst.benchmarks.common import link_repository
from sst.export.families import family_specs
from sst.export.meta import load_meta
from sst.model_repository.configs import write_repository
from sst.server_config.launcher import TritonServer, cpu_settings

__all__ = ["serve"]


def _write_configs(view: Path) -> None:
    """Serve this version's configs and model files, whatever version wrote the export:
    the view's links to them are replaced by files written here."""
    for pattern in ("*/config.pbtxt", "*/1/model.py"):
        for link in view.glob(pattern):
            link.unlink()
    write_repository(view, family_specs(load_meta(view)), "cpu")


@contextlib.contextmanager
def serve(model_dir: Path, timeout_s: float = 300.0, front_door: bool = True
          ) -> Iterator[TritonServer]:
    """``tritonserver`` (CPU settings) on free loopback ports, serving ``model_dir`` through
    a symlink view (:func:`link_repository`): nothing is copied, nothing in it written.
    ``front_door=False``: clients talk to tritonserver directly (no request-size door)."""
    for name in ("sst_tracker", "sst_segment"):
        if not (model_dir / name / "config.pbtxt").is_file():
            raise SystemExit(f"{model_dir} has no {name}/config.pbtxt: export it with "
                             f"`sst export ... --out {model_dir}` (which writes the configs)")
    settings = cpu_settings(host="127.0.0.1", grpc_port=0, http_port=0, metrics_port=0,
                          exit_timeout=10,
                          **({} if front_door else {"max_request_bytes": None}))
    with tempfile.TemporaryDirectory(prefix="sst-bench-repo-") as tmp:
        view = link_repository(model_dir, Path(tmp) / "repo")
        _write_configs(view)
        server = TritonServer(view, settings)
        try:
            server.start(timeout_s=timeout_s)
            yield server
        finally:
            server.stop()
