"""SST Serve client: the gRPC client library and the ``sst`` command line."""

from sst.client._aio import AsyncClient, AsyncClientSession
from sst.client._client import Client, ClientSession, SegmentResult, to_image_bytes
from sst.client.errors import (
    AccessDenied,
    ClientError,
    InvalidRequest,
    RequestTimeout,
    ServerError,
    ServerUnavailable,
    SessionLost,
    TooManySessions,
)

__all__ = ["AsyncClient", "AsyncClientSession", "Client", "ClientSession", "SegmentResult",
           "to_image_bytes", "AccessDenied", "ClientError", "InvalidRequest", "RequestTimeout",
           "ServerError", "ServerUnavailable", "SessionLost", "TooManySessions"]
