"""``sst retrieve``, ``sst crop`` and ``sst mask {from-cutout,from-prompts,clean}``.

Thin argparse layers over the typed functions of :mod:`sst.tracker.apps`. The commands
that run the model take the model options of ``sst segment`` (``--model-dir``, or
``--model/--checkpoint``, or ``--random-weights --seed N``; ``--image-size``,
``--providers``) and build their backend the same way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sst.client.banner import print_reason_banner
from sst.client.model_args import add_model_args as _add_model_args
from sst.client.model_args import local_backend, print_banner_if_random
from sst.client.remote import RemoteBackend
from sst.client.server_args import add_server_args, client_from_args, connection_options
from sst.client.server_stream import ServerSource
from sst.tracker.apps import (
    prompt_multimask,
    run_clean,
    run_crop,
    run_from_cutout,
    run_from_prompts,
    run_retrieve,
)
from sst.tracker.backends import Backend
from sst.tracker.defaults import MAX_LABELS
from sst.tracker.errors import InputError
from sst.tracker.tracker import MODES, Tracker

__all__ = ["add_tools_parsers", "add_model_args", "build_backend", "build_tracker"]



# --------------------------------------------------------------------------- model options


def add_model_args(p: argparse.ArgumentParser, orchestrator: bool = False) -> None:
    """The model options of ``sst segment``. ``orchestrator``: ``--server`` sends the
    queries to an `sst serve` server as ``sst segment --server`` does. Otherwise
    ``--components-server`` runs the four components on a server's component models,
    while the tool's own logic (cycle passes, prompts) runs here: such tools need
    component-level access, which the orchestrator does not give."""
    if orchestrator:
        _add_model_args(p, "segment on an `sst serve` server (its gRPC HOST:PORT), as "
                           "`sst segment --server` does")
    else:
        _add_model_args(p, "run the four SAM 2 components on an `sst serve` server's "
                           "component models (its gRPC HOST:PORT); the tool itself runs "
                           "here (--server is an alias)",
                        server_flags=("--components-server", "--server"))
    add_server_args(p, server=False)


def build_backend(args: argparse.Namespace) -> Backend:
    """The components on a server (``--components-server``), or in process as ``sst
    segment`` runs them; prints the random-weights banner when the model is untrained."""
    if args.server:
        remote = RemoteBackend(args.server, **connection_options(args))
        print_banner_if_random(remote)
        return remote
    return local_backend(args)


def build_tracker(args: argparse.Namespace, max_labels: int = MAX_LABELS) -> Tracker:
    """A :class:`Tracker` on :func:`build_backend`, as ``sst segment`` builds it."""
    return Tracker(build_backend(args), max_labels=max_labels)


# --------------------------------------------------------------------------- parsing helpers


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


# --------------------------------------------------------------------------- commands


def _cmd_retrieve(args: argparse.Namespace) -> int:
    tracker = build_tracker(args)
    summary = run_retrieve(tracker, args.support, args.support_mask, args.trait, args.queries,
                           args.out, top_k=args.top_k, batch=args.batch)
    print(f"ranked {len(summary.ranked)} image(s) for trait {args.trait} in "
          f"{summary.seconds:.1f}s; {len(summary.failed)} failed; outputs in {args.out}")
    for rank, it in enumerate(summary.ranked[:args.top_k], start=1):
        print(f"  {rank:3d}. {it.name}  score {it.score:.4f}  area {it.forward_area}")
    return _finish(tracker, summary.failed, summary.ok)


def _cmd_crop(args: argparse.Namespace) -> int:
    source: Tracker | ServerSource
    if args.server:  # through the orchestrator, as sst segment --server
        source = ServerSource(client_from_args(args), max_labels=args.max_labels)
    else:
        source = build_tracker(args, max_labels=args.max_labels)
    summary = run_crop(source, args.support, args.support_mask, args.queries, args.out,
                       mode=args.mode, background=args.background, margin=args.margin,
                       labels=args.labels, batch=args.batch)
    empty = [r.query for r in summary.rows if r.bbox is None]
    print(f"cropped {len(summary.rows) - len(empty)} of {len(summary.rows)} image(s) "
          f"(labels {summary.labels}) in {summary.seconds:.1f}s; {len(empty)} empty; "
          f"{len(summary.failed)} failed; outputs in {args.out}")
    for q in empty:
        print(f"  empty prediction, no crop: {q}")
    if isinstance(source, ServerSource):
        source.client.close()
    return _finish(source, summary.failed, summary.ok)


def _finish(source: Tracker | ServerSource, failed: list[tuple[str, str]], ok: bool) -> int:
    """List the failed queries, warn about random weights (in process, or as the server's
    answers said); the exit status."""
    for q, problem in failed:
        print(f"  failed: {q}: {problem}")
    if isinstance(source, Tracker):
        print_banner_if_random(source.backend)
    else:
        print_reason_banner(source.banner.reason)
    return 0 if ok else 1


def _cmd_from_cutout(args: argparse.Namespace) -> int:
    match = run_from_cutout(args.image, args.cutout, args.out, label=args.label,
                            min_quality=args.min_quality, min_scale=args.min_scale,
                            max_scale=args.max_scale)
    print(f"matched quality {match.quality:.4f} scale {match.scale:.4f} offset "
          f"x={match.x} y={match.y}; {int(match.mask.sum())} px of label {args.label} -> "
          f"{args.out}")
    return 0


def _cmd_from_prompts(args: argparse.Namespace) -> int:
    if args.label == 0:  # before loading the model
        raise InputError("--label", "0 is the background; use a label >= 1")
    backend = build_backend(args)
    result, labels = run_from_prompts(backend, args.image, args.out, points=args.point or (),
                                      box=args.box, label=args.label, existing=args.mask,
                                      overwrite=args.overwrite)
    (area,) = result.areas
    if area == 0:
        print(f"sst mask from-prompts: the prompt gave an empty mask (object score "
              f"{result.object_scores[0]:.3f}); nothing written", file=sys.stderr)
        print_banner_if_random(backend)
        return 1
    multimask = prompt_multimask(args.point or (), args.box)
    print(f"label {args.label}: {area} px (predicted IoU {result.ious[0]:.3f}, object score "
          f"{result.object_scores[0]:.3f}{', multimask' if multimask else ''}); "
          f"labels {sorted(set(int(v) for v in labels.ravel()) - {0})} -> {args.out}")
    print_banner_if_random(backend)
    return 0


def _cmd_clean(args: argparse.Namespace) -> int:
    report = run_clean(args.mask, args.out, relabels=args.relabel or (),
                       fill=args.fill_holes, min_size=args.min_size)
    changed = ", ".join(f"{k}: {v} px" for k, v in report.relabelled.items()) or "none"
    print(f"relabelled {changed}; removed {report.components_removed} component(s) "
          f"({report.pixels_removed} px); filled {report.pixels_filled} px of holes; "
          f"labels {report.labels} -> {args.out}")
    return 0


# --------------------------------------------------------------------------- parsers


def _add_support_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--support", required=True, type=Path, help="support image")
    p.add_argument("--support-mask", required=True, type=Path,
                   help="label mask of the support (0 = background)")
    p.add_argument("--queries", required=True,
                   help="folder, glob ('imgs/*.jpg') or list file ('@list.txt') of queries")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--batch", type=int, default=4, help="queries per batch (default: 4)")


def add_tools_parsers(sub: Any) -> None:
    """Add ``retrieve``, ``crop`` and ``mask`` to the ``sst`` subparsers ``sub``."""
    p = sub.add_parser("retrieve", help="rank queries by how well one trait carries over "
                       "(cycle consistency)")
    _add_support_args(p)
    p.add_argument("--trait", required=True, type=int, help="label value of the trait")
    p.add_argument("--top-k", type=int, default=10, help="overlays for the K best (default 10)")
    add_model_args(p)
    p.set_defaults(func=_cmd_retrieve)

    p = sub.add_parser("crop", help="segment queries and write a tight crop of the specimen")
    _add_support_args(p)
    p.add_argument("--mode", choices=MODES, default="sequential",
                   help="sequential: one session tracks the queries in order, each remembering the "
                        "ones before it; independent: each query from the supports alone "
                        "(default: sequential)")
    p.add_argument("--background", choices=("transparent", "black", "white"),
                   default="transparent", help="transparent (RGBA, default), black or white")
    p.add_argument("--margin", type=int, default=0,
                   help="pixels around the box (clamped; default: 0)")
    p.add_argument("--labels", type=_labels, help="labels to keep, e.g. 1,2 (default: all)")
    p.add_argument("--max-labels", type=int, default=64, metavar="N",
                   help="most labels the support mask may have, background not counted "
                        "(default: 64)")
    add_model_args(p, orchestrator=True)
    p.set_defaults(func=_cmd_crop)

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
    q.set_defaults(func=_cmd_from_cutout)

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
    add_model_args(q)
    q.set_defaults(func=_cmd_from_prompts)

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
    q.set_defaults(func=_cmd_clean)
