"""``sst segment``: SST over a folder of query images, embedded (ONNX Runtime) by default.

Outputs in ``--out``, per query ``<stem>``, each written when ``--format`` asks for it
(default ``png,overlay,gif,json``):

* ``<stem>.png`` (``png``): label mask at the query's size, same values as the support
  (palette PNG);
* ``overlay/<stem>.png`` (``overlay``) and ``segment.gif`` (``gif``): colour overlays for
  review (with a legend of the label names when names are given; a red RANDOM WEIGHTS
  band across the top when the model, in process or on the server, is untrained);
* ``<stem>.npz`` with ``--save-logits``: float32 logits per label (key = label value);
* ``results.json`` / ``results.csv`` (``json``): per query and label: area, object score,
  IoU, seconds, name and (with ``--quality``) the cycle-IoU quality; the model, and
  whether its weights are random (``random_weights``, ``random_weights_reason``: on a
  server run, as its answers say);
* ``annotations.json`` (``--format coco``), ``labels/<stem>.txt`` + ``data.yaml``
  (``--format yolo``), ``ome-zarr/<stem>.ome.zarr`` (``--format ome-zarr``: the query and
  its labels with names and colours) and, with ``--quality``, ``review.csv`` (worst first).

Pixels deeper than 8 bit (12/16-bit, float; TIFF through tifffile) are mapped to 8 bit by
``--intensity`` (``auto``: the support's per-channel percentiles, reused for every query),
recorded in ``results.json``. A multi-page TIFF is one query per page (``--pages``),
named ``<stem>_p<N>``, embedded and against a server alike (a server takes one page per
image: the pages are sent as queries of their own); a file of more than ``--max-pages``
pages is refused before any is read. Every image's header is checked before it is decoded
(pixels, samples, depth and the bytes they decode to).

Supports come from ``--support``/``--support-mask`` pairs or a COCO file
(``--support-coco``). Queries are taken in natural order of their file names (``img2``
before ``img10``), or in the order of a list file (``@list.txt``). Unreadable queries are
reported and skipped; the exit status is then 1. All files are written atomically; an
output folder that cannot be written is reported before any work starts, and a run that
fails before writing anything removes the ``--out`` folder it created.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sst.client._client import to_image_bytes
from sst.client.banner import ServerBanner, print_reason_banner
from sst.client.model_args import local_backend, print_banner_if_random
from sst.client.segment_outputs import DEFAULT_FORMATS, FORMATS, OutputSet
from sst.client.server_args import client_from_args
from sst.client.server_stream import server_stream
from sst.tracker import io as sio
from sst.tracker.apps.common import query_stream
from sst.tracker.defaults import MAX_LABELS
from sst.tracker.engine_choice import engine_record
from sst.tracker.errors import InputError
from sst.tracker.io import coco, outputs
from sst.tracker.io.headers import MAX_PAGES
from sst.tracker.io.queries import QueryReader, parse_pages
from sst.tracker.quality import QualityScorer
from sst.tracker.result import FrameResult
from sst.tracker.tracker import MODES, Tracker

__all__ = ["SegmentSummary", "Support", "SupportSet", "load_supports", "run_segment",
           "cmd_segment"]

log = logging.getLogger("sst.segment")


@dataclass
class SegmentSummary:
    processed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: Of ``seconds``, the time spent on quality scores (reverse passes).
    quality_seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: On a server run: why its masks are meaningless, when its answers said random
    #: weights (the banner was printed then).
    random_weights_reason: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class Support:
    """A loaded support: its image file, pixels ``[H,W,3]`` and label mask ``[H,W]``;
    ``mask_file`` when the mask came from a file (sent as is to a server)."""

    path: Path
    image: np.ndarray
    mask: np.ndarray
    mask_file: Path | None = None
    #: The file's own pixels are ``image`` (8 bit, not remapped): the file can be sent.
    as_file: bool = True

    def image_bytes(self) -> bytes:
        """What a server is sent: the file, or ``image`` as PNG when it was normalised."""
        return self.path.read_bytes() if self.as_file else to_image_bytes(self.image)

    def mask_bytes(self) -> bytes:
        if self.mask_file is not None:
            return self.mask_file.read_bytes()
        return sio.label_png_bytes(self.mask, f"{self.path} mask")


@dataclass
class SupportSet:
    """Loaded supports, the label names their source gives (COCO categories) and the
    session's intensity mapping (fitted on the first deep-pixel support)."""

    supports: list[Support]
    names: dict[int, str]
    intensity: sio.Normaliser = field(default_factory=sio.Normaliser)


def load_supports(pairs: Sequence[tuple[Path, Path]], support_coco: Path | None = None,
                  images_dir: Path | None = None, max_labels: int = MAX_LABELS,
                  intensity: str | sio.Intensity = "auto") -> SupportSet:
    """Supports from ``(image, mask)`` file pairs and/or a COCO file, and the category
    names the COCO file gives (empty without one). Pixels deeper than 8 bit go through
    ``intensity`` (see :mod:`sst.tracker.io.intensity`), whose ``auto`` ranges the first
    such support fixes for the session."""
    norm = sio.Normaliser(intensity)
    supports = []
    for img_path, mask_path in pairs:
        sio.check_single_page(img_path)
        raw = sio.read_pixels(img_path)
        img = norm(raw, str(img_path))
        mask = sio.load_mask(mask_path, image_size=(img.shape[1], img.shape[0]),
                                 max_labels=max_labels)
        as_file = norm.passes_through(raw)
        supports.append(Support(Path(img_path), img, mask, Path(mask_path), as_file))
    names: dict[int, str] = {}
    if support_coco is not None:
        found, names = coco.load_coco_supports(support_coco, images_dir,
                                               max_labels=max_labels, intensity=norm)
        supports += [Support(s.path, s.image, s.mask, as_file=s.as_file) for s in found]
    if not supports:
        raise InputError("--support", "no support given; expected --support IMG "
                                      "--support-mask MASK pairs or --support-coco FILE")
    return SupportSet(supports, names, norm)


def run_segment(
    tracker: Tracker | None,
    supports: Sequence[tuple[Path, Path]] | SupportSet,
    queries: str | Path,
    out: str | Path,
    *,
    mode: str = "sequential",
    formats: Sequence[str] = DEFAULT_FORMATS,
    save_logits: bool = False,
    batch: int = 4,
    progress: bool = True,
    client: Any = None,
    inflight: int = 4,
    max_labels: int = MAX_LABELS,
    support_coco: Path | None = None,
    images_dir: Path | None = None,
    label_names: Mapping[int, str] | None = None,
    quality: bool = False,
    flag_below: float = 0.5,
    intensity: str | sio.Intensity = "auto",
    pages: list[int] | None = None,
    max_pages: int = MAX_PAGES,
) -> SegmentSummary:
    """Segment every query; returns a summary (failures included, never raised).

    Embedded with ``tracker``; against a server with ``client`` (an
    :class:`sst.client.Client`): sessions in sequential mode, pipelined stateless
    requests (``inflight`` at once) in independent mode. Supports are the ``(image,
    mask)`` file pairs plus the annotated images of ``support_coco`` (or a
    :class:`SupportSet` loaded already by :func:`load_supports`). Names: the COCO
    categories, overridden by ``label_names``. ``quality`` adds the cycle-IoU score of
    :func:`sst.tracker.quality.quality_scores` (on a server run, computed by the server:
    its ``QUALITY`` output) and ``review.csv``. ``intensity``: how pixels deeper than 8 bit
    become 8 bit (``auto``, ``range:LO,HI``, ``highbyte``; with a :class:`SupportSet`, the
    one it was loaded with); recorded in ``results.json``. A multi-page TIFF gives one
    query per page (``pages``: those pages only), named ``<stem>_p<N>``; one of more than
    ``max_pages`` pages is refused (:class:`InputError`) before any work.

    Raises:
        InputError: bad options or supports, an unwritable ``out`` (checked first), or
            an output that cannot be written later (disk full, ...).
    """
    if mode not in MODES:
        raise InputError("--mode", f"expected one of {MODES}, got {mode!r}")
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise InputError("--format", f"unknown format(s) {bad}; expected some of {FORMATS}")
    if not 0.0 <= flag_below <= 1.0:
        raise InputError("--flag-below", f"expected a quality threshold in 0..1, got {flag_below}")
    out = outputs.check_output_dir(out)
    if client is not None and save_logits:
        raise InputError("--save-logits", "logits are not sent by the server; run "
                         "embedded (without --server) to save them")
    support_set = supports if isinstance(supports, SupportSet) else load_supports(
        supports, support_coco, images_dir, tracker.max_labels if tracker else max_labels,
        intensity)
    sups, coco_names = support_set.supports, support_set.names
    labels = sorted({lab for s in sups for lab in sio.mask_labels(s.mask)})
    given = {**coco_names, **(label_names or {})}
    writer = OutputSet(out, formats, labels, coco.names_for(labels, given), legend=bool(given),
                       save_logits=save_logits, flag_below=flag_below,
                       intensity=support_set.intensity,
                       random_weights=tracker.meta.random_weights if tracker else None,
                       server=None if client is None else getattr(client, "url", "server"))
    reader = QueryReader(support_set.intensity, pages, max_pages=max_pages)
    paths = reader.expand(sio.collect_queries(queries, exclude=[s.path for s in sups]))
    summary = SegmentSummary()
    t_start = time.perf_counter()
    if client is not None:
        _run_on_server(client, sups, paths, writer, mode, summary, batch, inflight, progress,
                       quality, reader)
        summary.seconds = time.perf_counter() - t_start
        writer.write_summary(summary, mode, None)
        return summary
    assert tracker is not None
    pairs = [(s.image, s.mask) for s in sups]
    session = tracker.start_session(pairs, num_queries=len(paths))
    scorer = QualityScorer(tracker, pairs) if quality else None
    bar = tqdm(total=len(paths), desc=f"sst segment ({mode})", unit="img", disable=not progress)

    def record(p: Path, img: np.ndarray, res: FrameResult) -> None:
        q = None
        if scorer is not None:  # reuses the query's encoder outputs from its forward pass
            t = time.perf_counter()
            q = scorer([img], [res.mask], [res.features])[0]
            res.features = None
            summary.quality_seconds += time.perf_counter() - t
        writer.write_query(p.name, img, res, q)
        summary.rows += writer.rows_for(p.name, res.scores(), res.seconds, q)
        summary.processed += 1
        bar.update(1)

    for p, img, res in query_stream(tracker, session, paths, mode, batch, summary.failed,
                                    keep_features=quality, on_skip=lambda _: bar.update(1),
                                    read=reader):
        record(p, img, res)
    bar.close()
    summary.seconds = time.perf_counter() - t_start
    writer.engine = engine_record(tracker.backend)
    writer.write_summary(summary, mode, tracker.meta)
    return summary


def _run_on_server(client: Any, sups: Sequence[Support], paths: list[Path], writer: OutputSet,
                   mode: str, summary: SegmentSummary, batch: int, inflight: int,
                   progress: bool, quality: bool = False, reader: QueryReader | None = None
                   ) -> None:
    """Same outputs as the embedded run, from a server (:func:`server_stream`); with
    ``quality`` the server computes the quality scores too."""
    bar = tqdm(total=len(paths), desc=f"sst segment ({mode}, server)", unit="img",
               disable=not progress)
    banner = ServerBanner(getattr(client, "url", "server"))
    for p, img, res in server_stream(client, [s.image_bytes() for s in sups],
                                     [s.mask_bytes() for s in sups], paths, mode,
                                     summary.failed, batch=batch, inflight=inflight,
                                     quality=quality, on_skip=lambda _: bar.update(1),
                                     reader=reader):
        banner.see(res.served_model)  # the banner, once, when the server says random weights
        q = res.quality_by_label()
        writer.write_query(p.name, img, res, q)
        summary.rows += writer.rows_for(p.name, res.scores(), res.seconds, q)
        summary.processed += 1
        bar.update(1)
    bar.close()
    summary.random_weights_reason = banner.reason


def cmd_segment(args: argparse.Namespace) -> int:
    if len(args.support) != len(args.support_mask):
        raise InputError("--support-mask", f"{len(args.support)} --support but "
                         f"{len(args.support_mask)} --support-mask; give one mask per support")
    if not args.support and args.support_coco is None:
        raise InputError("--support", "no support given; expected --support IMG "
                                      "--support-mask MASK pairs or --support-coco FILE")
    formats = [f for f in args.format.split(",") if f]
    names = coco.parse_label_names(args.label_names) if args.label_names else None
    # Cheap checks first, before a model is loaded (or exported):
    intensity = sio.Intensity.parse(args.intensity)
    pages = parse_pages(args.pages)
    if args.max_pages < 1:
        raise InputError("--max-pages", f"expected a number of pages >= 1, got "
                                        f"{args.max_pages}")
    created = outputs.folders_to_create(args.out)
    outputs.check_output_dir(args.out)
    try:
        return _segment(args, formats, names, intensity, pages)
    except BaseException:  # a run that wrote nothing leaves no empty --out behind
        outputs.remove_if_empty(created)
        raise


def _segment(args: argparse.Namespace, formats: list[str], names: dict[int, str] | None,
             intensity: sio.Intensity, pages: list[int] | None) -> int:
    loaded = load_supports(list(zip(args.support, args.support_mask)), args.support_coco,
                           args.images_dir, args.max_labels, intensity)
    common: dict[str, Any] = dict(
        mode=args.mode, formats=formats, save_logits=args.save_logits, batch=args.batch,
        progress=not args.no_progress, max_labels=args.max_labels, label_names=names,
        quality=args.quality, flag_below=args.flag_below, pages=pages,
        max_pages=args.max_pages)
    if args.server:
        with client_from_args(args) as client:
            summary = run_segment(None, loaded, args.queries, args.out, client=client,
                                  inflight=args.inflight, **common)
        _print_summary(summary, args)
        print_reason_banner(summary.random_weights_reason)  # again: it must not go unseen
        return 0 if summary.ok else 1
    backend = local_backend(args)
    tracker = Tracker(backend, max_labels=args.max_labels)
    summary = run_segment(tracker, loaded, args.queries, args.out, **common)
    _print_summary(summary, args)
    print_banner_if_random(backend)  # again after the summary: it must not go unseen
    return 0 if summary.ok else 1


def _print_summary(summary: SegmentSummary, args: argparse.Namespace) -> None:
    per = summary.seconds / max(summary.processed, 1)
    print(f"segmented {summary.processed} image(s) in {summary.seconds:.1f}s "
          f"({per:.2f}s each, {args.mode}); {len(summary.failed)} failed; outputs in {args.out}")
    if summary.quality_seconds:
        share = summary.quality_seconds / max(summary.seconds - summary.quality_seconds, 1e-9)
        print(f"quality scores took {summary.quality_seconds:.1f}s of that ({share:.0%} of the "
              f"segmentation time); review.csv lists the queries worst first")
    for q, problem in summary.failed:
        print(f"  failed: {q}: {problem}")


