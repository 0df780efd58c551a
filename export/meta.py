"""The metadata file an export writes beside its graphs (``sst_model.json``): the model's
geometry, where its weights came from, and the serving profile it was exported for."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sst.export.specs import Geometry
from sst.tracker.errors import ModelError

__all__ = ["EXPORT_FORMAT", "MODEL_META_FILE", "REPORT_FILE", "ModelMeta", "load_meta",
           "random_weights_reason"]

#: Bumped whenever the exported graphs change (faster or different ops, new I/O), so
#: that cached exports made by an older version are rebuilt instead of reused.
EXPORT_FORMAT = 2
#: The parity report ``sst export`` writes beside the graphs.
REPORT_FILE = "export_report.json"

MODEL_META_FILE = "sst_model.json"


@dataclass(frozen=True)
class ModelMeta(Geometry):
    """What the tracker needs to know about an exported model: its geometry plus where
    its weights came from."""

    model: str = "sam2"
    random_weights: bool = False
    precision: str = "fp32"
    seed: int | None = None
    checkpoint: str | None = None
    #: The serving profile the export was made for (``cpu``, ``gpu``, ``gpu-native``):
    #: its repository's configs are written for it, and ``sst serve`` starts with it.
    serving_profile: str | None = None

    @property
    def geometry(self) -> Geometry:
        """The model geometry alone (every field, not only the image size)."""
        return Geometry(**{f.name: getattr(self, f.name) for f in fields(Geometry)})

    def record(self) -> dict[str, Any]:
        """What a server says of the model it serves, with every answer (its ``MODEL``
        output): name, image size, precision, whether the weights are random and their
        seed. No paths: a client learns nothing of the server's files."""
        return {"model": self.model, "image_size": self.image_size,
                "precision": self.precision, "random_weights": bool(self.random_weights),
                "seed": self.seed}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ModelMeta:
        """From the ``sst_model.json`` that ``sst export`` writes."""
        return cls(**raw["geometry"], model=raw["model"],
                   random_weights=bool(raw.get("random_weights", False)),
                   precision=raw.get("precision", "fp32"), seed=raw.get("seed"),
                   checkpoint=raw.get("checkpoint"),
                   serving_profile=raw.get("serving_profile"))


def load_meta(model_dir: str | Path) -> ModelMeta:
    path = Path(model_dir) / MODEL_META_FILE
    if not path.is_file():
        raise ModelError(f"{model_dir} is not an exported model folder (no {MODEL_META_FILE}); "
                         f"create one with `sst export ... --out {model_dir}`")
    return ModelMeta.from_json(json.loads(path.read_text()))


def random_weights_reason(record: Mapping[str, Any] | None, where: str = "this run's model"
                          ) -> str | None:
    """One sentence saying why the masks are meaningless, for ``results.json`` and the
    banners: ``record`` (:meth:`ModelMeta.record`, or a server's ``MODEL`` output) says
    random weights. None when it does not, or when there is no record. ``where`` names
    the model's place (``"the server at HOST:PORT"``, an export folder)."""
    if not record or not record.get("random_weights"):
        return None
    seed = record.get("seed")
    return (f"{where} ({record.get('model') or 'unknown model'}) has RANDOM weights "
            f"(seed {'unknown' if seed is None else seed}): an untrained model, its masks "
            f"are meaningless")
