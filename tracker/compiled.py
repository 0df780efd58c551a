"""The torch engine's components compiled ahead of time: each export wrapper is captured
with ``torch.export`` (its batch, bank and pointer axes dynamic, as in the ONNX graphs)
and compiled by AOTInductor into one package file per component, which loads in
milliseconds. A package is built once per model, precision, device, processor and torch
version (about a minute and a half for the four components at 512 px on a 2-core CPU)
and kept under the compile cache (:func:`sst.tracker.engine_choice.compiled_packages`
names the folder), so a second start, another process or another session
joining the server compiles nothing.

On the CPU the weights are folded into the graph as constants (inductor's freezing),
which lets it pre-pack the matrix products for oneDNN: without that the compiled image
encoder ran slower than the eager one."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sst.export.specs import ComponentSpec, Geometry, dummy_inputs
from sst.tracker.engine_choice import PACKAGES_COMPLETE
from sst.tracker.errors import ModelError

__all__ = ["CompiledComponents"]

log = logging.getLogger("sst.engine")

#: Sizes the graphs are captured at: distinct, and none of them 0 or 1, so that no axis
#: is taken for a constant or for another axis.
_TRACE = {"batch": 2, "num_frames": 7, "num_ptrs": 16, "num_points": 3}
#: Upper bounds of the dynamic axes; the bank axes are bounded by the model's geometry.
_MAX_BATCH = 4096


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without torch's notice of a deprecation inside its own export code."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)",
                                category=FutureWarning)
        yield


class _Captured(torch.nn.Module):
    """``module`` as it is captured: its inputs as one tuple, and under autocast in
    ``dtype`` where that is given (the package then holds the casts)."""

    def __init__(self, module: torch.nn.Module, device: str, dtype: Any) -> None:
        super().__init__()
        self.module, self.device, self.dtype = module, device, dtype

    def forward(self, *args: Any) -> Any:
        with torch.autocast(self.device, dtype=self.dtype, enabled=self.dtype is not None):
            return self.module(*args)


def _dims(spec: ComponentSpec, geometry: Geometry) -> tuple[dict[str, int], dict[str, Any]]:
    """Trace sizes and ``torch.export`` dimensions of the spec's symbolic axes."""
    from torch.export import Dim

    bounds = {"batch": _MAX_BATCH, "num_frames": geometry.num_maskmem,
              "num_ptrs": geometry.max_obj_ptrs, "num_points": 64}
    axes = sorted({a for t in spec.inputs for a in t.shape if isinstance(a, str)})
    trace = {a: _TRACE.get(a, spec.trace_dims.get(a, 2)) for a in axes}
    # Other symbolic axes (the support mask's side) are the model's image size whenever
    # the engine feeds them; the graph is specialised to the traced size.
    dims = {a: Dim(a, min=1, max=bounds[a]) for a in axes if a in bounds}
    return trace, dims


def _static_shape(tensor: Any, spec: ComponentSpec, geometry: Geometry
                  ) -> list[int | None]:
    """``tensor``'s sizes in a package: its fixed axes, the traced size of the symbolic
    axes captured as constants, and None for the dynamic ones."""
    trace, dims = _dims(spec, geometry)
    return [None if isinstance(a, str) and a in dims else
            (trace[a] if isinstance(a, str) else int(a)) for a in tensor.shape]


def _example(spec: ComponentSpec, geometry: Geometry, trace: dict[str, int], device: Any,
             dtypes: list[Any]) -> tuple[Any, ...]:
    feeds = dummy_inputs(spec, geometry, trace)
    return tuple(torch.from_numpy(np.asarray(feeds[name])).to(device=device, dtype=dtype)
                 for name, dtype in zip(spec.input_names, dtypes))


def _build(module: torch.nn.Module, spec: ComponentSpec, geometry: Geometry, device: Any,
           dtypes: list[Any], path: Path) -> None:
    import torch._inductor.config as inductor_config

    trace, dims = _dims(spec, geometry)
    args = _example(spec, geometry, trace, device, dtypes)
    shapes = tuple({i: dims[a] for i, a in enumerate(t.shape) if a in dims} or None
                   for t in spec.inputs)
    freezing = inductor_config.freezing
    inductor_config.freezing = device.type == "cpu"
    try:
        with _quiet():
            with torch.inference_mode():
                program = torch.export.export(module, args, dynamic_shapes=(shapes,))
            tmp = path.with_suffix(".tmp.pt2")
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
        tmp.replace(path)
    finally:
        inductor_config.freezing = freezing


class CompiledComponents:
    """One loaded package per component, built into ``folder`` first where missing.

    ``modules`` maps component names to the wrappers to compile; ``autocast`` names the
    components that run under autocast in ``dtype``; ``input_dtypes`` gives, per
    component and input, a floating dtype other than float32 that the input arrives in.
    A package reads its inputs as they were captured, so a call with another dtype is
    refused (:class:`ModelError`) rather than read wrongly. ``seconds`` holds each
    component's build (or load) time."""

    def __init__(self, modules: Mapping[str, torch.nn.Module],
                 specs: Mapping[str, ComponentSpec], geometry: Geometry, device: Any,
                 folder: Path, *, dtype: Any = None, autocast: tuple[str, ...] = (),
                 input_dtypes: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.folder = folder
        self.dtypes: dict[str, list[Any]] = {}
        for name in modules:
            given = (input_dtypes or {}).get(name, {})
            self.dtypes[name] = [
                given.get(t.name, torch.float32) if t.dtype == "float32"
                else getattr(torch, t.dtype) for t in specs[name].inputs]
        self.specs_inputs = {name: specs[name].input_names for name in modules}
        #: Each input's sizes as the package holds them (None: a dynamic axis).
        self.shapes = {name: [_static_shape(t, specs[name], geometry) for t in specs[name].inputs]
                       for name in modules}
        self.seconds: dict[str, float] = {}
        self.built: list[str] = []
        self.runners: dict[str, Callable[..., Any]] = {}
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelError(f"compiled engine: cannot write its packages to {folder}: "
                             f"{exc}") from None
        for name, module in modules.items():
            path = folder / f"{name}.pt2"
            started = time.perf_counter()
            if not path.is_file():
                wrapped = _Captured(module, device.type,
                                    dtype if name in autocast else None)
                try:
                    _build(wrapped.eval(), specs[name], geometry, device, self.dtypes[name],
                           path)
                except Exception as exc:  # torch's export and compile errors, named
                    raise ModelError(f"compiled engine: cannot compile {name}: "
                                     f"{type(exc).__name__}: {exc}") from exc
                self.built.append(name)
            with _quiet():
                self.runners[name] = torch._inductor.aoti_load_package(str(path))
            self.seconds[name] = round(time.perf_counter() - started, 1)
        (folder / PACKAGES_COMPLETE).touch()
        if self.built:
            log.info("compiled engine: built %s in %.0f s (packages in %s)",
                     ", ".join(self.built), sum(self.seconds[n] for n in self.built), folder)

    def __call__(self, name: str, *args: Any) -> tuple[Any, ...]:
        for arg, want, shape, what in zip(args, self.dtypes[name], self.shapes[name],
                                          self.specs_inputs[name]):
            if arg.dtype != want:
                raise ModelError(f"compiled {name}: input {what} is {arg.dtype}, the "
                                 f"package was built for {want}")
            if len(arg.shape) != len(shape) or any(
                    want_n is not None and got_n != want_n
                    for got_n, want_n in zip(arg.shape, shape)):
                raise ModelError(f"compiled {name}: input {what} has shape "
                                 f"{tuple(arg.shape)}, the package was built for "
                                 f"{tuple('*' if n is None else n for n in shape)}")
        # A package reads its inputs with the strides it was captured with (contiguous):
        # a view of another layout (a slice, a channels-last map) is copied first.
        out = self.runners[name](*(a.contiguous() for a in args))
        return tuple(out) if isinstance(out, list | tuple) else (out,)
