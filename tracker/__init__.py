"""Core SST tracker: sessions, the bounded memory bank, frame selection, pre/post-processing.

Holds no model math: every learned weight lives inside the exported graphs (or the
PyTorch reference modules used for parity).

The in-process API, from the package root::

    from sst.tracker import Tracker, open_backend, load_image, load_mask

    tracker = Tracker(open_backend("/path/to/export"))
    support = (load_image("support.jpg"), load_mask("support_mask.png"))
    for result in tracker.segment([support], [load_image("q1.jpg")]):
        print(result.labels, result.mask.shape, result.scores())

Those names are imported on first use, so ``import sst.client`` (which needs none of
them) stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["Tracker", "open_backend", "load_image", "load_mask", "FrameResult"]

_HOMES = {"Tracker": "sst.tracker.tracker", "open_backend": "sst.tracker.engine_choice",
          "load_image": "sst.tracker.io.images", "load_mask": "sst.tracker.io.images",
          "FrameResult": "sst.tracker.result"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'sst.tracker' has no attribute {name!r}")
    return getattr(import_module(home), name)
