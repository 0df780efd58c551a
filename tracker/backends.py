"""Backends run the four components; the tracker only selects, stacks and keeps books.

Every backend implements :class:`Backend`: ``run(component, feeds) -> outputs`` with the
tensor names and shapes of :mod:`sst.export.specs`.

* :class:`OrtBackend`: the exported graphs in ONNX Runtime, in-process (the default).
  Execution providers are the user's choice: CPU here, CUDA or TensorRT on a GPU.
* :class:`~sst.tracker.torch_backend.TorchBackend`: the export wrappers around a built
  sam2 model, in PyTorch (:mod:`sst.tracker.torch_backend`).

:func:`sst.tracker.engine_choice.open_backend` opens one by its engine's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sst.export.families import family_specs
from sst.export.meta import ModelMeta, load_meta
from sst.export.ort_providers import provider_options
from sst.export.tensorrt import profile_max_rows
from sst.tracker.errors import ModelError

__all__ = ["Backend", "OrtBackend", "available_providers", "CPU_ATTENTION_BYTES",
           "CPU_ATTENTION_OBJECT_BYTES"]

Feeds = Mapping[str, np.ndarray]


#: Attention scores (bytes) per memory-attention call on the CPU: room for all 32 objects
#: of 16 two-label sessions at 256 px (1.9 MB each), which batch well there.
CPU_ATTENTION_BYTES = 64 << 20
#: Objects whose own scores exceed this run one per call on the CPU (512 px: 29.6 MB
#: each; 1024 px: 470 MB), where batching them makes each dearer (docs/benchmarks.md).
CPU_ATTENTION_OBJECT_BYTES = 16 << 20


class Backend(Protocol):
    """Runs the four components. A backend may also set ``attention_bytes`` (the most
    attention-score bytes per memory-attention call it runs well; 0 or absent: any),
    ``attention_object_bytes`` (objects with more scores than this run one per call),
    ``encode_batch`` (frames per encoder call) and ``ops`` (its
    :class:`~sst.tracker.ops.ArrayOps`; absent: numpy arrays in host memory)."""

    meta: ModelMeta

    def run(self, component: str, feeds: Feeds) -> dict[str, np.ndarray]:
        """Run one component; ``feeds`` and the result are keyed by spec tensor names."""
        ...


def _ort() -> Any:
    """ONNX Runtime, imported by the first backend that runs it: the client install,
    which only talks to servers, has none."""
    import onnxruntime

    return onnxruntime


def available_providers() -> list[str]:
    return list(_ort().get_available_providers())


_PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                     "tensorrt": "TensorrtExecutionProvider"}


class OrtBackend:
    """The exported graphs of ``model_dir`` in ONNX Runtime sessions.

    ``max_rows`` (one number, or one per component): a call with more rows than that runs
    as several calls, whose outputs are concatenated. With the TensorRT provider each
    component takes at most its profiles' largest batch
    (:func:`~sst.export.tensorrt.profile_max_rows`) unless ``max_rows`` says otherwise;
    otherwise calls are not split.

    ``memory_arena=False`` turns ONNX Runtime's CPU memory arena off: host buffers are
    then allocated per run and freed after it, instead of kept, at their high-water
    mark, for the session's life (what that keeps and what turning it off costs:
    docs/benchmarks.md, "Large requests")."""

    def __init__(self, model_dir: str | Path, providers: Sequence[str] = ("cpu",),
                 threads: int | None = None, spin: bool = False,
                 max_rows: int | Mapping[str, int] | None = None,
                 memory_arena: bool = True) -> None:
        self.model_dir = Path(model_dir)
        self.meta = load_meta(self.model_dir)
        #: What runs the components, as results and answers name it.
        self.engine_name = f"ort-{self.meta.precision}"
        wanted = [_PROVIDER_ALIASES.get(p.lower(), p) for p in providers]
        ort = _ort()
        have = set(ort.get_available_providers())
        missing = [p for p in wanted if p not in have]
        if missing:
            raise ModelError(f"execution provider(s) {missing} not available in this onnxruntime "
                             f"(available: {sorted(have)}); on a GPU install ./install.sh --gpu")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or int(os.environ.get("SST_THREADS", 0)) or 0
        opts.log_severity_level = 3
        opts.enable_cpu_mem_arena = memory_arena
        if not spin:
            # One thread pool per component session: pools that spin-wait after a run
            # take the cores from the component called next (measured at 256 px, 2 cores:
            # 0.58-0.67 s per sequential frame with spinning, 0.40-0.42 s without).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions: dict[str, Any] = {}
        for name in ("image_encoder", "memory_attention", "mask_decoder", "memory_encoder"):
            path = self.model_dir / name / "1" / "model.onnx"
            if not path.is_file():
                raise ModelError(f"{path} is missing: re-run `sst export` into {self.model_dir}")
            self.sessions[name] = ort.InferenceSession(
                str(path), opts,
                providers=provider_options(self.model_dir, name, self.meta.precision, wanted))
        # On the CPU a memory-attention call should not hold many objects' N x L score
        # matrices at once (1024 px, 5-frame bank: 3 objects 14.8 s in one call against
        # 3.3 s each, 470 MB of scores per object); small ones batch freely.
        on_cpu = wanted == ["CPUExecutionProvider"]
        self.attention_bytes = CPU_ATTENTION_BYTES if on_cpu else 0
        self.attention_object_bytes = CPU_ATTENTION_OBJECT_BYTES if on_cpu else 0
        self.output_names = {n: [o.name for o in s.get_outputs()]
                             for n, s in self.sessions.items()}
        self.max_rows: dict[str, int] = {n: 0 for n in self.sessions}
        if "TensorrtExecutionProvider" in wanted:
            specs = family_specs(self.meta.geometry)
            self.max_rows = {n: profile_max_rows(specs[n]) for n in self.sessions}
        if isinstance(max_rows, int):
            self.max_rows = {n: max_rows for n in self.sessions}
        elif max_rows is not None:
            unknown = set(max_rows) - set(self.sessions)
            if unknown:
                raise ModelError(f"max_rows names unknown component(s) {sorted(unknown)}; "
                                 f"expected some of {sorted(self.sessions)}")
            self.max_rows.update(max_rows)
        if any(v < 0 for v in self.max_rows.values()):
            raise ModelError(f"max_rows must be 0 (no limit) or more, got {self.max_rows}")

    def run(self, component: str, feeds: Feeds) -> dict[str, np.ndarray]:
        session, names = self.sessions[component], self.output_names[component]
        limit = self.max_rows[component]
        rows = max((len(v) for v in feeds.values()), default=0)
        if limit <= 0 or rows <= limit:
            return dict(zip(names, session.run(None, dict(feeds))))
        # every input and output of a component has the batch (rows) first
        parts = [session.run(None, {k: v[i:i + limit] for k, v in feeds.items()})
                 for i in range(0, rows, limit)]
        return {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(names)}
