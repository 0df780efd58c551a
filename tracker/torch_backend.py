"""The export wrappers of a built sam2 model run eagerly in PyTorch: the engine's backend
on a GPU (CUDA) and the reference for parity and debugging. Importing this module imports
torch, which takes longer than the rest of a start-up, which is why
:func:`sst.tracker.backends.open_backend` imports it only for ``engine="torch"``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sst.export.meta import ModelMeta, load_meta
from sst.export.sam2_model import build_sam2_model
from sst.export.specs import component_specs
from sst.export.wrappers import build_wrappers, geometry_of
from sst.tracker.backends import CPU_ATTENTION_BYTES, CPU_ATTENTION_OBJECT_BYTES, Feeds
from sst.tracker.errors import ModelError
from sst.tracker.torch_ops import TorchOps

__all__ = ["PRECISIONS", "TorchBackend", "torch_backend"]


#: Precisions of :class:`TorchBackend`: autocast dtype (None: float32 throughout).
PRECISIONS = ("fp32", "fp16", "bf16")


class TorchBackend:
    """The export wrappers of a built sam2 model in PyTorch, on ``device`` (``cpu``,
    ``cuda``, ``cuda:1`` ...), with tensors kept there (:class:`TorchOps`).

    ``precision`` ``fp16``/``bf16`` runs the image encoder, memory attention and memory
    encoder under autocast, which keeps LayerNorm, softmax and reductions in float32 (the
    FP32 islands of the FP16 ONNX export); the mask decoder runs in float32, as in that
    export (converted, it flipped the sign of a quarter of mask-prompt logits). Outputs
    are float32. On a GPU every component takes the whole batch."""

    def __init__(self, model: Any, precision: str = "fp32", device: str = "cpu") -> None:
        if precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        geom = geometry_of(model)
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
        self.wrappers = {k: w.to(self.device) for k, w in
                         build_wrappers(model, late_values=False).items()}
        self.specs = component_specs(geom)
        self.ops = TorchOps(self.device)

    def run(self, component: str, feeds: Feeds) -> dict[str, Any]:
        torch = self._torch
        spec = self.specs[component]
        args = [v if isinstance(v, torch.Tensor) else self.ops.asarray(np.asarray(v))
                for v in (feeds[n] for n in spec.input_names)]
        cast = self.autocast is not None and component != "mask_decoder"
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast,
                                                    enabled=cast):
            out = self.wrappers[component](*args)
        outs = out if isinstance(out, tuple) else (out,)
        return {n: o.float() for n, o in zip(spec.output_names, outs)}


def torch_backend(model_dir: str | Path, precision: str = "fp32", device: str = "cpu"
                  ) -> TorchBackend:
    """A :class:`TorchBackend` over the weights an export recorded (its checkpoint, or
    random weights and their seed)."""
    meta = load_meta(model_dir)
    if meta.random_weights and meta.seed is None:
        raise ModelError(f"{model_dir}: exported with random weights but no recorded seed; "
                         f"re-export it to use --engine torch")
    model = build_sam2_model(meta.model, checkpoint=meta.checkpoint,
                             random_weights=meta.random_weights, seed=meta.seed,
                             image_size=meta.image_size)
    return TorchBackend(model, precision=precision, device=device)
