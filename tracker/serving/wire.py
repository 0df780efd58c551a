"""The orchestrators' public contract, written once: every tensor name, input and output,
the server's encoder of results (:func:`encode_results`) and the client's decoder
(:func:`decode_results`).

``sst_tracker`` (sessions and stateless requests, one engine) and ``sst_segment`` (a
forwarder for stateless requests) share it. Read from these tables: their
``config.pbtxt`` (:func:`sst.model_repository.configs.orchestrator_config`), the server's
encoder (:func:`sst.tracker.serving.sessions.encode_results`), the forwarder, the client's
requested outputs and perf_analyzer's input data (:func:`perf_analyzer_inputs`). Dims are
per request, without ``sst_tracker``'s batch axis. Nothing heavy is imported here: the
client uses it too.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor, triton_to_np_dtype

from sst.tracker.result import FrameResult

__all__ = ["ACCESS_HEADER", "ADMIN_HEADER", "GRPC_ACCESS_HEADER", "GRPC_ADMIN_HEADER",
           "WireTensor", "INPUTS", "OUTPUTS", "OUTPUT_NAMES", "FORWARDED_INPUTS",
           "IMAGE_INPUTS", "CONTROLS", "perf_analyzer_inputs", "perf_analyzer_values",
           "encode_results", "decode_results", "decode_intensity", "SUPPORT_IMAGES",
           "SUPPORT_MASKS", "QUERY_IMAGES",
           "QUERY_IMAGE_RAW", "QUALITY", "INDEPENDENT", "SESSION_KEY", "START", "END",
           "CORRID", "LABELS", "MASKS", "MASK_SHAPES", "OBJECT_SCORES", "IOUS", "AREAS",
           "INTENSITY", "MODEL", "decode_model"]

#: Header names of the tokens: HTTP headers, and gRPC metadata keys, which carry the
#: prefix Triton gives a restricted protocol's header.
ACCESS_HEADER = "sst-access-token"
ADMIN_HEADER = "sst-admin-token"
GRPC_ACCESS_HEADER = "triton-grpc-protocol-" + ACCESS_HEADER
GRPC_ADMIN_HEADER = "triton-grpc-protocol-" + ADMIN_HEADER

# Inputs (QUALITY and INTENSITY are also outputs: the scores it asks for, the mapping
# of pixels deeper than 8 bits used).
SUPPORT_IMAGES, SUPPORT_MASKS = "SUPPORT_IMAGES", "SUPPORT_MASKS"
QUERY_IMAGES, QUERY_IMAGE_RAW = "QUERY_IMAGES", "QUERY_IMAGE_RAW"
QUALITY, INDEPENDENT, SESSION_KEY = "QUALITY", "INDEPENDENT", "SESSION_KEY"
INTENSITY = "INTENSITY"
#: The sequence batcher's control inputs (Triton fills them from the request's sequence
#: ID and flags).
START, END, CORRID = "START", "END", "CORRID"
CONTROLS = (START, END, CORRID)
# Outputs.
LABELS, MASKS, MASK_SHAPES = "LABELS", "MASKS", "MASK_SHAPES"
OBJECT_SCORES, IOUS, AREAS = "OBJECT_SCORES", "IOUS", "AREAS"
MODEL = "MODEL"


@dataclass(frozen=True)
class WireTensor:
    """One tensor of the contract. ``tracker_only``: ``sst_tracker`` takes it (sequence
    and session inputs), ``sst_segment`` does not."""

    name: str
    triton_dtype: str
    dims: tuple[int, ...]
    doc: str
    tracker_only: bool = False


INPUTS: tuple[WireTensor, ...] = (
    WireTensor(SUPPORT_IMAGES, "TYPE_STRING", (-1,),
               "encoded PNG/JPEG support images (START and stateless requests)"),
    WireTensor(SUPPORT_MASKS, "TYPE_STRING", (-1,),
               "encoded PNG label masks, one per support image (0 = background)"),
    WireTensor(QUERY_IMAGES, "TYPE_STRING", (-1,), "encoded PNG/JPEG query images"),
    WireTensor(QUERY_IMAGE_RAW, "TYPE_UINT8", (-1, -1, 3), "one raw RGB query image"),
    WireTensor(QUALITY, "TYPE_UINT8", (1,), "1: also answer each query's quality"),
    WireTensor(INTENSITY, "TYPE_STRING", (1,),
               "mapping of pixels deeper than 8 bits to 8: auto (default; per-channel "
               "0.5-99.5 percentiles of the support), range:LO,HI or highbyte; on START "
               "and stateless requests (a session's later requests keep it)"),
    WireTensor(INDEPENDENT, "TYPE_UINT8", (1,),
               "1: queries conditioned on the supports alone (with START and END: a "
               "stateless request)", tracker_only=True),
    WireTensor(SESSION_KEY, "TYPE_STRING", (1,),
               "the session's secret: a session started with one answers only it",
               tracker_only=True),
)

OUTPUTS: tuple[WireTensor, ...] = (
    WireTensor(LABELS, "TYPE_INT32", (-1,), "[K] label values, sorted"),
    WireTensor(MASKS, "TYPE_UINT8", (-1,), "[sum H*W] label masks, concatenated flat"),
    WireTensor(MASK_SHAPES, "TYPE_INT32", (-1, 2), "[Q,2] each mask's (H, W)"),
    WireTensor(OBJECT_SCORES, "TYPE_FP32", (-1, -1), "[Q,K] object score logits"),
    WireTensor(IOUS, "TYPE_FP32", (-1, -1), "[Q,K] predicted IoUs"),
    WireTensor(AREAS, "TYPE_INT64", (-1, -1), "[Q,K] mask areas in pixels"),
    WireTensor(QUALITY, "TYPE_FP32", (-1, -1),
               "[Q,K] cycle IoU per label when asked for (QUALITY=1), else NaN"),
    WireTensor(INTENSITY, "TYPE_STRING", (1,),
               "JSON: the session's pixel mapping (mode, input_dtypes; auto: percentiles, "
               "ranges, fitted_on; range: range)"),
    WireTensor(MODEL, "TYPE_STRING", (1,),
               "JSON: the served model (model, image_size, precision, random_weights, "
               "seed): an answer from random weights says so"),
)

OUTPUT_NAMES: tuple[str, ...] = tuple(t.name for t in OUTPUTS)
#: What ``sst_segment`` passes on to ``sst_tracker``.
FORWARDED_INPUTS: tuple[str, ...] = tuple(t.name for t in INPUTS if not t.tracker_only)

#: The encoded-image inputs, in the order a request is read.
IMAGE_INPUTS: tuple[str, ...] = (QUERY_IMAGES, SUPPORT_IMAGES, SUPPORT_MASKS)

_INPUT_BY_NAME = {t.name: t for t in INPUTS}


def _json_tensor(value: Mapping[str, Any] | None) -> np.ndarray:
    return np.array([json.dumps(None if value is None else dict(value)).encode()],
                    dtype=np.object_)


def encode_results(labels: Sequence[int], results: Sequence[FrameResult],
                   quality: np.ndarray | None = None,
                   intensity: Mapping[str, Any] | None = None,
                   model: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Results of ``Q`` queries as the output tensors of :data:`OUTPUTS` (``QUALITY`` is
    NaN where it was not asked for; ``INTENSITY`` the JSON of ``intensity``, the
    request's :meth:`~sst.tracker.io.intensity.Normaliser.record`, ``null`` without;
    ``MODEL`` the JSON of ``model``, :meth:`~sst.export.meta.ModelMeta.record`)."""
    K = len(labels)
    flat = [r.mask.astype(np.uint8).ravel() for r in results]
    return {
        LABELS: np.asarray(labels, np.int32),
        MASKS: np.concatenate(flat) if flat else np.zeros(0, np.uint8),
        MASK_SHAPES: np.asarray([r.mask.shape for r in results], np.int32).reshape(-1, 2),
        OBJECT_SCORES: np.asarray([r.object_scores for r in results],
                                  np.float32).reshape(-1, K),
        IOUS: np.asarray([r.ious for r in results], np.float32).reshape(-1, K),
        AREAS: np.asarray([r.areas for r in results], np.int64).reshape(-1, K),
        QUALITY: (np.full((len(results), K), np.nan, np.float32) if quality is None
                  else np.asarray(quality, np.float32).reshape(-1, K)),
        INTENSITY: _json_tensor(intensity),
        MODEL: _json_tensor(model),
    }


def decode_results(out: Mapping[str, np.ndarray]) -> list[FrameResult]:
    """The inverse of :func:`encode_results`: one :class:`FrameResult` per query (its
    ``quality`` is None where the server computed none; its ``intensity`` the server's
    pixel mapping and its ``served_model`` the server's model record, each None from a
    server that sends none)."""
    labels = [int(v) for v in out[LABELS]]
    quality = out.get(QUALITY)
    intensity = decode_intensity(out)
    model = decode_model(out)
    results, start = [], 0
    for q, (h, w) in enumerate(out[MASK_SHAPES].reshape(-1, 2)):
        n = int(h) * int(w)
        row = None if quality is None or np.isnan(quality[q]).all() else quality[q]
        results.append(FrameResult(labels, out[MASKS][start:start + n].reshape(int(h), int(w)),
                                   object_scores=out[OBJECT_SCORES][q], ious=out[IOUS][q],
                                   areas=out[AREAS][q], quality=row, intensity=intensity,
                                   served_model=model))
        start += n
    return results


def _json_output(out: Mapping[str, np.ndarray], name: str) -> dict[str, Any] | None:
    raw = out.get(name)
    if raw is None or np.asarray(raw).size == 0:
        return None
    item = np.asarray(raw).reshape(-1)[0]
    text = item.decode() if isinstance(item, bytes | bytearray) else str(item)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{name}: expected a JSON object or null, got {text[:80]!r}")
    return value


def decode_intensity(out: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """The ``INTENSITY`` output as a dict (None when absent or ``null``).

    Raises:
        ValueError: the output is not a JSON object.
    """
    return _json_output(out, INTENSITY)


def decode_model(out: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """The ``MODEL`` output as a dict (None when absent, from a server that does not send
    it, or ``null``).

    Raises:
        ValueError: the output is not a JSON object.
    """
    return _json_output(out, MODEL)


def perf_analyzer_inputs(**values: Sequence[bytes] | np.ndarray) -> dict[str, Any]:
    """One request of perf_analyzer's JSON input data (``--input-data``), from contract
    input names to values: BYTES tensors as base64 of Triton's length-prefixed framing,
    the others as flat lists in the contract's dtype. Shapes are per request, without
    ``sst_tracker``'s batch axis (perf_analyzer adds it).

    Raises:
        ValueError: a name that is not an input of the contract.
    """
    step: dict[str, Any] = {}
    for name, value in values.items():
        tensor = _INPUT_BY_NAME.get(name)
        if tensor is None:
            raise ValueError(f"{name!r} is not an input of the orchestrator contract; "
                             f"expected one of {sorted(_INPUT_BY_NAME)}")
        if tensor.triton_dtype == "TYPE_STRING":
            framed = serialize_byte_tensor(np.array(list(value), dtype=np.object_))
            raw = b"" if framed is None else bytes(framed.item())
            step[name] = {"content": {"b64": base64.b64encode(raw).decode("ascii")},
                          "shape": [len(value)]}
        else:
            arr = np.asarray(value, dtype=triton_to_np_dtype(tensor.triton_dtype[5:]))
            step[name] = {"content": arr.ravel().tolist(), "shape": list(arr.shape)}
    return step


def perf_analyzer_values(entry: dict[str, Any]) -> list[bytes]:
    """The elements of one BYTES entry made by :func:`perf_analyzer_inputs` (checked
    against its shape)."""
    raw = base64.b64decode(entry["content"]["b64"], validate=True)
    out = [bytes(v) for v in deserialize_bytes_tensor(raw)] if raw else []
    if [len(out)] != list(entry["shape"]):
        raise ValueError(f"malformed BYTES entry: {len(out)} elements, shape {entry['shape']}")
    return out
