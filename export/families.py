"""Model families: one object per tracker architecture, and the registry of them.

A :class:`ModelFamily` bundles what differs between trackers that share SST's four
components (image encoder, memory attention, mask decoder, memory encoder) and their
per-frame pipeline: how a model is built (from a checkpoint or from random weights with
a seed), its geometry, its component specs, its export wrappers, the reference that
parity is checked against, the optional install it needs, and the few ways the engine
treats it differently (:class:`EngineTraits`). Export, the engine's backends, the Triton
configs and the CLI ask the family of a model (by name) or of an export (by the
``family`` its geometry records) instead of naming one architecture.

The callables are named as ``module:function`` and imported on first use, so that this
module (and the CLI that lists models) imports no model library.

Adding a family touches its own modules (builder, wrappers, reference), one entry in
:data:`FAMILIES`, and its tests; docs/architecture.md lists the steps.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sst.export.specs import ComponentSpec, Geometry
from sst.tracker.errors import ModelError

__all__ = ["EngineTraits", "ModelFamily", "FAMILIES", "family", "family_of_model",
           "family_specs", "model_names"]


@dataclass(frozen=True)
class EngineTraits:
    """How the engine's pipeline treats a family (the step order itself is shared).

    ``bf16_memories``: the bank may keep memories in bfloat16 (sam2 does; a family whose
    reference keeps float32 says False). ``support_multimask``: a support frame's object
    pointer comes from the decoder's multimask output. ``support_memory_from_mask``: a
    support's memory is encoded from its image-size mask, thresholded (the memory
    encoder's ``binarize`` input), instead of from low-res logits. ``resample``: the PIL
    filter that resizes frames to the model's size."""

    bf16_memories: bool = True
    support_multimask: bool = False
    support_memory_from_mask: bool = False
    resample: str = "bicubic"


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return fn


@dataclass(frozen=True)
class ModelFamily:
    """One tracker architecture. ``models`` maps the model names users give (``--model``)
    to their default image size; the ``*_fn`` fields name ``module:function`` targets:

    * ``build_fn(name, *, checkpoint, random_weights, seed, image_size, device)`` -> the
      built PyTorch model, with ``sst_model_name`` and ``sst_random_weights`` set;
    * ``geometry_fn(model)`` -> its :class:`Geometry` (``family`` set to this family);
    * ``specs_fn(geometry)`` -> the four :class:`ComponentSpec`;
    * ``wrappers_fn(model, late_values)`` -> the four export modules;
    * ``reference_fn(model, component, inputs)`` -> the reference's outputs;
    * ``parity_cases_fn(component, geometry)`` -> the shapes parity is checked at.

    ``extra`` is the pip extra the family needs beyond the base install (None: none)."""

    name: str
    models: Mapping[str, int]
    build_fn: str
    geometry_fn: str
    specs_fn: str
    wrappers_fn: str
    reference_fn: str
    parity_cases_fn: str
    traits: EngineTraits = field(default_factory=EngineTraits)
    extra: str | None = None

    def _call(self, target: str, *args: Any, **kwargs: Any) -> Any:
        # The family's modules import their libraries at the top or inside the function
        # called (transformers in EdgeTAM's builder): a missing one is named either way.
        try:
            return _resolve(target)(*args, **kwargs)
        except ImportError as exc:
            if (exc.name or "").split(".")[0] == "sst":
                raise
            hint = f" (install the extra: pip install 'sst-serve[{self.extra}]')" \
                if self.extra else ""
            raise ModelError(f"model family {self.name} cannot load: {exc}{hint}") from None

    def build(self, name: str, **kwargs: Any) -> Any:
        return self._call(self.build_fn, name, **kwargs)

    def geometry(self, model: Any) -> Geometry:
        geom = self._call(self.geometry_fn, model)
        assert geom.family == self.name, (geom.family, self.name)
        return geom

    def specs(self, geometry: Geometry, max_batch: int = 16) -> dict[str, ComponentSpec]:
        return self._call(self.specs_fn, geometry, max_batch)

    def wrappers(self, model: Any, late_values: bool = True) -> dict[str, Any]:
        return self._call(self.wrappers_fn, model, late_values)

    def reference(self, model: Any, component: str, inputs: Mapping[str, Any]
                  ) -> dict[str, Any]:
        return self._call(self.reference_fn, model, component, inputs)

    def parity_cases(self, component: str, geometry: Geometry) -> list[Any]:
        return self._call(self.parity_cases_fn, component, geometry)


_SAM2_SIZES = {name: 1024 for name in (
    "sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large",
    "sam2_hiera_tiny", "sam2_hiera_small", "sam2_hiera_base_plus", "sam2_hiera_large")}

#: Every family, by name. SAM 2 (and 2.1) first: the default.
FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (
    ModelFamily(
        name="sam2", models=_SAM2_SIZES,
        build_fn="sst.export.sam2_model:build_sam2_model",
        geometry_fn="sst.export.wrappers:geometry_of",
        specs_fn="sst.export.specs:component_specs",
        wrappers_fn="sst.export.wrappers:build_wrappers",
        reference_fn="sst.export.reference:reference_outputs",
        parity_cases_fn="sst.export.onnx_export:parity_cases"),
    ModelFamily(
        name="edgetam", models={"edgetam": 1024},
        build_fn="sst.export.edgetam_model:build_for_family",
        geometry_fn="sst.export.edgetam_wrappers:edgetam_geometry",
        specs_fn="sst.export.edgetam_wrappers:edgetam_component_specs",
        wrappers_fn="sst.export.edgetam_wrappers:wrappers_for_family",
        reference_fn="sst.export.edgetam_reference:reference_outputs",
        parity_cases_fn="sst.export.edgetam_wrappers:parity_cases",
        traits=EngineTraits(bf16_memories=False, support_multimask=True,
                            support_memory_from_mask=True, resample="bilinear"),
        extra="edgetam"),
)}


def family(name: str) -> ModelFamily:
    """The family named ``name`` (a geometry's ``family``)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ModelError(f"unknown model family {name!r}; expected one of: "
                         f"{', '.join(FAMILIES)}") from None


def family_of_model(model_name: str) -> ModelFamily:
    """The family of the model users call ``model_name`` (``--model``)."""
    for fam in FAMILIES.values():
        if model_name in fam.models:
            return fam
    raise ModelError(f"unknown model {model_name!r}; expected one of: "
                     f"{', '.join(model_names())}")


def model_names() -> list[str]:
    """Every model name, family by family."""
    return [m for fam in FAMILIES.values() for m in fam.models]


def family_specs(geometry: Geometry, max_batch: int = 16) -> dict[str, ComponentSpec]:
    """The component specs of an export's geometry, from its family."""
    return family(geometry.family).specs(geometry, max_batch)
