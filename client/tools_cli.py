"""``sst retrieve``, ``sst crop`` and ``sst mask {from-cutout,from-prompts,clean}``.

The handlers, over the typed functions of :mod:`sst.tracker.apps` (their options are in
:mod:`sst.client.arguments`). The commands that run the model take the model options of
``sst segment`` (``--model-dir``, or ``--model/--checkpoint``, or ``--random-weights
--seed N``; ``--image-size``, ``--providers``) and build their backend the same way.
"""

from __future__ import annotations

import argparse
import sys

from sst.client.banner import print_reason_banner
from sst.client.model_args import local_backend, print_banner_if_random
from sst.client.remote import RemoteBackend
from sst.client.server_args import client_from_args, connection_options
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
from sst.tracker.tracker import Tracker

__all__ = ["build_backend", "build_tracker", "cmd_retrieve", "cmd_crop", "cmd_from_cutout",
           "cmd_from_prompts", "cmd_clean"]



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


# --------------------------------------------------------------------------- commands


def cmd_retrieve(args: argparse.Namespace) -> int:
    tracker = build_tracker(args)
    summary = run_retrieve(tracker, args.support, args.support_mask, args.trait, args.queries,
                           args.out, top_k=args.top_k, batch=args.batch)
    print(f"ranked {len(summary.ranked)} image(s) for trait {args.trait} in "
          f"{summary.seconds:.1f}s; {len(summary.failed)} failed; outputs in {args.out}")
    for rank, it in enumerate(summary.ranked[:args.top_k], start=1):
        print(f"  {rank:3d}. {it.name}  score {it.score:.4f}  area {it.forward_area}")
    return _finish(tracker, summary.failed, summary.ok)


def cmd_crop(args: argparse.Namespace) -> int:
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


def cmd_from_cutout(args: argparse.Namespace) -> int:
    match = run_from_cutout(args.image, args.cutout, args.out, label=args.label,
                            min_quality=args.min_quality, min_scale=args.min_scale,
                            max_scale=args.max_scale)
    print(f"matched quality {match.quality:.4f} scale {match.scale:.4f} offset "
          f"x={match.x} y={match.y}; {int(match.mask.sum())} px of label {args.label} -> "
          f"{args.out}")
    return 0


def cmd_from_prompts(args: argparse.Namespace) -> int:
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


def cmd_clean(args: argparse.Namespace) -> int:
    report = run_clean(args.mask, args.out, relabels=args.relabel or (),
                       fill=args.fill_holes, min_size=args.min_size)
    changed = ", ".join(f"{k}: {v} px" for k, v in report.relabelled.items()) or "none"
    print(f"relabelled {changed}; removed {report.components_removed} component(s) "
          f"({report.pixels_removed} px); filled {report.pixels_filled} px of holes; "
          f"labels {report.labels} -> {args.out}")
    return 0
