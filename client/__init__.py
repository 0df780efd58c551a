"""SST Serve client: the gRPC client library and the ``sst`` command line."""

from sst.client._client import AsyncClient, Client, ClientSession, SegmentResult, to_image_bytes
from sst.client.errors import (
                                ClientError,
                                InvalidRequest,
                                RequestTimeout,
                                ServerError,
                                ServerUnavailable,
                                SessionLost,
                                TooManySessions,
)

__all__ = ["AsyncClient", "Client", "ClientSession", "SegmentResult", "to_image_bytes",
           "ClientError", "InvalidRequest", "RequestTimeout", "ServerError",
           "ServerUnavailable", "SessionLost", "TooManySessions"]
