"""A stand-in for tritonserver's gRPC ``ModelInfer`` on loopback: Triton's own protobuf
messages, answers like ``sst_tracker`` (sessions by sequence ID, NOT_FOUND for one it
does not hold), and a record of every call's header and ``sst-session`` metadata. It can
refuse STARTs as a draining front door does (UNAVAILABLE, ``sst-reason: draining``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import deserialize_bytes_tensor, np_to_triton_dtype, serialize_byte_tensor

from sst.client._client import SESSION_HEADER
from sst.server_config.drain import parse_infer
from sst.server_config.launch_settings import LOOPBACK
from sst.tracker.errors import REASON_TRAILER

from .fakes import answer


@contextmanager
def serving(handler: grpc.GenericRpcHandler,
            options: tuple[tuple[str, int], ...] = ()) -> Iterator[str]:
    """``handler`` behind a gRPC server on a free loopback port; yields its address."""
    server = grpc.server(futures.ThreadPoolExecutor(4), options=list(options))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    try:
        yield f"{LOOPBACK}:{port}"
    finally:
        server.stop(0)


@dataclass
class Seen:
    session_header: str
    session_id: int
    start: bool
    end: bool
    key: bytes = b""


@dataclass
class StandIn(grpc.GenericRpcHandler):
    """``ModelInfer`` like ``sst_tracker``; ``refuse_starts`` STARTs are refused as a
    draining replica refuses them."""

    refuse_starts: int = 0
    #: STARTs to refuse as a bad support is refused (INVALID_ARGUMENT)
    fail_starts: int = 0
    #: seconds a START takes
    start_delay_s: float = 0.0
    calls: list[Seen] = field(default_factory=list)
    sessions: dict[int, list[int]] = field(default_factory=dict)
    #: sequences open as Triton's sequence batcher sees them: from any START (answered
    #: or not) until an END
    sequences: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def service(self, details):
        if details.method.endswith("/ModelInfer"):
            return grpc.unary_unary_rpc_method_handler(self._infer)
        return None

    def _infer(self, raw: bytes, context) -> bytes:
        info = parse_infer(raw)
        assert info is not None
        meta = dict(context.invocation_metadata())
        with self.lock:
            self.calls.append(Seen(meta.get(SESSION_HEADER, ""), info.session_id, info.start,
                                   info.end, info.key))
            if info.start and self.refuse_starts:
                self.refuse_starts -= 1
                context.abort_with_status(_draining_status())
            if info.start and not info.end:
                self.sequences.add(info.session_id)
            elif info.end:
                self.sequences.discard(info.session_id)
            failing = info.start and self.fail_starts > 0
            if failing:
                self.fail_starts -= 1
        if info.start and self.start_delay_s:
            time.sleep(self.start_delay_s)
        if failing:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "SUPPORT_MASKS[0]: the mask is "
                          "empty (no label other than 0)")
        request = pb.ModelInferRequest.FromString(raw)
        inputs = {t.name: deserialize_bytes_tensor(request.raw_input_contents[i])
                  for i, t in enumerate(request.inputs) if t.datatype == "BYTES"}
        queries = [bytes(q) for q in inputs.get("QUERY_IMAGES", [])]
        if info.start:
            self.sessions[info.session_id] = [1]
        labels = self.sessions.get(info.session_id)
        if labels is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown session {info.session_id}")
        if info.end:
            self.sessions.pop(info.session_id, None)
        return _response(answer(queries, labels or [1]))


def _draining_status():
    class Status(grpc.Status):
        code = grpc.StatusCode.UNAVAILABLE
        details = "draining: this server takes no new session"
        trailing_metadata = ((REASON_TRAILER, "draining"),)

    return Status()


def _response(outputs: dict[str, np.ndarray]) -> bytes:
    response = pb.ModelInferResponse(model_name="sst_tracker")
    for name, value in outputs.items():
        batched = np.ascontiguousarray(value[None])
        response.outputs.add(name=name, datatype=np_to_triton_dtype(batched.dtype),
                             shape=list(batched.shape))
        response.raw_output_contents.append(batched.tobytes())
    return response.SerializeToString()


def frame_request(session_id: int, key: bytes, query: bytes) -> bytes:
    """A serialized ``sst_tracker`` request for one more frame of ``session_id``."""
    request = pb.ModelInferRequest(model_name="sst_tracker")
    request.parameters["sequence_id"].int64_param = session_id
    for name, value in (("QUERY_IMAGES", query), ("SESSION_KEY", key)):
        request.inputs.add(name=name, datatype="BYTES", shape=[1, 1])
        request.raw_input_contents.append(
            serialize_byte_tensor(np.array([value], dtype=object)).item())
    return request.SerializeToString()


def start_request(session_id: int, key: bytes, support: bytes, mask: bytes,
                  end: bool = False) -> bytes:
    """A serialized ``sst_tracker`` START (``end``: a stateless request) of ``session_id``."""
    request = pb.ModelInferRequest(model_name="sst_tracker")
    request.parameters["sequence_id"].int64_param = session_id
    request.parameters["sequence_start"].bool_param = True
    request.parameters["sequence_end"].bool_param = end
    inputs = [("SUPPORT_IMAGES", support), ("SUPPORT_MASKS", mask)]
    if key:
        inputs.append(("SESSION_KEY", key))
    for name, value in inputs:
        request.inputs.add(name=name, datatype="BYTES", shape=[1, 1])
        request.raw_input_contents.append(
            serialize_byte_tensor(np.array([value], dtype=object)).item())
    return request.SerializeToString()
