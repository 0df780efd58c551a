"""Applications on the engine: trait retrieval (:mod:`.retrieve`), specimen crops
(:mod:`.crop`), and first masks from a cut-out (:mod:`.cutout`), from prompts
(:mod:`.prompts`) or by cleaning one (:mod:`.clean`).

May import: the core :mod:`sst.tracker` (its frames run through
:mod:`sst.tracker.scheduler`), :mod:`sst.tracker.io`, :mod:`sst.tracker.serving` and
:mod:`sst.export`; never the client or the server (``tests/test_layout.py``)."""

from sst.tracker.apps.clean import (
    CleanReport,
    clean_mask,
    fill_holes,
    parse_relabel,
    relabel,
    remove_small_components,
    run_clean,
)
from sst.tracker.apps.common import (
    binary_iou,
    load_label_map,
    mask_bbox,
)
from sst.tracker.apps.crop import (
    BACKGROUNDS,
    CropRow,
    CropSummary,
    expand_bbox,
    make_crop,
    run_crop,
)
from sst.tracker.apps.cutout import (
    CutoutMatch,
    match_cutout,
    run_from_cutout,
)
from sst.tracker.apps.prompts import (
    paint_label,
    prompt_feeds,
    prompt_multimask,
    run_from_prompts,
    segment_prompt,
)
from sst.tracker.apps.retrieve import (
    RetrievalItem,
    RetrieveSummary,
    cycle_consistency,
    rank_items,
    run_retrieve,
    trait_mask,
)

__all__ = [
    "BACKGROUNDS",
    "CleanReport",
    "CropRow",
    "CropSummary",
    "CutoutMatch",
    "RetrievalItem",
    "RetrieveSummary",
    "binary_iou",
    "clean_mask",
    "cycle_consistency",
    "expand_bbox",
    "fill_holes",
    "load_label_map",
    "make_crop",
    "mask_bbox",
    "match_cutout",
    "paint_label",
    "prompt_multimask",
    "parse_relabel",
    "prompt_feeds",
    "rank_items",
    "relabel",
    "remove_small_components",
    "run_clean",
    "run_crop",
    "run_from_cutout",
    "run_from_prompts",
    "run_retrieve",
    "segment_prompt",
    "trait_mask",
]
