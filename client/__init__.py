"""SST Serve client: the gRPC client library and the ``sst`` command line."""

from sst.client._aio import AsyncClient, AsyncClientSession
from sst.client._client import Client, ClientSession, answer_chunks, to_image_bytes
from sst.client.errors import (
    AccessDenied,
    ClientError,
    InvalidRequest,
    RequestTimeout,
    ResourceExhausted,
    ServerError,
    ServerUnavailable,
    SessionLost,
    TooManySessions,
)
from sst.tracker.result import FrameResult

__all__ = ["AsyncClient", "AsyncClientSession", "Client", "ClientSession", "FrameResult",
           "to_image_bytes", "answer_chunks", "AccessDenied", "ClientError", "InvalidRequest",
           "RequestTimeout", "ResourceExhausted",
           "ServerError", "ServerUnavailable", "SessionLost", "TooManySessions"]
