"""The orchestrators' public contract, written once: every input and output tensor.

``sst_tracker`` (sessions and stateless requests, one engine) and ``sst_segment`` (a
forwarder for stateless requests) share it. Their ``config.pbtxt``
(:func:`sst.model_repository.configs.orchestrator_config`), the server's encoder
(:func:`sst.tracker.service.encode_results`), the forwarder, and the client's requested
outputs all read these tables. Dims are per request, without ``sst_tracker``'s batch
axis. This module imports nothing heavy: the client uses it too.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WireTensor", "INPUTS", "OUTPUTS", "OUTPUT_NAMES", "FORWARDED_INPUTS"]


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
    WireTensor("SUPPORT_IMAGES", "TYPE_STRING", (-1,),
               "encoded PNG/JPEG support images (START and stateless requests)"),
    WireTensor("SUPPORT_MASKS", "TYPE_STRING", (-1,),
               "encoded PNG label masks, one per support image (0 = background)"),
    WireTensor("QUERY_IMAGES", "TYPE_STRING", (-1,), "encoded PNG/JPEG query images"),
    WireTensor("QUERY_IMAGE_RAW", "TYPE_UINT8", (-1, -1, 3), "one raw RGB query image"),
    WireTensor("QUALITY", "TYPE_UINT8", (1,), "1: also answer each query's quality"),
    WireTensor("INDEPENDENT", "TYPE_UINT8", (1,),
               "1: queries conditioned on the supports alone (with START and END: a "
               "stateless request)", tracker_only=True),
    WireTensor("SESSION_KEY", "TYPE_STRING", (1,),
               "the session's secret: a session started with one answers only it",
               tracker_only=True),
)

OUTPUTS: tuple[WireTensor, ...] = (
    WireTensor("LABELS", "TYPE_INT32", (-1,), "[K] label values, sorted"),
    WireTensor("MASKS", "TYPE_UINT8", (-1,), "[sum H*W] label masks, concatenated flat"),
    WireTensor("MASK_SHAPES", "TYPE_INT32", (-1, 2), "[Q,2] each mask's (H, W)"),
    WireTensor("OBJECT_SCORES", "TYPE_FP32", (-1, -1), "[Q,K] object score logits"),
    WireTensor("IOUS", "TYPE_FP32", (-1, -1), "[Q,K] predicted IoUs"),
    WireTensor("AREAS", "TYPE_INT64", (-1, -1), "[Q,K] mask areas in pixels"),
    WireTensor("QUALITY", "TYPE_FP32", (-1, -1),
               "[Q,K] cycle IoU per label when asked for (QUALITY=1), else NaN"),
)

OUTPUT_NAMES: tuple[str, ...] = tuple(t.name for t in OUTPUTS)
#: What ``sst_segment`` passes on to ``sst_tracker``.
FORWARDED_INPUTS: tuple[str, ...] = tuple(t.name for t in INPUTS if not t.tracker_only)
