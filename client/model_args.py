"""The backend that the model options of ``sst segment`` and the tools name (the options
themselves are in :mod:`sst.client.arguments`)."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from sst.export.cache import RANDOM_WEIGHTS_BANNER, resolve_model_dir
from sst.tracker.backends import Backend
from sst.tracker.engine_choice import open_backend

__all__ = ["local_backend", "print_banner_if_random"]


def print_banner_if_random(backend: Backend) -> None:
    if backend.meta.random_weights:
        print(RANDOM_WEIGHTS_BANNER, file=sys.stderr)


def local_backend(args: argparse.Namespace) -> Backend:
    """The in-process backend of the model options: an exported folder, or a model
    resolved and exported once into the cache. Prints the random-weights banner."""
    if importlib.util.find_spec("onnxruntime") is None:  # the client install: no engine
        # (named before the model is looked for: the command's handler turns this into one
        # line naming the extra to install)
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")
    if args.model_dir is not None:
        model_dir = args.model_dir
    else:
        model_dir = resolve_model_dir(args.model, args.image_size, checkpoint=args.checkpoint,
                                      random_weights=args.random_weights, seed=args.seed)
    backend = open_backend(model_dir, args.engine,
                           providers=[s for s in args.providers.split(",") if s],
                           device=args.device, precision=args.precision,
                           compiled=args.compile)
    print_banner_if_random(backend)
    return backend
