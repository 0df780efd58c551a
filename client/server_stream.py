"""The query stream against a server: what :func:`sst.tracker.apps.common.query_stream`
is in process, through the orchestrator (``sst segment --server``, ``sst crop --server``).

Image files are sent as they are (the server decodes them exactly as the embedded tracker
does) and read here too, for the outputs that need the pixels (overlays, crops); a file
that cannot be read is skipped before it is sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from sst.client._client import Client, ImageLike
from sst.client.banner import ServerBanner
from sst.client.errors import ClientError, InvalidRequest
from sst.tracker import io as sio
from sst.tracker.apps.common import read_queries
from sst.tracker.defaults import MAX_LABELS
from sst.tracker.io.queries import QueryReader
from sst.tracker.result import FrameResult

__all__ = ["ServerSource", "server_stream"]

log = logging.getLogger(__name__)


def server_stream(client: Client, supports: Sequence[bytes], masks: Sequence[bytes],
                  paths: Sequence[Path], mode: str, failed: list[tuple[str, str]], *,
                  batch: int = 4, inflight: int = 4, quality: bool = False,
                  on_skip: Callable[[Path], None] | None = None,
                  reader: QueryReader | None = None
                  ) -> Iterator[tuple[Path, np.ndarray, FrameResult]]:
    """``(path, rgb [H,W,3], result)`` of each query, in order, from the server.

    ``sequential``: one server session tracks the queries in order (ended on the way
    out, errors included). ``independent``: pipelined stateless requests, ``inflight``
    at once, ``batch`` queries each. A query the server refuses, or that cannot be read,
    goes to ``failed`` as ``(path, problem)`` and to ``on_skip``; ``quality`` asks the
    server for the quality scores. ``result.seconds`` is the query's share of the time.
    ``reader``: reads the queries (pages of stacks, deep pixels normalised) and says what
    to send for each (:meth:`QueryReader.payload`); default: the files as they are.
    """

    def skip(p: Path, problem: str) -> None:
        failed.append((str(p), problem))
        log.error("skipping %s: %s", p, problem)
        if on_skip is not None:
            on_skip(p)

    if mode == "sequential":
        with client.open_session(list(supports), list(masks)) as session:
            # unreadable files are not sent: read_queries reports them as the embedded run does
            for p, img in read_queries(paths, failed, on_skip, reader):
                t = time.perf_counter()
                try:
                    res = session.segment(_payload(reader, p, img), quality)
                except InvalidRequest as exc:  # this image only
                    skip(p, str(exc))
                    continue
                res.seconds = time.perf_counter() - t
                yield p, img, res
        return

    images: dict[Path, np.ndarray] = {}

    def loader(p: Path) -> Callable[[], ImageLike]:
        def load() -> ImageLike:
            images[p] = (reader or sio.load_image)(p)
            return _payload(reader, p, images[p])
        return load

    t, done = time.perf_counter(), 0
    for p, res in client.segment_folder(supports, masks, ((p, loader(p)) for p in paths),
                                        inflight=inflight, batch=batch, quality=quality):
        img = images.pop(p, None)
        if isinstance(res, ClientError) or img is None:
            skip(p, str(res))
            continue
        done += 1
        res.seconds = (time.perf_counter() - t) / done
        yield p, img, res


def _payload(reader: QueryReader | None, p: Path, img: np.ndarray) -> ImageLike:
    return p.read_bytes() if reader is None else reader.payload(p, img)


class ServerSource:
    """An application's queries segmented on a server through the orchestrator, as
    ``sst segment --server`` does (:class:`~sst.tracker.apps.common.QuerySource`)."""

    def __init__(self, client: Client, inflight: int = 4, max_labels: int = MAX_LABELS) -> None:
        self.client, self.inflight, self.max_labels = client, inflight, max_labels
        #: Prints the random-weights banner at the first answer that says so.
        self.banner = ServerBanner(getattr(client, "url", "server"))

    def stream(self, support: tuple[Path, np.ndarray, np.ndarray], paths: Sequence[Path],
               mode: str, batch: int, failed: list[tuple[str, str]]
               ) -> Iterator[tuple[Path, np.ndarray, FrameResult]]:
        path, _, mask = support
        for item in server_stream(self.client, [path.read_bytes()],
                                  [sio.label_png_bytes(mask)], paths, mode, failed,
                                  batch=batch, inflight=self.inflight):
            self.banner.see(item[2].served_model)
            yield item
