"""The export wrappers of a built sam2 model in PyTorch: the engine's backend on a GPU
(CUDA), on CPUs with BF16 matrix units (AMX), and the reference for parity and debugging.
Importing this module imports torch, which takes longer than the rest of a start-up,
which is why :func:`sst.tracker.backends.open_backend` imports it only for the torch
engine.

In BF16 or FP16 the components that run under autocast hold their own copies of the
model's weights converted once (linear and convolution layers, and memory attention's
position tables), and the memories are gathered from the bank in that dtype, so no
weight is cast per call and no memory makes a float32 round trip; LayerNorm, softmax and
the residual stream stay in float32 as autocast keeps them. In BF16 on a CPU, SAM 2's
image encoder runs as :class:`~sst.tracker.fused_hiera.FusedImageEncoder` (the same
arithmetic in fewer passes over memory). ``compiled`` on a CPU runs
memory attention, the memory encoder and the mask decoder as AOTInductor packages
(:mod:`sst.tracker.compiled`), built once per model and machine under
``<cache>/torch-compile`` when opened by :func:`torch_backend`; on a GPU it puts all
four through ``torch.compile`` in the process, with dynamic shapes."""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sst.export.families import family
from sst.export.meta import ModelMeta, load_meta
from sst.tracker.backends import CPU_ATTENTION_BYTES, CPU_ATTENTION_OBJECT_BYTES, Feeds
from sst.tracker.compiled import CompiledComponents
from sst.tracker.engine_choice import compiled_packages
from sst.tracker.errors import ModelError
from sst.tracker.fused_hiera import fused_image_encoder
from sst.tracker.torch_ops import TorchOps

__all__ = ["PRECISIONS", "TorchBackend", "torch_backend", "COMPILED", "COMPILED_ON_CPU"]

log = logging.getLogger("sst.engine")

#: Precisions of :class:`TorchBackend`: autocast dtype (None: float32 throughout).
PRECISIONS = ("fp32", "fp16", "bf16")
#: Components that run under autocast in FP16/BF16 (the mask decoder stays float32).
LOW_PRECISION = ("image_encoder", "memory_attention", "memory_encoder")
#: Components that ``compiled`` compiles on a GPU (``torch.compile``, in the process).
COMPILED = ("image_encoder", "memory_attention", "memory_encoder", "mask_decoder")
#: Components that ``compiled`` runs from AOTInductor packages on a CPU; the image
#: encoder stays eager there (compiled ahead of time it ran slower than eager in BF16;
#: docs/benchmarks.md has the figures).
COMPILED_ON_CPU = ("memory_attention", "memory_encoder", "mask_decoder")
#: Components that run wholly in BF16 (weights, norms and activations; no autocast):
#: the image encoder, whose float32 residual stream under autocast cost more in casts and
#: copies than its matrix products, for the same error against float32.
WHOLLY_LOW = ("image_encoder",)
#: Components whose convolutions run channels-last (NHWC, oneDNN's and cuDNN's own
#: layout): their weights and 4-D inputs are converted, their outputs made contiguous
#: again. The same sums; faster convolutions (docs/benchmarks.md).
CHANNELS_LAST = ("image_encoder", "memory_encoder", "mask_decoder")
#: Memory attention's tables that meet the memories, converted with the weights.
_TABLES = ("mem_pos", "rope_cos", "rope_sin", "maskmem_tpos_enc")


def _lowered(wrapper: Any, dtype: Any) -> Any:
    """A copy of ``wrapper`` whose linear and convolution weights (and memory
    attention's position tables) are in ``dtype``; norms keep float32."""
    w = copy.deepcopy(wrapper)
    for m in w.modules():
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            m.to(dtype)
    for name in _TABLES:
        t = getattr(w, name, None)
        if isinstance(t, torch.nn.Parameter):
            t.data = t.data.to(dtype)
        elif isinstance(t, torch.Tensor):
            setattr(w, name, t.to(dtype))
    return w


class TorchBackend:
    """The export wrappers of a built sam2 model in PyTorch, on ``device`` (``cpu``,
    ``cuda``, ``cuda:1`` ...), with tensors kept there (:class:`TorchOps`).

    ``precision`` ``fp16``/``bf16`` runs the image encoder, memory attention and memory
    encoder under autocast, which keeps LayerNorm, softmax and reductions in float32 (the
    FP32 islands of the FP16 ONNX export); the mask decoder runs in float32, as in that
    export (converted, it flipped the sign of a quarter of mask-prompt logits). Outputs
    are float32, except the memory encoder's in lower precision (the bank stores
    memories in bfloat16 anyway). On a GPU every component takes the whole batch.
    ``compiled``: see the module's docstring; ``compile_cache`` is the folder of this
    model's packages (None: built afresh in a temporary folder), and ``compile_seconds``
    holds each component's build or load time."""

    def __init__(self, model: Any, precision: str = "fp32", device: str = "cpu",
                 compiled: bool = False, compile_cache: Path | None = None) -> None:
        if precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        fam = family(getattr(model, "sst_family", "sam2"))
        geom = fam.geometry(model)
        self.device = torch.device(device)
        on_cpu = self.device.type == "cpu"
        self.attention_bytes = CPU_ATTENTION_BYTES if on_cpu else 0  # as ONNX Runtime
        self.attention_object_bytes = CPU_ATTENTION_OBJECT_BYTES if on_cpu else 0
        self.encode_batch = 0 if on_cpu else 16
        self.meta = ModelMeta(**asdict(geom), model=getattr(model, "sst_model_name", "sam2"),
                              random_weights=bool(getattr(model, "sst_random_weights", False)),
                              precision=precision)
        self._torch = torch
        self.autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        wrappers = fam.wrappers(model, late_values=False)
        # BF16 has float32's range; FP16 keeps a float32 residual stream under autocast.
        self.wholly_low = WHOLLY_LOW if self.autocast is torch.bfloat16 else ()
        if self.autocast is not None:
            wrappers.update({k: (copy.deepcopy(wrappers[k]).to(self.autocast)
                                 if k in self.wholly_low else _lowered(wrappers[k], self.autocast))
                             for k in LOW_PRECISION})
        self.wrappers = {k: w.to(self.device) for k, w in wrappers.items()}
        self.compiled: CompiledComponents | None = None
        #: What runs the components, as results and answers name it.
        self.engine_name = f"torch-{precision}" + ("-compiled" if compiled else "")
        self.specs = fam.specs(geom)
        self._first_call: set[str] = set()
        # (packages are captured from contiguous inputs: their components stay so)
        self.channels_last = set(CHANNELS_LAST) - (
            set(COMPILED_ON_CPU) if compiled and on_cpu else set())
        for k in self.channels_last:
            self.wrappers[k] = self.wrappers[k].to(memory_format=torch.channels_last)
        if on_cpu and self.autocast is torch.bfloat16:  # oneDNN's fused epilogues
            self.wrappers["image_encoder"] = fused_image_encoder(self.wrappers["image_encoder"])
        if compiled and on_cpu and geom.family != "sam2":
            raise ModelError(f"the compiled engine runs SAM 2 models on a CPU; {geom.family} "
                             f"runs eager (--engine torch without --compile)")
        if compiled and on_cpu:
            if compile_cache is None:  # built for this backend only, removed with it
                compile_cache = Path(tempfile.mkdtemp(prefix="sst-compiled-"))
                weakref.finalize(self, shutil.rmtree, compile_cache, True)
            low = self.autocast is not None
            # Memories and pointers come from the bank in the compute dtype (TorchOps).
            gathered = {"memory_attention": {"memory": self.autocast,
                                             "obj_ptrs": self.autocast}} if low else {}
            self.compiled = CompiledComponents(
                {k: self.wrappers[k] for k in COMPILED_ON_CPU}, self.specs, geom,
                self.device, compile_cache, dtype=self.autocast,
                autocast=tuple(k for k in LOW_PRECISION if low and k not in self.wholly_low),
                input_dtypes=gathered)
        elif compiled:  # a GPU: compiled in this process, all four, shapes dynamic
            for k in COMPILED:
                self.wrappers[k] = torch.compile(self.wrappers[k], dynamic=True)
            self._first_call = set(COMPILED)
        #: Each compiled component's build or load time, seconds.
        self.compile_seconds: dict[str, float] = (dict(self.compiled.seconds)
                                                  if self.compiled else {})
        self.ops = TorchOps(self.device, compute_dtype=self.autocast or torch.float32)

    def _full_support(self, args: list[Any]) -> list[Any]:
        """The mask decoder's arguments with a placeholder support mask (the engine's
        4 x 4 zeros, for frames not prompted by the support) at the image size the
        package was built for: zeros either way, and the decoder reads it only where
        ``mask_from_support`` is 1."""
        i = self.specs["mask_decoder"].input_names.index("support_mask")
        S = self.meta.image_size
        if args[i].shape[-2:] != (S, S) and not bool(args[i].any()):
            args = list(args)
            args[i] = args[i].new_zeros((args[i].shape[0], 1, S, S))
        return args

    def run(self, component: str, feeds: Feeds) -> dict[str, Any]:
        torch = self._torch
        spec = self.specs[component]
        args = [v if isinstance(v, torch.Tensor) else self.ops.asarray(np.asarray(v))
                for v in (feeds[n] for n in spec.input_names)]
        cast = self.autocast is not None and component in LOW_PRECISION
        if cast and component in self.wholly_low:
            args = [a.to(self.autocast) if a.is_floating_point() else a for a in args]
        if self.compiled is not None and component in self.compiled.runners:
            if component == "mask_decoder":
                args = self._full_support(args)
            outs = self.compiled(component, *args)
        else:
            nhwc = component in self.channels_last
            if nhwc:
                args = [a.contiguous(memory_format=torch.channels_last)
                        if a.dim() == 4 and a.is_floating_point() else a for a in args]
            started = time.perf_counter()
            with torch.inference_mode(), torch.autocast(
                    self.device.type, dtype=self.autocast,
                    enabled=cast and component not in self.wholly_low):
                out = self.wrappers[component](*args)
            outs = out if isinstance(out, tuple) else (out,)
            if nhwc:
                outs = tuple(o.contiguous() for o in outs)
            if component in self._first_call:  # traced and compiled by this call
                self._first_call.discard(component)
                self.compile_seconds[component] = round(time.perf_counter() - started, 1)
                log.info("torch.compile: %s ready in %.1f s", component,
                         self.compile_seconds[component])
        keep = cast and component == "memory_encoder"  # stored in bfloat16 next
        return {n: o if keep else o.float() for n, o in zip(spec.output_names, outs)}


def torch_backend(model_dir: str | Path, precision: str = "fp32", device: str = "cpu",
                  compiled: bool = False, compile_cache: Path | None = None) -> TorchBackend:
    """A :class:`TorchBackend` over the weights an export recorded (its checkpoint, or
    random weights and their seed)."""
    meta = load_meta(model_dir)
    if meta.random_weights and meta.seed is None:
        raise ModelError(f"{model_dir}: exported with random weights but no recorded seed; "
                         f"re-export it to use --engine torch")
    model = family(meta.family).build(meta.model, checkpoint=meta.checkpoint,
                                      random_weights=meta.random_weights, seed=meta.seed,
                                      image_size=meta.image_size)
    folder = None
    if compiled and compile_cache is not None and torch.device(device).type == "cpu":
        folder = compiled_packages(model_dir, precision, device, compile_cache)
    return TorchBackend(model, precision=precision, device=device, compiled=compiled,
                        compile_cache=folder)
