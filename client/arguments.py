"""Every ``sst`` command's arguments, in one place.

:func:`build_parser` makes the whole ``sst`` parser. Each subcommand names its handler by
module and function (``set_defaults(func=...)`` holds a small callable that imports the
module when the command runs), so ``sst --help`` and a typo in an option cost no model
library imports, and a command's handler module holds what the command does, not how it
is spelled. The option groups that several commands share are here too:
:func:`add_model_args` (the embedded model), :func:`add_server_args` (the connection to a
server) and :func:`add_serve_args` (``sst serve``, also ``python -m
sst.server_config.launcher``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
from pathlib import Path
from typing import Any

from sst.client.segment_outputs import DEFAULT_FORMATS, FORMATS
from sst.model_repository.configs import PROFILES
from sst.tracker.defaults import (
    DEFAULT_MODEL,
    DEMO_IMAGE_SIZE,
    ENGINES,
    ENV_ADMIN_TOKEN,
    ENV_ENGINE,
    ENV_TLS_CA,
    ENV_TOKEN,
    ENV_TRITONSERVER,
    EXIT_TIMEOUT_S,
    GRPC_PORT,
    MAX_LABELS,
    METRICS_PORT,
    MODES,
)
from sst.tracker.errors import SSTError
from sst.tracker.io.headers import MAX_PAGES
from sst.tracker.serving.limits import ServiceConfig

__all__ = ["build_parser", "add_model_args", "add_server_args", "add_serve_args",
           "QUALITY_DEFAULT"]

#: ``--quality`` default: off, as one reverse pass per query costs more than the 30 % of
#: the segmentation time that would make it free enough to be on by default.
QUALITY_DEFAULT = False
_MODE_HELP = ("sequential: one session tracks the queries in order, each remembering the "
              "ones before it; independent: each query from the supports alone "
              "(default: sequential)")


class _Handler:
    """``module:function``, imported when the command runs.

    The base install (``pip install sst-serve``) is the client; the model libraries come
    with extras (``pyproject.toml``). A command that reaches for a missing one, when its
    handler is imported or later, stops with one line that names the extra to install
    (exit status 2) instead of a traceback.
    """

    #: Top-level module -> the extras that install it, the first one named unless the
    #: command's own extra is among them. sam2 is in no extra (see ``_SAM2_HINT``).
    _EXTRAS: dict[str, tuple[str, ...]] = {
        "torch": ("export",), "hydra": ("export",), "omegaconf": ("export",),
        "iopath": ("export",), "onnxscript": ("export",), "safetensors": ("export",),
        "transformers": ("edgetam",), "timm": ("edgetam",),
        "onnxruntime": ("export", "server"), "onnx": ("export", "server"),
        "pytriton": ("server",), "prometheus_client": ("server", "bench"),
        "setproctitle": ("server",), "psutil": ("server", "bench"),
        "zarr": ("ome-zarr",), "ome_zarr": ("ome-zarr",), "numcodecs": ("ome-zarr",),
        "matplotlib": ("bench",),
        "tensorrt": ("gpu",), "polygraphy": ("gpu",),
    }
    #: The extra a command's handler module belongs to, where it has one.
    _OWN_EXTRA = {"sst.server_config.launcher": "server", "sst.client.cli": "export"}
    _SAM2_HINT = ("install the extra [export], then sam2 without build isolation, as "
                  "./install.sh does: SAM2_BUILD_CUDA=0 pip install --no-deps "
                  "--no-build-isolation sam2==1.1.0")

    def __init__(self, module: str, function: str) -> None:
        self.module, self.function = module, function

    def __call__(self, args: argparse.Namespace) -> int:
        try:
            handler = getattr(importlib.import_module(self.module), self.function)
            return int(handler(args))
        except ModuleNotFoundError as exc:
            hint = self.missing_extra_hint(exc.name or "")
            if hint is None:
                raise
            # main() prints an SSTError as one line, "sst <command>: error: ...", exit 2
            raise SSTError(hint) from None

    def missing_extra_hint(self, module: str) -> str | None:
        """What to install for the missing ``module``, in one line; None when no extra
        of this project provides it."""
        top = module.split(".")[0]
        if top == "sam2":
            return f"this command needs sam2: {self._SAM2_HINT}"
        extras = self._EXTRAS.get(top)
        if not extras:
            return None
        own = self._OWN_EXTRA.get(self.module)
        extra = own if own in extras else extras[0]
        return (f"this command needs {top}, which the base install leaves out: "
                f"pip install 'sst-serve[{extra}]' (or 'sst-serve[all]'; from a source "
                f"tree, ./install.sh installs everything)")

    def __repr__(self) -> str:
        return f"{self.module}:{self.function}"


def _handled_by(p: argparse.ArgumentParser, module: str, function: str) -> None:
    p.set_defaults(func=_Handler(module, function))


# --------------------------------------------------------------------------- value types


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535 (0 = any free), not {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _numbers(text: str, what: str, counts: tuple[int, ...]) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not all(v == v for v in values):  # also rejects NaN
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return values


def _point(text: str) -> tuple[float, float, int]:
    v = _numbers(text, "X,Y or X,Y,LABEL (LABEL 1 positive, 0 negative)", (2, 3))
    lab = 1 if len(v) == 2 else v[2]
    if lab not in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"point label must be 1 or 0, got {text!r}")
    return v[0], v[1], int(lab)


def _box(text: str) -> tuple[float, float, float, float]:
    v = _numbers(text, "X0,Y0,X1,Y1", (4,))
    return v[0], v[1], v[2], v[3]


def _labels(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected labels like 1,2, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one label")
    return values


# --------------------------------------------------------------------------- shared groups


def add_model_args(p: argparse.ArgumentParser, server_help: str,
                   server_flags: tuple[str, ...] = ("--server",)) -> None:
    """``--model-dir | --model [--checkpoint | --random-weights --seed N]``, ``--image-size``,
    ``--providers``, ``--engine``, ``--device``, ``--precision`` and ``--server`` (its
    help and spellings given), then the connection options of :func:`add_server_args`."""
    g = p.add_argument_group("model")
    g.add_argument("--model-dir", type=Path, help="folder written by `sst export`")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"SAM 2 model to export once into the cache when no --model-dir is "
                        f"given (default: {DEFAULT_MODEL}); see `sst models`")
    w = g.add_mutually_exclusive_group()
    w.add_argument("--checkpoint", type=Path, help="default: checkpoints/<model>.pt (fetched)")
    w.add_argument("--random-weights", action="store_true",
                   help="UNTRAINED model, meaningless masks: checks the pipeline offline")
    g.add_argument("--seed", type=int, help="seed for --random-weights")
    g.add_argument("--image-size", type=int, default=1024,
                   help="model input size when exporting (default 1024)")
    g.add_argument("--providers", default="cpu",
                   help="ONNX Runtime providers, e.g. cpu | cuda,cpu | tensorrt,cuda,cpu "
                        "(default: cpu)")
    g.add_argument("--engine", choices=ENGINES, default=None,
                   help=f"embedded engine: auto (the fastest of ONNX Runtime FP32 and "
                        f"PyTorch FP32/BF16, and compiled BF16 once built, on this machine "
                        f"that keeps the logits within 0.05 of FP32; measured on first use "
                        f"of a model, then cached), ort "
                        f"(ONNX Runtime) or torch (the same graphs in PyTorch) (default: "
                        f"${ENV_ENGINE}, else auto)")
    g.add_argument("--device", default="cpu",
                   help="--engine torch: cpu, cuda, cuda:1 ... (state and pre/post-processing "
                        "stay there; default: cpu)")
    g.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                   help="--engine torch: autocast precision (FP32 LayerNorm/softmax and mask "
                        "decoder) (default: fp32)")
    g.add_argument("--compile", action="store_true",
                   help="compile the torch engine's components ahead of time (AOTInductor; "
                        "once per model and machine, about a minute and a half at 512 px "
                        "on 2 cores, then cached): with --engine torch it runs them, with "
                        "auto it measures them too (auto uses them unasked once built)")
    g.add_argument(*server_flags, dest="server", metavar="HOST:PORT", help=server_help)
    add_server_args(p, server=False)


def add_server_args(p: argparse.ArgumentParser, *, server: bool = True,
                    required: bool = False,
                    server_help: str = "HOST:PORT of an `sst serve` gRPC endpoint") -> None:
    """``--tls-ca`` and ``--token`` (and ``--server`` unless ``server=False``, for
    parsers that already have it)."""
    if server:
        p.add_argument("--server", metavar="HOST:PORT", required=required, help=server_help)
    p.add_argument("--tls-ca", metavar="PEM", type=Path,
                   help=f"connect with TLS and check the server against this CA bundle "
                        f"(default: ${ENV_TLS_CA})")
    p.add_argument("--token", metavar="TOKEN",
                   help=f"access token sent with every request (default: ${ENV_TOKEN}; "
                        f"the variable keeps it out of the process list)")


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``sst serve``."""
    add = parser.add_argument
    add("--profile", choices=PROFILES, default=None,
        help="serving profile (default: the one the export recorded, else cpu): cpu; "
             "gpu: the engine on CUDA, any tritonserver; "
             "gpu-native: also the component models in Triton's onnxruntime/TensorRT "
             "backends (a full Triton install, --tritonserver PATH)")
    add("--model-repository", type=Path, required=True, metavar="DIR",
        help="an `sst export` folder (or a Triton model repository) to serve")
    add("--engine", choices=ENGINES, default=None,
        help=f"the cpu profile's engine: auto (the fastest of ONNX Runtime and PyTorch "
             f"FP32/BF16, and compiled BF16 once `sst segment --compile` has built it, on "
             f"this machine, measured once per machine and model and cached), ort or "
             f"torch (default: ${ENV_ENGINE}, else auto)")
    add("--host", default="127.0.0.1",
        help="gRPC address (default: 127.0.0.1); beyond loopback it needs --tls-cert, "
        "--tls-key and a token, or --insecure")
    add("--grpc-port", type=_port, default=GRPC_PORT, metavar="PORT",
        help=f"gRPC port clients connect to (default: {GRPC_PORT}; 0 = any free port)")
    add("--http-port", type=_port, default=None,
        help="not served: clients use gRPC; tritonserver's HTTP API stays off, since its "
             "keys would be within any local user's reach (accepted so that older "
             "command lines still run)")
    add("--metrics-port", type=_port, default=METRICS_PORT, metavar="PORT",
        help=f"Prometheus metrics port (default: {METRICS_PORT}; 0 = any free port)")
    add("--tls-cert", type=Path, metavar="PEM", help="server certificate: gRPC over TLS")
    add("--tls-key", type=Path, metavar="PEM", help="the certificate's private key")
    add("--tls-client-ca", type=Path, metavar="PEM",
        help="CA of client certificates: mutual TLS (clients must present one)")
    add("--token", metavar="T",
        help=f"access token clients must send (default: ${ENV_TOKEN}, which no other user "
             "can see; a flag shows until it is parsed; none = open on loopback; one that "
             "starts with '-' goes as --token=T)")
    add("--admin-token", metavar="T",
        help=f"admin token (default: ${ENV_ADMIN_TOKEN}, else a random one, written to "
        "<run folder>/admin-token; one that starts with '-' goes as --admin-token=T)")
    add("--insecure", action="store_true",
        help="allow binding beyond loopback without TLS and an access token")
    d = ServiceConfig()
    add("--max-sessions", type=_positive_int, default=d.max_sessions, metavar="N",
        help=f"live sessions at most (default: {d.max_sessions})")
    add("--session-idle-seconds", type=_positive_float, default=d.idle_seconds, metavar="S",
        help=f"a session idle this long expires (default: {d.idle_seconds:g})")
    add("--max-request-mb", type=_positive_float, default=d.max_request_bytes / 2**20,
        metavar="MB", help=f"image bytes one request may carry (default: "
        f"{d.max_request_bytes / 2**20:g} MiB); a larger gRPC message is refused by the front "
        "door before it is received")
    add("--max-request-mp", type=_positive_float, default=d.max_request_pixels / 1e6,
        metavar="MP", help=f"decoded megapixels one request may carry, all its images and "
        f"masks together, checked from their headers before any is decoded (default: "
        f"{d.max_request_pixels / 1e6:g}); it also bounds the answer (one byte per pixel)")
    add("--exit-timeout", type=int, default=EXIT_TIMEOUT_S, metavar="S",
        help=f"on SIGTERM, seconds in-flight requests get to finish (default: "
             f"{EXIT_TIMEOUT_S})")
    add("--drain-seconds", type=float, default=None, metavar="S",
        help="on SIGTERM, seconds open sessions get to end before the server ends them "
             "(their clients start them on another replica; default: a quarter of "
             "--exit-timeout, which also has to cover the last answers and unloading the "
             "models)")
    add("--health-port", type=_port, default=None, metavar="PORT",
        help="serve /live, /ready (false while draining) and the front door's /metrics over "
             "HTTP on this port of --host (0 = any free port; default: off)")
    add("--run-dir", type=Path, metavar="DIR",
        help="folder for the served configs, log and admin token (default: a temporary "
        "folder, removed at exit)")
    add("--tritonserver", type=Path, metavar="PATH",
        help=f"tritonserver binary or install dir (default: ${ENV_TRITONSERVER}, "
        "nvidia-pytriton, PATH, /opt/tritonserver)")
    add("--log-file", type=Path, metavar="PATH",
        help="tritonserver's log, kept after exit (default: <run folder>/work/tritonserver.log, "
             "removed with a temporary run folder)")
    add("--startup-timeout", type=float, default=120.0, metavar="S",
        help="seconds to wait for readiness (default: 120)")
    add("--log-verbose", type=int, default=0, metavar="N",
        help="tritonserver --log-verbose level (default: 0)")


def _add_weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model name (default: {DEFAULT_MODEL}); see `sst models`")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--checkpoint", help="SAM 2 checkpoint file (default: checkpoints/<model>.pt)")
    w.add_argument("--random-weights", action="store_true",
                   help="use RANDOM weights (testing only: masks are meaningless); needs --seed")
    p.add_argument("--seed", type=int, help="seed for --random-weights")


def _add_support_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--support", required=True, type=Path, help="support image")
    p.add_argument("--support-mask", required=True, type=Path,
                   help="label mask of the support (0 = background)")
    p.add_argument("--queries", required=True,
                   help="folder, glob ('imgs/*.jpg') or list file ('@list.txt') of queries")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--batch", type=int, default=4, help="queries per batch (default: 4)")


def _add_max_labels(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-labels", type=int, default=MAX_LABELS, metavar="N",
                   help=f"most labels a support mask may have, background not counted "
                        f"(default: {MAX_LABELS})")


def _add_tool_model_args(p: argparse.ArgumentParser, orchestrator: bool = False) -> None:
    """The model options of ``sst segment``. ``orchestrator``: ``--server`` sends the
    queries to an `sst serve` server as ``sst segment --server`` does. Otherwise
    ``--components-server`` runs the four components on a server's component models,
    while the tool's own logic (cycle passes, prompts) runs here: such tools need
    component-level access, which the orchestrator does not give."""
    if orchestrator:
        add_model_args(p, "segment on an `sst serve` server (its gRPC HOST:PORT), as "
                          "`sst segment --server` does")
    else:
        add_model_args(p, "run the four SAM 2 components on an `sst serve` server's "
                          "component models (its gRPC HOST:PORT); the tool itself runs "
                          "here (--server is an alias)",
                       server_flags=("--components-server", "--server"))


# --------------------------------------------------------------------------- commands


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="export SAM 2 components to ONNX (+TensorRT) with parity")
    _add_weights_args(p)
    p.add_argument("--image-size", type=int, default=1024,
                   help="model input size in pixels (default: 1024, SAM 2's own)")
    p.add_argument("--out", required=True, help="output model repository folder")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="fp16 converts the components that keep their accuracy in half "
                        "precision, the others stay fp32 (default: fp32)")
    p.add_argument("--tensorrt", action="store_true", help="also build TensorRT FP16 engines")
    p.add_argument("--profile", choices=PROFILES, default=None,
                   help="serving profile to record and write the Triton configs for "
                        "(default: gpu where nvidia-smi exists, else cpu)")
    p.add_argument("--skip-parity", action="store_true", help="skip the parity checks")
    _handled_by(p, "sst.client.cli", "cmd_export")

    p = sub.add_parser("models", help="list known models and their checkpoints")
    _handled_by(p, "sst.client.cli", "cmd_models")


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run Triton Inference Server on a model repository")
    add_serve_args(p)
    # run_serve writes this version's configs for --profile into a run folder: the
    # export folder is only read
    _handled_by(p, "sst.server_config.launcher", "run_serve")


def _add_segment(sub: Any) -> None:
    p = sub.add_parser("segment", help="segment query images from one labelled support (SST)")
    p.add_argument("--support", action="append", default=[], type=Path,
                   help="support image (repeat for k-shot)")
    p.add_argument("--support-mask", action="append", default=[], type=Path,
                   help="label mask of the matching --support (0 = background)")
    p.add_argument("--support-coco", type=Path, metavar="FILE",
                   help="COCO file whose annotated images are supports (label = category id)")
    p.add_argument("--images-dir", type=Path,
                   help="where --support-coco's file_names are (default: the COCO file's folder)")
    p.add_argument("--label-names", metavar="SPEC",
                   help="'1=head,2=pronotum' or a JSON file; default: the COCO categories")
    p.add_argument("--queries", required=True,
                   help="folder, glob ('imgs/*.jpg') or list file ('@list.txt') of queries")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (created; removed again when the run fails before "
                        "writing anything)")
    p.add_argument("--mode", choices=MODES, default="sequential", help=_MODE_HELP)
    add_model_args(p, "HOST:PORT of an `sst serve` gRPC endpoint: sessions run there")
    p.add_argument("--format", default=",".join(DEFAULT_FORMATS),
                   help=f"comma-separated outputs among {','.join(FORMATS)} "
                        f"(default {','.join(DEFAULT_FORMATS)})")
    p.add_argument("--quality", action=argparse.BooleanOptionalAction, default=QUALITY_DEFAULT,
                   help="cycle-IoU quality per query and label, and review.csv (with --server "
                        "the server computes it)")
    p.add_argument("--flag-below", type=float, default=0.5, metavar="T",
                   help="review.csv flags queries whose lowest label quality is below T "
                        "(default: 0.5)")
    p.add_argument("--save-logits", action="store_true", help="write <stem>.npz logits")
    p.add_argument("--intensity", default="auto", metavar="MODE",
                   help="pixels deeper than 8 bit (12/16-bit, float) to 8 bit: 'auto' (per-"
                        "channel 0.5-99.5 percentiles of the support, reused for every "
                        "query), 'range:LO,HI' (LO -> 0, HI -> 255) or 'highbyte' (>> 8); "
                        "recorded in results.json (default: auto)")
    p.add_argument("--pages", metavar="LIST",
                   help="pages of multi-page TIFF queries, from 0: '0,2,5-7' (default: all; "
                        "each page is a query named <stem>_p<N>)")
    p.add_argument("--max-pages", type=int, default=MAX_PAGES, metavar="N",
                   help=f"most pages of one multi-page file made into queries; a file with "
                        f"more is refused before any is read (default {MAX_PAGES})")
    p.add_argument("--batch", type=int, default=4,
                   help="queries per batch (independent mode; default: 4)")
    _add_max_labels(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--inflight", type=int, default=4,
                   help="requests in flight against a server (independent mode; default: 4)")
    _handled_by(p, "sst.client.segment_cli", "cmd_segment")


def _add_watch(sub: Any) -> None:
    p = sub.add_parser("watch", help="segment images as they land in a folder (needs a server)")
    p.add_argument("folder", type=Path, help="folder the rig writes images into")
    add_server_args(p, required=True)
    p.add_argument("--support", action="append", required=True, type=Path,
                   help="support image (repeat for k-shot)")
    p.add_argument("--support-mask", action="append", required=True, type=Path,
                   help="label mask of the matching --support (0 = background)")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder: masks, overlays, <stem>.json and the journal")
    p.add_argument("--mode", choices=MODES, default="sequential", help=_MODE_HELP)
    p.add_argument("--poll", type=float, default=0.5,
                   help="seconds between folder scans (default: 0.5)")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds a file must stay unchanged before it is read (default: 1)")
    p.add_argument("--decode-grace", type=float, default=10.0,
                   help="seconds a file that does not decode must stay unchanged before it "
                        "is marked failed (default 10)")
    p.add_argument("--max-pages", type=int, default=MAX_PAGES, metavar="N",
                   help=f"most pages of one multi-page file made into queries (one per page, "
                        f"<stem>_p<N>.png); a file with more is failed before any page is "
                        f"read (default {MAX_PAGES})")
    p.add_argument("--once", action="store_true", help="process what is there, then exit")
    p.add_argument("--idle-exit", type=float, help="exit after this many idle seconds")
    _handled_by(p, "sst.client.watch", "cmd_watch")


def _add_tools(sub: Any) -> None:
    tools = "sst.client.tools_cli"
    p = sub.add_parser("retrieve", help="rank queries by how well one trait carries over "
                       "(cycle consistency)")
    _add_support_args(p)
    p.add_argument("--trait", required=True, type=int, help="label value of the trait")
    p.add_argument("--top-k", type=int, default=10, help="overlays for the K best (default 10)")
    _add_tool_model_args(p)
    _handled_by(p, tools, "cmd_retrieve")

    p = sub.add_parser("crop", help="segment queries and write a tight crop of the specimen")
    _add_support_args(p)
    p.add_argument("--mode", choices=MODES, default="sequential", help=_MODE_HELP)
    p.add_argument("--background", choices=("transparent", "black", "white"),
                   default="transparent", help="transparent (RGBA, default), black or white")
    p.add_argument("--margin", type=int, default=0,
                   help="pixels around the box (clamped; default: 0)")
    p.add_argument("--labels", type=_labels, help="labels to keep, e.g. 1,2 (default: all)")
    _add_max_labels(p)
    _add_tool_model_args(p, orchestrator=True)
    _handled_by(p, tools, "cmd_crop")

    p = sub.add_parser("mask", help="make or clean a support mask")
    msub = p.add_subparsers(dest="mask_command", required=True)

    q = msub.add_parser("from-cutout", help="locate an RGBA cut-out in its image -> mask")
    q.add_argument("--image", required=True, type=Path,
                   help="the picture the cut-out was taken from")
    q.add_argument("--cutout", required=True, type=Path,
                   help="RGBA PNG: object opaque, background transparent")
    q.add_argument("--out", required=True, type=Path, help="label mask PNG to write")
    q.add_argument("--label", type=int, default=1, help="label value (default 1)")
    q.add_argument("--min-quality", type=float, default=0.8,
                   help="least normalised correlation accepted (default 0.8)")
    q.add_argument("--min-scale", type=float, default=0.8,
                   help="smallest object size in the image / in the cut-out (default 0.8)")
    q.add_argument("--max-scale", type=float, default=1.25,
                   help="largest object size in the image / in the cut-out (default 1.25)")
    _handled_by(q, tools, "cmd_from_cutout")

    q = msub.add_parser("from-prompts", help="SAM 2 points/box prompt on one image -> mask")
    q.add_argument("--image", required=True, type=Path, help="the picture to prompt")
    q.add_argument("--point", action="append", type=_point, metavar="X,Y[,0|1]",
                   help="point in image pixels, label 1 positive (default) or 0 negative; "
                   "repeatable (negative coordinates: --point=-1,2)")
    q.add_argument("--box", type=_box, metavar="X0,Y0,X1,Y1", help="box in image pixels")
    q.add_argument("--label", type=int, required=True, help="label value of the new object")
    q.add_argument("--out", required=True, type=Path, help="label mask PNG to write")
    q.add_argument("--mask", type=Path, help="existing label mask to paint into")
    q.add_argument("--overwrite", action="store_true",
                   help="replace --label if it is already in --mask")
    _add_tool_model_args(q)
    _handled_by(q, tools, "cmd_from_prompts")

    q = msub.add_parser("clean", help="relabel values, fill holes, drop small specks")
    q.add_argument("--mask", required=True, type=Path, help="label mask PNG to clean")
    q.add_argument("--out", required=True, type=Path,
                   help="label mask PNG to write (may be --mask itself)")
    q.add_argument("--relabel", action="append", metavar="OLD:NEW",
                   help="change value OLD to NEW (repeatable, applied at once; NEW 0 deletes)")
    q.add_argument("--fill-holes", action="store_true",
                   help="fill background regions enclosed by one label")
    q.add_argument("--min-size", type=int, default=0,
                   help="drop connected pieces of a label smaller than this (pixels; "
                        "default: 0, keep all)")
    _handled_by(q, tools, "cmd_clean")


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="segment bundled beetle pictures (no files needed) and "
                                    "write every output and the review page")
    p.add_argument("--out", type=Path, default=Path("sst-demo"),
                   help="output folder (default: ./sst-demo)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"SAM 2 model, exported once into the cache (default: "
                        f"{DEFAULT_MODEL}); see `sst models`")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--model-dir", type=Path, help="folder written by `sst export`")
    w.add_argument("--checkpoint", type=Path, help="default: checkpoints/<model>.pt (fetched)")
    w.add_argument("--random-weights", action="store_true",
                   help="UNTRAINED model, meaningless masks: shows the pipeline only")
    w.add_argument("--random-weights-if-offline", action="store_true",
                   help="the checkpoint when present or downloadable, else RANDOM weights "
                        "(loudly)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    p.add_argument("--image-size", type=int, default=DEMO_IMAGE_SIZE,
                   help=f"model input size (default {DEMO_IMAGE_SIZE})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _handled_by(p, "sst.client.demo", "cmd_demo")


def _version() -> str:
    try:
        return importlib.metadata.version("sst-serve")
    except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The ``sst`` parser, every subcommand with its handler."""
    parser = argparse.ArgumentParser(
        prog="sst", description="Static Segmentation by Tracking with SAM 2.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="the installed version of SST Serve")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub)
    _add_serve(sub)
    _add_segment(sub)
    _add_watch(sub)
    _add_tools(sub)
    _add_demo(sub)
    return parser
