"""``sst segment``: SST over a folder of query images, embedded (ONNX Runtime) by default.

Outputs in ``--out``, per query ``<stem>``:

* ``<stem>.png``: label mask at the query's size, same values as the support (palette PNG);
* ``overlay/<stem>.png`` and ``segment.gif``: colour overlays for review;
* ``<stem>.npz`` with ``--save-logits``: float32 logits per label (key = label value);
* ``results.json`` / ``results.csv``: per query and label: area, object score, IoU, seconds.

Queries are taken in natural order of their file names (``img2`` before ``img10``), or in
the order of a list file (``@list.txt``). Unreadable queries are reported and skipped; the
exit status is then 1. All files are written atomically.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sst.client.model_args import add_model_args, local_backend, print_banner_if_random
from sst.tracker import imageio
from sst.tracker.errors import InputError
from sst.tracker.tracker import MODES, FrameResult, Tracker

__all__ = ["SegmentSummary", "run_segment", "add_segment_parser"]

log = logging.getLogger("sst.segment")
FORMATS = ("png", "overlay", "gif", "json")


@dataclass
class SegmentSummary:
    processed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _write_outputs(out: Path, stem: str, image: np.ndarray, res: Any,
                   formats: Sequence[str], save_logits: bool,
                   gif_frames: list[np.ndarray]) -> None:
    if "png" in formats:
        imageio.save_label_png(out / f"{stem}.png", res.mask)
    if "overlay" in formats or "gif" in formats:
        ov = imageio.overlay(image, res.mask)
        if "overlay" in formats:
            imageio.save_png(out / "overlay" / f"{stem}.png", ov)
        if "gif" in formats:
            gif_frames.append(_thumb(ov))
    if save_logits:
        imageio.save_npz(out / f"{stem}.npz",
                         **{str(lab): res.logits[k] for k, lab in enumerate(res.labels)})


def _thumb(img: np.ndarray, max_side: int = 384) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = min(1.0, max_side / max(h, w))
    if s >= 1.0:
        return img
    return np.asarray(Image.fromarray(img).resize((max(1, round(w * s)), max(1, round(h * s)))))


@dataclass
class _ServerFrame:
    """A server answer shaped like :class:`FrameResult` (no logits on the wire)."""

    labels: list[int]
    mask: np.ndarray
    rows: list[dict[str, float | int]]
    seconds: float

    def scores(self) -> list[dict[str, float | int]]:
        return self.rows


def run_segment(
    tracker: Tracker | None,
    supports: Sequence[tuple[Path, Path]],
    queries: str | Path,
    out: str | Path,
    *,
    mode: str = "sequential",
    formats: Sequence[str] = FORMATS,
    save_logits: bool = False,
    batch: int = 4,
    progress: bool = True,
    client: Any = None,
    inflight: int = 4,
    max_labels: int = 64,
) -> SegmentSummary:
    """Segment every query; returns a summary (failures included, never raised).

    Embedded with ``tracker``; against a server with ``client`` (an
    :class:`sst.client.Client`): sessions in sequential mode, pipelined stateless
    requests (``inflight`` at once) in independent mode."""
    from tqdm import tqdm

    if mode not in MODES:
        raise InputError("--mode", f"expected one of {MODES}, got {mode!r}")
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise InputError("--format", f"unknown format(s) {bad}; expected some of {FORMATS}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for img_path, mask_path in supports:
        img = imageio.load_image(img_path)
        mask = imageio.load_mask(mask_path, image_size=(img.shape[1], img.shape[0]),
                                 max_labels=tracker.max_labels if tracker else max_labels)
        pairs.append((img, mask))
    paths = imageio.collect_queries(queries, exclude=[p for p, _ in supports])
    summary = SegmentSummary()
    t_start = time.perf_counter()
    if client is not None:
        if save_logits:
            raise InputError("--save-logits", "logits are not sent by the server; run "
                             "embedded (without --server) to save them")
        _run_on_server(client, supports, paths, out, mode, formats, summary, batch, inflight,
                       progress)
        summary.seconds = time.perf_counter() - t_start
        labels = sorted({int(r["label"]) for r in summary.rows})
        _write_summary(out, formats, summary, mode, labels, None)
        return summary
    assert tracker is not None
    session = tracker.start_session(pairs, num_queries=len(paths))
    gif_frames: list[np.ndarray] = []
    bar = tqdm(total=len(paths), desc=f"sst segment ({mode})", unit="img", disable=not progress)

    def loaded() -> Any:
        for p in paths:
            try:
                yield p, imageio.load_image(p)
            except InputError as exc:
                summary.failed.append((str(p), exc.problem))
                log.error("skipping %s", exc)
                bar.update(1)

    def record(p: Path, img: np.ndarray, res: FrameResult) -> None:
        _write_outputs(out, p.stem, img, res, formats, save_logits, gif_frames)
        for s in res.scores():
            summary.rows.append({"query": p.name, **s, "seconds": round(res.seconds, 4)})
        summary.processed += 1
        bar.update(1)

    if mode == "sequential":
        # Images are read lazily; the tracker batches the encoder over a few frames.
        buffered: list[tuple[Path, np.ndarray]] = []

        def images() -> Any:
            for p, img in loaded():
                buffered.append((p, img))
                yield img

        for res in tracker.track(session, images()):
            p, img = buffered.pop(0)
            record(p, img, res)
    else:
        chunk: list[tuple[Path, np.ndarray]] = []
        for item in loaded():
            chunk.append(item)
            if len(chunk) == batch:
                for (p, img), res in zip(chunk, tracker.segment_independent(
                        session, [c[1] for c in chunk], batch=batch)):
                    record(p, img, res)
                chunk = []
        if chunk:
            for (p, img), res in zip(chunk, tracker.segment_independent(
                    session, [c[1] for c in chunk], batch=batch)):
                record(p, img, res)
    bar.close()
    summary.seconds = time.perf_counter() - t_start
    if "gif" in formats and gif_frames:
        imageio.save_gif(out / "segment.gif", gif_frames)
    _write_summary(out, formats, summary, mode, session.labels, tracker)
    return summary


def _write_summary(out: Path, formats: Sequence[str], summary: SegmentSummary, mode: str,
                   labels: list[int], tracker: Tracker | None) -> None:
    if "json" in formats:
        meta = tracker.meta if tracker is not None else None
        imageio.save_json(out / "results.json", {
            "model": meta.model if meta else "server",
            "image_size": meta.image_size if meta else None, "mode": mode,
            "random_weights": meta.random_weights if meta else None, "labels": labels,
            "processed": summary.processed,
            "failed": [{"query": q, "problem": p} for q, p in summary.failed],
            "seconds": round(summary.seconds, 3), "results": summary.rows})
        imageio.save_csv(out / "results.csv",
                         ["query", "label", "area", "object_score", "iou", "seconds"],
                         [[r["query"], r["label"], r["area"], f"{r['object_score']:.4f}",
                           f"{r['iou']:.4f}", r["seconds"]] for r in summary.rows])


def _run_on_server(client: Any, supports: Sequence[tuple[Path, Path]], paths: list[Path],
                   out: Path, mode: str, formats: Sequence[str], summary: SegmentSummary,
                   batch: int, inflight: int, progress: bool) -> None:
    """Same outputs as the embedded run, from a server. Files are sent as they are (the
    server decodes them exactly as the embedded tracker does)."""
    from tqdm import tqdm

    from sst.client.errors import InvalidRequest

    sup = [p.read_bytes() for p, _ in supports]
    msk = [m.read_bytes() for _, m in supports]
    gif_frames: list[np.ndarray] = []
    bar = tqdm(total=len(paths), desc=f"sst segment ({mode}, server)", unit="img",
               disable=not progress)

    def record(p: Path, res: Any, seconds: float) -> None:
        try:
            img = imageio.load_image(p)
        except InputError as exc:
            summary.failed.append((str(p), exc.problem))
            bar.update(1)
            return
        frame = _ServerFrame(res.labels, res.mask, res.scores(), seconds)
        _write_outputs(out, p.stem, img, frame, formats, False, gif_frames)
        for s in frame.rows:
            summary.rows.append({"query": p.name, **s, "seconds": round(seconds, 4)})
        summary.processed += 1
        bar.update(1)

    def fail(p: Path, exc: Exception) -> None:
        summary.failed.append((str(p), str(exc)))
        log.error("skipping %s: %s", p, exc)
        bar.update(1)

    if mode == "sequential":
        session = client.open_session(sup, msk)
        try:
            for p in paths:
                try:
                    imageio.load_image(p)  # reject unreadable files before sending them
                    t = time.perf_counter()
                    res = session.segment(p.read_bytes())
                    record(p, res, time.perf_counter() - t)
                except (InputError, InvalidRequest) as exc:  # this image only
                    fail(p, exc)
        finally:
            session.close()
    else:
        def loader(p: Path) -> Any:
            def load() -> bytes:
                imageio.load_image(p)
                return p.read_bytes()
            return load

        t = time.perf_counter()
        for p, res in client.segment_folder(sup, msk, ((p, loader(p)) for p in paths),
                                            inflight=inflight, batch=batch):
            if isinstance(res, Exception):
                fail(p, res)
            else:
                record(p, res, (time.perf_counter() - t) / max(1, summary.processed + 1))
    bar.close()
    if "gif" in formats and gif_frames:
        imageio.save_gif(out / "segment.gif", gif_frames)


def add_segment_parser(sub: Any) -> None:
    p = sub.add_parser("segment", help="segment query images from one labelled support (SST)")
    p.add_argument("--support", action="append", required=True, type=Path,
                   help="support image (repeat for k-shot)")
    p.add_argument("--support-mask", action="append", required=True, type=Path,
                   help="label mask of the matching --support (0 = background)")
    p.add_argument("--queries", required=True,
                   help="folder, glob ('imgs/*.jpg') or list file ('@list.txt') of queries")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--mode", choices=MODES, default="sequential")
    add_model_args(p, "HOST:PORT of an `sst serve` gRPC endpoint: sessions run there")
    p.add_argument("--format", default=",".join(FORMATS),
                   help=f"comma-separated outputs among {','.join(FORMATS)}")
    p.add_argument("--save-logits", action="store_true", help="write <stem>.npz logits")
    p.add_argument("--batch", type=int, default=4, help="queries per batch (independent mode)")
    p.add_argument("--max-labels", type=int, default=64)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--inflight", type=int, default=4,
                   help="requests in flight against a server (independent mode)")
    p.set_defaults(func=_cmd_segment)


def _cmd_segment(args: argparse.Namespace) -> int:
    if len(args.support) != len(args.support_mask):
        raise InputError("--support-mask", f"{len(args.support)} --support but "
                         f"{len(args.support_mask)} --support-mask; give one mask per support")
    formats = [f for f in args.format.split(",") if f]
    if args.server:
        from sst.client import Client

        with Client(args.server) as client:
            summary = run_segment(None, list(zip(args.support, args.support_mask)),
                                  args.queries, args.out, mode=args.mode, formats=formats,
                                  save_logits=args.save_logits, batch=args.batch,
                                  progress=not args.no_progress, client=client,
                                  inflight=args.inflight, max_labels=args.max_labels)
        _print_summary(summary, args)
        return 0 if summary.ok else 1
    backend = local_backend(args)
    tracker = Tracker(backend, max_labels=args.max_labels)
    summary = run_segment(tracker, list(zip(args.support, args.support_mask)), args.queries,
                          args.out, mode=args.mode,
                          formats=formats, save_logits=args.save_logits, batch=args.batch,
                          progress=not args.no_progress)
    _print_summary(summary, args)
    print_banner_if_random(backend)  # again after the summary: it must not go unseen
    return 0 if summary.ok else 1


def _print_summary(summary: SegmentSummary, args: argparse.Namespace) -> None:
    per = summary.seconds / max(summary.processed, 1)
    print(f"segmented {summary.processed} image(s) in {summary.seconds:.1f}s "
          f"({per:.2f}s each, {args.mode}); {len(summary.failed)} failed; outputs in {args.out}")
    for q, problem in summary.failed:
        print(f"  failed: {q}: {problem}")


