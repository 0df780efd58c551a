"""Triton Python-backend model running one exported component in ONNX Runtime.

Used by the CPU serving profile (the available Triton build has no onnxruntime
backend). Requests that Triton's dynamic batcher hands over together are grouped by
their non-batch shapes, concatenated, run once, and split back; a bad request gets its
own error response and the others still run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "0") or 0)
        opts.log_severity_level = 3
        if params.get("allow_spinning", "1") == "0":
            # Each component is its own process: threads that spin-wait after their run
            # would take the cores from the component called next.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(folder / params.get("onnx_file", "model.onnx")),
                                            opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        feeds: list[dict[str, np.ndarray] | None] = []
        responses: list[Any] = [None] * len(requests)
        for i, req in enumerate(requests):
            try:
                feed: dict[str, np.ndarray] = {}
                for name in self.inputs:
                    t = pb.get_input_tensor_by_name(req, name)
                    if t is None:
                        raise ValueError(f"missing input {name!r}")
                    feed[name] = t.as_numpy()
                feeds.append(feed)
            except Exception as exc:
                feeds.append(None)
                responses[i] = pb.InferenceResponse(
                    error=pb.TritonError(str(exc), pb.TritonError.INVALID_ARG))
        groups: dict[tuple, list[int]] = {}
        for i, maybe in enumerate(feeds):
            if maybe is not None:
                key = tuple((n, maybe[n].shape[1:]) for n in self.inputs)
                groups.setdefault(key, []).append(i)
        for members in groups.values():
            try:
                batch = {n: np.concatenate([feeds[i][n] for i in members])  # type: ignore[index]
                         for n in self.inputs}
                outs = self.session.run(None, batch)
                start = 0
                for i in members:
                    b = feeds[i][self.inputs[0]].shape[0]  # type: ignore[index]
                    tensors = [pb.Tensor(n, np.ascontiguousarray(o[start:start + b]))
                               for n, o in zip(self.outputs, outs)]
                    responses[i] = pb.InferenceResponse(output_tensors=tensors)
                    start += b
            except Exception as exc:  # one bad group must not take down the others
                for i in members:
                    responses[i] = pb.InferenceResponse(
                        error=pb.TritonError(f"{type(exc).__name__}: {exc}",
                                             pb.TritonError.INVALID_ARG))
        return responses

    def finalize(self) -> None:
        self.session = None
