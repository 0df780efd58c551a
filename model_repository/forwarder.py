"""``sst_segment``: stateless requests, forwarded to the engine in ``sst_tracker``.

A stateless request carries supports and a batch of queries (independent mode) and
keeps nothing. It is handed to ``sst_tracker`` as a one-request sequence (START and END
with ``INDEPENDENT`` set, a fresh random correlation ID), so that its queries join the
same engine steps as every live session: one engine per device. Only the request's own
bytes pass through here, and every output of the contract comes back (``INTENSITY`` and
``MODEL`` included); this module imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sst.tracker.defaults import TRACKER_MODEL, new_session_id
from sst.tracker.serving.wire import FORWARDED_INPUTS, INDEPENDENT, OUTPUT_NAMES

__all__ = ["SegmentModel", "FORWARDED_INPUTS", "OUTPUTS"]

OUTPUTS = OUTPUT_NAMES


class SegmentModel:
    """Forwards each request to ``sst_tracker`` (adding and removing the batch axis)."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        self.flags = (pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START
                      | pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END)

    def _forward(self, req: Any) -> Any:
        pb = self.pb
        inputs = [pb.Tensor(INDEPENDENT, np.ones((1, 1), np.uint8))]
        for name in FORWARDED_INPUTS:
            t = pb.get_input_tensor_by_name(req, name)
            if t is not None:
                inputs.append(pb.Tensor(name, t.as_numpy()[None]))
        resp = pb.InferenceRequest(
            model_name=TRACKER_MODEL, inputs=inputs, requested_output_names=list(OUTPUTS),
            correlation_id=new_session_id(), flags=self.flags).exec()
        if resp.has_error():
            err = resp.error()
            return pb.InferenceResponse(error=pb.TritonError(err.message(), err.code()))
        return pb.InferenceResponse(output_tensors=[
            pb.Tensor(n, pb.get_output_tensor_by_name(resp, n).as_numpy()[0]) for n in OUTPUTS])

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._forward(req) for req in requests]
