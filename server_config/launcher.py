"""``sst serve``: find, prepare, secure, run and supervise an NVIDIA Triton server.

The pieces live in their own modules and are re-exported here:

* :mod:`~sst.server_config.install` finds ``tritonserver`` and prepares its backends;
* :mod:`~sst.server_config.launch_settings` holds the launch settings and the port checks;
* :mod:`~sst.server_config.security` holds the tokens and TLS;
* :mod:`~sst.server_config.process` runs one server process (:class:`TritonServer`);
* :mod:`~sst.server_config.supervisor` restarts it when it or a model process dies;
* :mod:`~sst.server_config.run_folder` builds the folder a run serves from;
* :mod:`~sst.server_config.shm` removes shared memory that killed servers left.

Typical use::

    with TritonServer(Path("model_repository"), cpu_settings(grpc_port=0)) as server:
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sst.client.arguments import add_serve_args
from sst.export.cache import RANDOM_WEIGHTS_BANNER
from sst.export.meta import load_meta, random_weights_reason
from sst.server_config.install import (
    ENV_TRITONSERVER,
    LauncherError,
    TritonInstall,
    find_tritonserver,
    prepare_backend_dir,
)
from sst.server_config.launch_settings import (
    LaunchSettings,
    cpu_settings,
    gpu_settings,
    pick_free_ports,
)
from sst.server_config.process import TritonServer
from sst.server_config.run_folder import build_run_repository, is_sst_export
from sst.server_config.security import (
    ENV_ADMIN_TOKEN,
    Security,
    TlsFiles,
    hide_from_cmdline,
    is_loopback,
)
from sst.server_config.supervisor import Supervisor, serve_forever
from sst.tracker.errors import SSTError
from sst.tracker.serving.limits import ServiceConfig

__all__ = [
    "ENV_TRITONSERVER",
    "LaunchSettings",
    "LauncherError",
    "TritonInstall",
    "TritonServer",
    "check_repository",
    "cpu_settings",
    "find_tritonserver",
    "gpu_settings",
    "main",
    "one_line",
    "prepare_backend_dir",
    "random_weights_banner",
    "run_serve",
    "serve_forever",
]

log = logging.getLogger("sst.serve")

# Kept for callers that pick ports themselves.
_pick_free_ports = pick_free_ports


def _security(args: argparse.Namespace) -> Security:
    tls = None
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    client_ca = getattr(args, "tls_client_ca", None)
    if (cert is None) != (key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if client_ca is not None and cert is None:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    if cert is not None and key is not None:
        tls = TlsFiles(cert, key, client_ca)
    return Security.from_env(
        access_token=getattr(args, "token", None),
        admin_token=getattr(args, "admin_token", None),
        tls=tls,
        insecure=getattr(args, "insecure", False),
    )


_EXPECTED = ("expected an `sst export` folder (make one with `sst export --out DIR`) or a "
             "Triton model repository")
#: Files that mark a folder written by ``sst segment`` / ``sst demo``.
_RESULT_FILES = ("results.json", "review.html", "results.csv")
_TRITON_LINE = re.compile(r"^\s*\|\s*([EWI])\d{4} [^\]]*\] (.*)$")
#: Error lines of tritonserver that say nothing about why it failed (CPU-only machines).
_NOISE = ("CudaDriverHelper", "CUDA driver", "pinned memory")


def check_repository(repo: Path) -> None:
    """Refuse a folder that cannot be served, before tritonserver starts.

    Raises:
        ValueError: one line naming the folder, what it is and what was expected.
    """
    if not repo.exists():
        raise ValueError(f"--model-repository {repo}: no such folder; {_EXPECTED}")
    if not repo.is_dir():
        raise ValueError(f"--model-repository {repo}: a file, not a folder; {_EXPECTED}")
    if is_sst_export(repo):
        return
    entries = list(repo.iterdir())
    if not entries:
        raise ValueError(f"--model-repository {repo}: the folder is empty; {_EXPECTED}")
    if any((repo / name).is_file() for name in _RESULT_FILES):
        raise ValueError(f"--model-repository {repo}: this folder holds the results of "
                         f"`sst segment` or `sst demo`, not a model; {_EXPECTED}")
    if not any((d / "config.pbtxt").is_file() for d in entries if d.is_dir()):
        raise ValueError(f"--model-repository {repo}: no model in it (no MODEL/config.pbtxt);"
                         f" {_EXPECTED}")


def one_line(exc: LauncherError) -> str:
    """A launcher error as one line: its first line and, from the server log it quotes,
    the first error tritonserver logged."""
    lines = str(exc).splitlines()
    logged = [(m.group(1), m.group(2).strip().strip('"')) for m in map(_TRITON_LINE.match, lines)
              if m and not any(n in m.group(2) for n in _NOISE)]
    causes = ([text for _, text in logged if "failed to" in text.lower()
               and "failed to load all models" not in text]
              or [text for level, text in logged if level == "E"])
    head = lines[0].rstrip(".") if lines else "tritonserver failed"
    return f"{head}: {causes[0]}" if causes and causes[0] not in head else head


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def _recorded_profile(repo: Path) -> str:
    """The serving profile an export recorded (``sst_model.json``), else ``cpu``."""
    if not is_sst_export(repo):
        return "cpu"
    try:
        return load_meta(repo).serving_profile or "cpu"
    except SSTError:
        return "cpu"


def random_weights_banner(repo: Path) -> None:
    """The RANDOM WEIGHTS banner on stderr, naming the export and its seed, when ``repo``
    is an export of an untrained model (every answer also says so: ``MODEL``)."""
    if not is_sst_export(repo):
        return
    try:
        record = load_meta(repo).record()
    except SSTError:
        return
    reason = random_weights_reason(record, f"the export {repo}")
    if reason is not None:
        print(f"{RANDOM_WEIGHTS_BANNER}sst serve: {reason}. Every answer says so (its MODEL "
              "record: random_weights true); `sst segment --server` prints this banner too.\n",
              file=sys.stderr, flush=True)


def run_serve(args: argparse.Namespace) -> int:
    """Run ``sst serve`` with parsed ``args``; return the process exit status."""
    repo = Path(args.model_repository)
    serving = args.profile or _recorded_profile(repo)
    builder = gpu_settings if serving.startswith("gpu") else cpu_settings
    run_dir: Path | None = None
    owns_run_dir = False
    try:
        hide_from_cmdline([getattr(args, "token", None), getattr(args, "admin_token", None)])
        security = _security(args)
        d = ServiceConfig()
        # the server's settings, once: the run folder's configs, the engine and the door
        config = dataclasses.replace(
            d, max_sessions=getattr(args, "max_sessions", d.max_sessions),
            idle_seconds=getattr(args, "session_idle_seconds", d.idle_seconds),
            max_request_bytes=int(getattr(args, "max_request_mb",
                                          d.max_request_bytes / 2**20) * 2**20),
            max_request_pixels=int(getattr(args, "max_request_mp",
                                           d.max_request_pixels / 1e6) * 1e6))
        settings = builder(
            host=args.host,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            log_verbose=getattr(args, "log_verbose", 0),
            exit_timeout=getattr(args, "exit_timeout", 10),
            security=security,
            max_request_bytes=config.max_request_bytes,
        )
        if getattr(args, "http_port", None) is not None:
            log.warning("--http-port is ignored: sst serve serves gRPC only")
        if security.insecure and not is_loopback(args.host):
            missing = [name for name, have in (("TLS", security.tls is not None),
                       ("an access token", security.access_token is not None)) if not have]
            print(f"WARNING: --insecure: serving {args.host} without "
                  f"{' and '.join(missing) or 'nothing missing'}; anyone who can reach it "
                  "can use the server", file=sys.stderr, flush=True)
        install = find_tritonserver(args.tritonserver)
        check_repository(repo)
        random_weights_banner(repo)
        if getattr(args, "run_dir", None) is not None:
            run_dir = Path(args.run_dir).absolute()
            if run_dir.exists() and any(run_dir.iterdir()):
                raise ValueError(f"--run-dir {run_dir} is not empty")
            run_dir.mkdir(parents=True, exist_ok=True)
        else:
            run_dir = Path(tempfile.mkdtemp(prefix="sst-serve-"))
            owns_run_dir = True
        if is_sst_export(repo):
            engine = getattr(args, "engine", None)
            if engine and serving != "cpu":
                raise ValueError(f"--engine is for the cpu profile; the {serving} profile "
                                 "runs the torch engine on CUDA")
            repo = build_run_repository(repo, run_dir / "repository", serving, config,
                                        engine=engine)
        else:
            log.info("%s is not an SST export: serving its models as they are", repo)
        if not (getattr(args, "admin_token", None) or os.environ.get(ENV_ADMIN_TOKEN)):
            token_file = run_dir / "admin-token"
            _write_secret(token_file, security.admin_token)
            log.info("admin token (header sst-admin-token) is in %s", token_file)
        server = TritonServer(
            repo, settings, install=install, workdir=run_dir / "work", log_path=args.log_file,
            config=config,
        )
        drain_s = getattr(args, "drain_seconds", None)
        if drain_s is None:
            drain_s = settings.exit_timeout / 4
        if drain_s < 0:
            raise ValueError(f"--drain-seconds must be >= 0, not {drain_s:g}")
        return serve_forever(server, supervisor=Supervisor(
            server, startup_timeout_s=args.startup_timeout, drain_s=drain_s),
            health_port=getattr(args, "health_port", None))
    except ValueError as exc:  # what was asked cannot be served: a usage error
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except LauncherError as exc:  # the full log tail is in the server log
        log_file = getattr(args, "log_file", None)
        where = (f" (server log: {log_file})" if log_file is not None else
                 " (run with --log-file PATH to keep the server log)")
        print(f"error: {one_line(exc)}{where}", file=sys.stderr, flush=True)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if owns_run_dir and run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m sst.server_config.launcher``."""
    parser = argparse.ArgumentParser(
        prog="python -m sst.server_config.launcher",
        description="Serve a model repository with NVIDIA Triton Inference Server.",
    )
    add_serve_args(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
