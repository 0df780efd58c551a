"""``sst demo``: SST on bundled beetle pictures, with nothing of one's own.

It segments the seven query pictures of :mod:`sst.client.demo_data` from its one
labelled support (five parts: head, pronotum, elytra, antenna, legs), exactly as ``sst
segment`` would, writes every output format and the review page (``review.html``) into
``--out``, compares the masks with the masks the pictures were painted from, and prints
where to look.

Weights: the official checkpoint (``checkpoints/<model>.pt``, fetched once when missing,
exported once into the cache), as ``sst segment`` resolves it. Random weights only when
asked: ``--random-weights`` always, ``--random-weights-if-offline`` when the checkpoint is
neither present nor downloadable; either way the run says so loudly, the results record
it and the review page carries the warning.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sst.client.demo_data import LABEL_NAMES, demo_files
from sst.client.model_args import print_banner_if_random
from sst.client.segment_cli import SegmentSummary, run_segment
from sst.client.segment_outputs import FORMATS
from sst.export.cache import RANDOM_WEIGHTS_BANNER, cache_root, resolve_model_dir
from sst.export.registry import ensure_checkpoint
from sst.tracker import io as sio
from sst.tracker.apps.common import binary_iou, load_label_map
from sst.tracker.defaults import DEFAULT_MODEL, DEMO_IMAGE_SIZE
from sst.tracker.engine_choice import open_backend
from sst.tracker.errors import ModelError
from sst.tracker.io import outputs
from sst.tracker.tracker import Tracker

__all__ = ["DEMO_IMAGE_SIZE", "DemoResult", "cmd_demo", "demo_model_dir", "run_demo"]

log = logging.getLogger("sst.demo")

#: Model input size of the demo: the pictures are 226-356 px wide, and 512 keeps a fresh
#: run (export included) well within two minutes on two CPU cores.


@dataclass
class DemoResult:
    """What the demo did: where, with which model folder, whether with random weights,
    the run's summary, and per query and label the IoU with the painted-from mask."""

    out: Path
    model_dir: Path
    random_weights: bool
    summary: SegmentSummary
    truth_iou: dict[str, dict[int, float]] = field(default_factory=dict)

    @property
    def review_page(self) -> Path:
        return self.out / "review.html"


def demo_model_dir(model: str, image_size: int, *, model_dir: Path | None = None,
                   checkpoint: Path | None = None, random_weights: bool = False,
                   random_if_offline: bool = False, seed: int = 0) -> tuple[Path, bool]:
    """The exported model folder for the demo and whether it has random weights: the
    given ``model_dir``; random weights when asked; else the checkpoint (given, present or
    fetched) exported into the cache; and, with ``random_if_offline``, random weights
    when that checkpoint cannot be had (announced on stderr).

    Raises:
        ModelError: the checkpoint cannot be had and ``random_if_offline`` is off.
    """
    if model_dir is not None:
        return model_dir, False
    if random_weights:
        return resolve_model_dir(model, image_size, random_weights=True, seed=seed), True
    try:
        ckpt = ensure_checkpoint(model, checkpoint)
    except ModelError as exc:
        if not random_if_offline or checkpoint is not None:
            raise ModelError(f"{exc} For the demo alone: `sst demo --random-weights-if-"
                             "offline` uses the checkpoint when it can be had and random "
                             "weights otherwise.") from None
        print(f"{RANDOM_WEIGHTS_BANNER}sst demo: no checkpoint ({exc})\nsst demo: "
              "--random-weights-if-offline: going on with RANDOM WEIGHTS (seed "
              f"{seed}); the masks will be meaningless.", file=sys.stderr)
        return resolve_model_dir(model, image_size, random_weights=True, seed=seed), True
    return resolve_model_dir(model, image_size, checkpoint=ckpt), False


def run_demo(out: Path, *, model: str = DEFAULT_MODEL,
             image_size: int = DEMO_IMAGE_SIZE, model_dir: Path | None = None,
             checkpoint: Path | None = None, random_weights: bool = False,
             random_if_offline: bool = False, seed: int = 0,
             progress: bool = True) -> DemoResult:
    """Segment the bundled queries into ``out`` with every format of ``sst segment``
    (``FORMATS``), quality scores and the review page; returns what it did.

    Raises:
        InputError: ``out`` cannot be written (checked before the model is resolved).
        ModelError: no model (see :func:`demo_model_dir`).
    """
    files = demo_files()
    out = outputs.check_output_dir(out)  # before a model is fetched or exported
    from_dir, _ = demo_model_dir(model, image_size, model_dir=model_dir,
                                 checkpoint=checkpoint, random_weights=random_weights,
                                 random_if_offline=random_if_offline, seed=seed)
    backend = open_backend(from_dir)
    print_banner_if_random(backend)
    summary = run_segment(Tracker(backend), [(files.support, files.support_mask)],
                          files.queries[0].parent, out, formats=FORMATS,
                          label_names=LABEL_NAMES, quality=True, progress=progress)
    result = DemoResult(out, from_dir, bool(backend.meta.random_weights), summary)
    for query, truth_path in zip(files.queries, files.truth):
        got_path = out / f"{query.stem}.png"
        if not got_path.is_file():  # failed: listed in the summary
            continue
        # a mask with no object found is an answer too (load_mask refuses one)
        got, truth = load_label_map(got_path), sio.load_mask(truth_path)
        result.truth_iou[query.name] = {lab: binary_iou(got == lab, truth == lab)
                                        for lab in LABEL_NAMES}
    return result


def _report(result: DemoResult) -> None:
    s, out = result.summary, result.out
    print(f"\nsst demo: segmented {s.processed} beetle picture(s) from one labelled support "
          f"in {s.seconds:.1f}s ({len(s.failed)} failed); outputs in {out}/")
    if result.truth_iou:
        per_label = {lab: float(np.mean([q[lab] for q in result.truth_iou.values()]))
                     for lab in LABEL_NAMES}
        print("  IoU with the masks the pictures were painted from (mean over queries): "
              + ", ".join(f"{LABEL_NAMES[lab]} {v:.2f}" for lab, v in per_label.items())
              + (" (random weights: meaningless)" if result.random_weights else ""))
    print(f"  review page  {result.review_page.resolve().as_uri()}  (open it in a browser: "
          "worst first, j/k to move, f for flagged only)")
    print(f"  masks        {out}/<name>.png (label values 1-5), overlays in {out}/overlay/")
    print(f"  tables       {out}/results.csv, {out}/results.json, {out}/review.csv")
    print(f"  annotations  {out}/annotations.json (COCO), {out}/labels/ + data.yaml (YOLO), "
          f"{out}/segment.gif")
    if "ome-zarr" in FORMATS:
        print(f"  OME-Zarr     {out}/ome-zarr/<name>.ome.zarr (image + labels, for napari and "
              "OME viewers)")
    print(f"  your own images, with this demo's model (exported once, reused at once):\n"
          f"    sst segment --model-dir {result.model_dir} --support IMG --support-mask MASK "
          f"--queries DIR --out DIR")
    size = sum(f.stat().st_size for f in Path(result.model_dir).rglob("*") if f.is_file())
    print(f"  exports are cached in {cache_root()} ({size / 2**30:.2f} GB for this one; "
          "delete the folder to clear it, $SST_CACHE moves it)")
    if result.random_weights:
        print(RANDOM_WEIGHTS_BANNER, file=sys.stderr)


def cmd_demo(args: argparse.Namespace) -> int:
    result = run_demo(args.out, model=args.model, image_size=args.image_size,
                      model_dir=args.model_dir, checkpoint=args.checkpoint,
                      random_weights=args.random_weights,
                      random_if_offline=args.random_weights_if_offline, seed=args.seed,
                      progress=not args.no_progress)
    _report(result)
    return 0 if result.summary.ok else 1
