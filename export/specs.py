"""One I/O spec per exported component.

Each component's tensors are written down once here: name, dtype, shape (with symbolic
axes as strings) and how to sample a valid dummy value. Everything else is derived
from these specs:

* the dummy inputs used to trace the ONNX export (:func:`dummy_inputs`),
* ``dynamic_axes`` for :func:`torch.onnx.export` (:meth:`ComponentSpec.dynamic_axes`),
* the parity checks (which feed the same dummy inputs at *other* sizes),
* TensorRT optimisation profiles (:func:`sst.export.tensorrt.profile_shapes`),
* Triton ``config.pbtxt`` files (serving).

The first axis of every tensor is ``batch``: one row per tracked object (or per
object x query in independent mode). Triton's dynamic batcher needs that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "COMPONENTS",
    "ComponentSpec",
    "Geometry",
    "TensorSpec",
    "component_specs",
    "dummy_inputs",
    "NO_OBJ_SCORE",
]

#: Logit sam2 writes into masks of objects judged absent (``sam2_base.NO_OBJ_SCORE``).
NO_OBJ_SCORE = -1024.0

#: Stable component names; they are also the Triton model names.
COMPONENTS = ("image_encoder", "memory_attention", "mask_decoder", "memory_encoder")

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}
_TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64",
                  "int32": "TYPE_INT32"}

#: Components converted to FP16 by ``--precision fp16``. The mask decoder stays FP32: it
#: is ~1% of the FLOPs, and its two-way attention over mask-prompt embeddings overflows
#: half precision (measured: 25% of mask-prompt logits flip sign in FP16).
FP16_COMPONENTS = ("image_encoder", "memory_attention", "memory_encoder")


@dataclass(frozen=True)
class Geometry:
    """Sizes of one exported model; every graph is tied to one ``image_size``.

    ``feat`` is the top-level feature side (``image_size // 16``); the decoder's
    high-resolution features are at 4x and 2x that, the low-res mask logits at 4x.
    """

    image_size: int
    hidden_dim: int = 256
    mem_dim: int = 64
    s0_dim: int = 32
    s1_dim: int = 64
    num_maskmem: int = 7
    max_obj_ptrs: int = 16
    #: The model family (:mod:`sst.export.families`): what builds, wraps and checks it.
    family: str = "sam2"
    #: Memory tokens per stored frame; 0: the ``feat x feat`` map itself (SAM 2). A
    #: family that compresses memories (EdgeTAM: 512) stores ``[mem_tokens, mem_dim]``,
    #: of which the first ``mem_global`` have no position and the rest tile a
    #: ``mem_grid x mem_grid`` grid; ``memory_layers`` counts memory attention's layers.
    mem_tokens: int = 0
    mem_global: int = 0
    mem_grid: int = 0
    memory_layers: int = 0

    @property
    def feat(self) -> int:
        return self.image_size // 16

    @property
    def memory_tokens(self) -> int:
        """Keys one stored memory frame gives memory attention."""
        return self.mem_tokens or self.feat * self.feat

    @property
    def low_res(self) -> int:
        return self.feat * 4


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: ``shape`` holds ints (fixed) or strings (symbolic axes).

    ``sample`` says how to draw a valid dummy value: ``normal``, ``logits``, ``flag``
    (0/1 float), ``binary`` (0/1 float mask), ``tpos`` (memory temporal slot index in
    ``[0, num_maskmem)``), ``ptr_tpos`` (normalised signed frame distance in
    ``[-1, 1]``), ``point_labels`` (-1/0/1), ``coords`` (pixels in ``[0, image_size)``),
    ``image`` (normalised image).
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    sample: str = "normal"
    doc: str = ""

    @property
    def np_dtype(self) -> type:
        return _NP_DTYPES[self.dtype]

    @property
    def triton_dtype(self) -> str:
        return _TRITON_DTYPES[self.dtype]

    def symbolic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete_shape(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        try:
            return tuple(d if isinstance(d, int) else int(dims[d]) for d in self.shape)
        except KeyError as exc:
            raise KeyError(f"{self.name}: no size given for axis {exc.args[0]!r}") from None


@dataclass(frozen=True)
class ComponentSpec:
    """Inputs and outputs of one graph, plus the axis sizes used to trace it and the
    ranges (min, opt, max) each symbolic axis may take when served."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    trace_dims: Mapping[str, int]
    axis_ranges: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    doc: str = ""

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: t.symbolic_axes() for t in (*self.inputs, *self.outputs)
                if t.symbolic_axes()}

    def tensor(self, name: str) -> TensorSpec:
        for t in (*self.inputs, *self.outputs):
            if t.name == name:
                return t
        raise KeyError(f"{self.name} has no tensor {name!r}")


def component_specs(geom: Geometry, max_batch: int = 16) -> dict[str, ComponentSpec]:
    """The four component specs for one model geometry."""
    S, f, lo = geom.image_size, geom.feat, geom.low_res
    C, M = geom.hidden_dim, geom.mem_dim
    B = "batch"
    batch_range = (1, max(1, max_batch // 2), max_batch)

    image_encoder = ComponentSpec(
        name="image_encoder",
        doc="Hiera trunk + FPN neck, with the decoder's conv_s0/conv_s1 applied.",
        inputs=(TensorSpec("image", "float32", (B, 3, S, S), "image",
                           "RGB resized to SxS, /255, ImageNet mean/std normalised"),),
        outputs=(
            TensorSpec("feat_s0", "float32", (B, geom.s0_dim, 4 * f, 4 * f)),
            TensorSpec("feat_s1", "float32", (B, geom.s1_dim, 2 * f, 2 * f)),
            TensorSpec("feat_top", "float32", (B, C, f, f)),
        ),
        trace_dims={"batch": 2},
        axis_ranges={"batch": (1, 2, max(2, max_batch // 4))},
    )
    memory_attention = ComponentSpec(
        name="memory_attention",
        doc="Conditions the current frame's top features on the memory bank.",
        inputs=(
            TensorSpec("feat_top", "float32", (B, C, f, f)),
            TensorSpec("memory", "float32", (B, "num_frames", M, f, f), "normal",
                       "stored maskmem_features, conditioning frames first"),
            TensorSpec("memory_tpos", "int64", (B, "num_frames"), "tpos",
                       "temporal slot t_pos per memory frame: 0 for conditioning frames, "
                       "num_maskmem - (frames ago) for recent ones"),
            TensorSpec("obj_ptrs", "float32", (B, "num_ptrs", C), "normal"),
            TensorSpec("obj_ptr_tpos", "float32", (B, "num_ptrs"), "ptr_tpos",
                       "signed frame distance divided by (max pointers - 1)"),
        ),
        outputs=(TensorSpec("conditioned", "float32", (B, C, f, f)),),
        trace_dims={"batch": 2, "num_frames": 3, "num_ptrs": 2},
        axis_ranges={"batch": batch_range,
                     "num_frames": (1, geom.num_maskmem, geom.num_maskmem + 8),
                     "num_ptrs": (0, geom.max_obj_ptrs, geom.max_obj_ptrs + 8)},
    )
    mask_decoder = ComponentSpec(
        name="mask_decoder",
        doc="Prompt encoder + SAM mask decoder + object-pointer head, branch-free.",
        inputs=(
            TensorSpec("image_embed", "float32", (B, C, f, f)),
            TensorSpec("feat_s0", "float32", (B, geom.s0_dim, 4 * f, 4 * f)),
            TensorSpec("feat_s1", "float32", (B, geom.s1_dim, 2 * f, 2 * f)),
            TensorSpec("point_coords", "float32", (B, "num_points", 2), "coords",
                       "x, y in model-input pixels (0..image_size)"),
            TensorSpec("point_labels", "float32", (B, "num_points"), "point_labels",
                       "1 positive, 0 negative, 2/3 box corners, -1 padding"),
            TensorSpec("mask_input", "float32", (B, 1, lo, lo), "logits",
                       "low-res mask prompt (logits), used when has_mask_input=1"),
            TensorSpec("support_mask", "float32", (B, 1, "support_h", "support_w"), "binary",
                       "binary SxS support mask when mask_from_support=1, else any Bx1x4x4"),
            TensorSpec("has_mask_input", "float32", (B, 1), "flag"),
            TensorSpec("mask_from_support", "float32", (B, 1), "flag"),
            TensorSpec("no_memory", "float32", (B, 1), "flag",
                       "1 adds no_mem_embed (a first frame prompted without memory)"),
            TensorSpec("multimask", "float32", (B, 1), "flag",
                       "1 picks the best of the 3 multimask outputs by predicted IoU"),
        ),
        outputs=(
            TensorSpec("mask_logits", "float32", (B, 1, lo, lo)),
            TensorSpec("iou", "float32", (B, 1)),
            TensorSpec("obj_ptr", "float32", (B, C)),
            TensorSpec("object_score_logits", "float32", (B, 1)),
        ),
        trace_dims={"batch": 2, "num_points": 3, "support_h": S, "support_w": S},
        axis_ranges={"batch": batch_range, "num_points": (1, 1, 16),
                     "support_h": (4, 4, S), "support_w": (4, 4, S)},
    )
    memory_encoder = ComponentSpec(
        name="memory_encoder",
        doc="Encodes a frame's features and predicted mask into a memory.",
        inputs=(
            TensorSpec("feat_top", "float32", (B, C, f, f)),
            TensorSpec("mask_logits", "float32", (B, 1, lo, lo), "logits"),
            TensorSpec("object_score_logits", "float32", (B, 1), "logits"),
        ),
        outputs=(TensorSpec("maskmem_features", "float32", (B, M, f, f)),),
        trace_dims={"batch": 2},
        axis_ranges={"batch": batch_range},
    )
    specs = [image_encoder, memory_attention, mask_decoder, memory_encoder]
    return {s.name: s for s in specs}


def dummy_inputs(
    spec: ComponentSpec,
    geom: Geometry,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Valid random inputs for ``spec`` at axis sizes ``dims`` (default: the trace dims)."""
    rng = np.random.default_rng(seed)
    sizes = dict(spec.trace_dims)
    sizes.update(dims or {})
    out: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        shape = t.concrete_shape(sizes)
        v: np.ndarray
        if t.sample == "image":
            v = rng.normal(0.0, 1.0, shape)
        elif t.sample == "logits":
            v = rng.normal(0.0, 8.0, shape)
        elif t.sample == "flag":
            v = rng.integers(0, 2, shape)
        elif t.sample == "binary":
            v = rng.random(shape) > 0.6
        elif t.sample == "tpos":
            v = rng.integers(0, geom.num_maskmem, shape)
        elif t.sample == "ptr_tpos":
            v = rng.integers(-geom.max_obj_ptrs + 1, geom.max_obj_ptrs, shape) / (
                geom.max_obj_ptrs - 1)
        elif t.sample == "point_labels":
            v = rng.integers(-1, 2, shape)
        elif t.sample == "coords":
            v = rng.random(shape) * geom.image_size
        else:
            v = rng.normal(0.0, 1.0, shape)
        out[t.name] = np.ascontiguousarray(v, dtype=t.np_dtype)
    return out
