"""A tracker backend whose components run on an ``sst serve`` server.

The tracker's bookkeeping stays in this process; each ``run(component, feeds)`` is one
gRPC request (split into the component's max batch) to the component model of the same
name. This is how the tools (``sst retrieve``, ``sst crop``, ``sst mask from-prompts``)
run against a server: every learned weight is used on the server. Component calls keep
no state on the server, so each carries a fresh ``sst-session`` (a proxy in front of
several replicas spreads them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from sst.client._client import channel_options, session_headers
from sst.client.errors import ClientError, convert
from sst.export.meta import ModelMeta

__all__ = ["RemoteBackend"]

_COMPONENTS = ("image_encoder", "memory_attention", "mask_decoder", "memory_encoder")
_DTYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


class RemoteBackend:
    """:class:`sst.tracker.backends.Backend` over gRPC to the component models."""

    def __init__(self, url: str, timeout: float = 300.0, *, ssl: bool = False,
                 root_certificates: str | None = None, token: str | None = None) -> None:
        self._g = grpcclient
        self.url = url
        self.timeout = timeout
        kwargs, self._headers = channel_options(ssl, root_certificates, token)
        self._client = grpcclient.InferenceServerClient(url, **kwargs)
        self.outputs: dict[str, list[str]] = {}
        self.max_batch: dict[str, int] = {}
        raw_meta = None
        try:
            for name in _COMPONENTS:
                cfg = self._client.get_model_config(name, as_json=True,
                                                    headers=self._headers)["config"]
                self.outputs[name] = [o["name"] for o in cfg["output"]]
                self.max_batch[name] = int(cfg.get("max_batch_size", 0)) or 1 << 30
                params = cfg.get("parameters", {})
                if "sst_model_meta" in params:
                    raw_meta = params["sst_model_meta"]["string_value"]
        except Exception as exc:
            err = convert(exc, in_session=False)
            raise type(err)(f"cannot use the server at {url}: {err}") from None
        if raw_meta is None:
            raise ClientError(f"{url} serves no SST model metadata; re-export the repository "
                              f"with this version of `sst export`")
        self.meta = ModelMeta.from_json(json.loads(raw_meta))

    def run(self, component: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        g = self._g
        n = next(iter(feeds.values())).shape[0]
        step = self.max_batch[component]
        parts: list[dict[str, np.ndarray]] = []
        for s in range(0, n, step):
            inputs = []
            for name, arr in feeds.items():
                chunk = np.ascontiguousarray(arr[s:s + step])
                t = g.InferInput(name, list(chunk.shape), _DTYPES[chunk.dtype])
                t.set_data_from_numpy(chunk)
                inputs.append(t)
            try:
                res = self._client.infer(
                    component, inputs, client_timeout=self.timeout,
                    headers=session_headers(self._headers),
                    outputs=[g.InferRequestedOutput(o) for o in self.outputs[component]])
            except Exception as exc:
                raise convert(exc, in_session=False) from None
            parts.append({o: res.as_numpy(o) for o in self.outputs[component]})
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
