"""The model options shared by ``sst segment`` and the tools, and the backend they name."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sst.export.cache import RANDOM_WEIGHTS_BANNER, resolve_model_dir
from sst.tracker.backends import Backend, open_backend
from sst.tracker.errors import InputError

__all__ = ["add_model_args", "local_backend", "print_banner_if_random"]


def add_model_args(p: argparse.ArgumentParser, server_help: str,
                   server_flags: tuple[str, ...] = ("--server",)) -> None:
    """``--model-dir | --model [--checkpoint | --random-weights --seed N]``, ``--image-size``,
    ``--providers``, ``--engine`` and ``--server``."""
    g = p.add_argument_group("model")
    g.add_argument("--model-dir", type=Path, help="folder written by `sst export`")
    g.add_argument("--model", default="sam2.1_hiera_tiny",
                   help="SAM 2 model to export once into the cache when no --model-dir is "
                        "given (default: sam2.1_hiera_tiny); see `sst models`")
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
    g.add_argument("--engine", choices=["ort", "torch"], default="ort",
                   help="embedded engine: ONNX Runtime (default) or the same graphs in PyTorch")
    g.add_argument("--device", default="cpu",
                   help="--engine torch: cpu, cuda, cuda:1 ... (state and pre/post-processing "
                        "stay there; default: cpu)")
    g.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="--engine torch: autocast precision (FP32 LayerNorm/softmax and mask "
                        "decoder), for GPUs; on the CPU, ONNX Runtime FP32 was faster "
                        "(default: fp32)")
    g.add_argument(*server_flags, dest="server", metavar="HOST:PORT", help=server_help)


def print_banner_if_random(backend: Backend) -> None:
    if backend.meta.random_weights:
        print(RANDOM_WEIGHTS_BANNER, file=sys.stderr)


def local_backend(args: argparse.Namespace) -> Backend:
    """The in-process backend of the model options: an exported folder, or a model
    resolved and exported once into the cache. Prints the random-weights banner."""
    if args.model_dir is not None:
        model_dir = args.model_dir
    else:
        model_dir = resolve_model_dir(args.model, args.image_size, checkpoint=args.checkpoint,
                                      random_weights=args.random_weights, seed=args.seed)
    if args.engine != "torch" and (args.device != "cpu" or args.precision != "fp32"):
        raise InputError("--device/--precision", "only for --engine torch (ONNX Runtime "
                         "takes --providers and an FP16 export)")
    backend = open_backend(model_dir, args.engine,
                           providers=[s for s in args.providers.split(",") if s],
                           device=args.device, precision=args.precision)
    print_banner_if_random(backend)
    return backend
