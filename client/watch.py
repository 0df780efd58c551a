"""``sst watch``: segment images as an imaging rig drops them into a folder.

Each new image is processed once, after it is complete (its size and modification time
have not changed for ``--settle`` seconds), through one server session (sequential SST:
each specimen also remembers the ones before it) or stateless requests
(``--mode independent``).

* **Journal.** ``<out>/.sst-watch.jsonl`` has one line per processed image: its path
  relative to the folder, the SHA-256 of the bytes that were segmented, the status and the
  output name. An image is done when its path *and* content are in the journal, so a
  restarted watcher never processes an image twice or skips one, ``dup.png`` is not
  mistaken for an already done ``dup.jpg``, and a file rewritten with new content is
  segmented again.
* **Outputs** are those of ``sst segment``, named after the image's stem: ``<stem>.png``,
  ``overlay/<stem>.png`` and ``<stem>.json`` (the query, its SHA-256 and scores). A
  server whose model has random weights says so in its answers: the banner is printed
  once, each overlay carries a red RANDOM WEIGHTS band and each ``<stem>.json`` the
  reason (``random_weights_reason``). When
  another image already owns that stem (``dup.jpg`` done, then ``dup.png`` lands), the
  later one is named after its full file name instead (``dup.png.png``,
  ``overlay/dup.png.png``, ``dup.png.json``); the journal records which name each got.
* **Slow writers.** A file that does not decode is tried again once it changes and has
  settled again; it is marked failed only after it has stayed unchanged for
  ``--decode-grace`` seconds since the failed attempt. A failed file that changes later
  (a writer that paused longer than that) is segmented then.
* **Stacks.** A multi-page TIFF is one query per page, as in ``sst segment``: outputs
  ``<stem>_p<N>.png`` (and overlays), one ``<stem>.json`` listing the pages, one journal
  line for the file. Each page is sent as a one-page TIFF of its own pixels (a server
  takes one page per image), so the session maps deep pixels as it maps single files. A
  file of more than ``--max-pages`` pages is failed from its header, before any page is
  read; every image's header is checked before it is decoded.
* A crash between writing an image's outputs and journaling it is recovered on restart
  from ``<stem>.json``. Server restarts are ridden out by the client's retries and session
  re-priming; SIGINT and SIGTERM stop the watcher after ending its server session.

The folder is polled (a hand-written loop rather than a file-system notifier): rigs often
write to network shares where notifications do not arrive, "complete" is decided by
stability over time rather than by an event, and polling on an injectable clock keeps the
tests free of real waiting.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from sst.client.banner import ServerBanner
from sst.client.errors import InvalidRequest
from sst.client.interrupt import signal_name
from sst.client.server_args import client_from_args
from sst.tracker import io as sio
from sst.tracker.errors import InputError
from sst.tracker.io.headers import MAX_PAGES, read_header
from sst.tracker.io.images import check_pages
from sst.tracker.io.outputs import mark_random_weights

__all__ = ["WatchState", "run_watch", "cmd_watch", "JOURNAL"]

log = logging.getLogger("sst.watch")
JOURNAL = ".sst-watch.jsonl"
_SKIP_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial")


@dataclass
class _Seen:
    """What the watcher knows of one file's current version."""

    size: int
    mtime_ns: int
    since: float                   # clock time this size/mtime was first seen
    sha256: str | None = None      # of the content, once it has settled
    failed_at: float | None = None  # clock time of a failed decode of this version
    problem: str = ""               # what that decode said


@dataclass
class WatchState:
    """The journal in memory. ``done``: relative path -> status of its latest journaled
    content (``"ok"`` or ``"failed: ..."``); ``hashes``: the SHA-256 of that content
    (None for lines written before hashes were journaled: any content counts as done);
    ``outputs``: output stem -> the relative path that owns it."""

    done: dict[str, str] = field(default_factory=dict)
    hashes: dict[str, str | None] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    seen: dict[str, _Seen] = field(default_factory=dict)

    @classmethod
    def load(cls, out: Path) -> WatchState:
        state = cls()
        path = out / JOURNAL
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    name, status = str(entry["name"]), str(entry["status"])
                except (json.JSONDecodeError, KeyError, TypeError):  # a torn last line
                    continue
                state.done[name] = status
                state.hashes[name] = entry.get("sha256")
                output = entry.get("output", Path(name).stem if status == "ok" else None)
                if output is not None:
                    state.outputs[str(output)] = name
        return state

    def is_done(self, name: str, sha256: str) -> bool:
        return name in self.done and self.hashes.get(name) in (None, sha256)

    def output_for(self, name: str) -> str:
        """The output stem of ``name``: the one it already owns, else its stem, else its
        file name (then ``<name>~2``, ...) when another image owns that."""
        for stem, owner in self.outputs.items():
            if owner == name:
                return stem
        path = Path(name)
        choices = [path.stem, path.name]
        k = 2
        while True:
            for stem in choices:
                if stem not in self.outputs:
                    return stem
            choices = [f"{path.name}~{k}"]
            k += 1

    def record(self, out: Path, name: str, status: str, sha256: str | None = None,
               output: str | None = None, **extra: Any) -> None:
        self.done[name] = status
        self.hashes[name] = sha256
        entry: dict[str, Any] = {"name": name, "sha256": sha256, "status": status}
        if output is not None:
            self.outputs[output] = name
            entry["output"] = output
        with open(out / JOURNAL, "a") as fh:
            fh.write(json.dumps({**entry, "time": time.time(), **extra}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _candidates(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in sio.IMAGE_EXTENSIONS
             and not p.name.lower().endswith(_SKIP_SUFFIXES)]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, sio.natural_key(p.name)))


def _recovered(state: WatchState, out: Path, stem: str, name: str, sha256: str) -> bool:
    """Were this image's outputs written before a crash kept it out of the journal?"""
    sidecar = out / f"{stem}.json"
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return False
        return meta.get("query") == name and meta.get("sha256", sha256) == sha256
    # outputs of an older version without the sidecar: the label PNG alone
    return name not in state.done and (out / f"{stem}.png").is_file()


def _settled(folder: Path, state: WatchState, now: float, settle: float
             ) -> Iterator[tuple[Path, str, _Seen]]:
    """Files whose size and mtime have not changed for ``settle`` seconds and whose
    content is not yet done."""
    for p in _candidates(folder):
        name = p.relative_to(folder).as_posix()
        try:
            st = p.stat()
        except FileNotFoundError:  # removed while scanning
            continue
        seen = state.seen.get(name)
        if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            state.seen[name] = _Seen(st.st_size, st.st_mtime_ns, now)
            continue
        if now - seen.since < settle or st.st_size == 0:
            continue
        if name in state.done and state.hashes.get(name) is None:
            continue  # journaled before hashes were: done whatever its content
        if seen.sha256 is None:
            data = p.read_bytes()
            if len(data) != seen.size:  # changed under us: start over
                del state.seen[name]
                continue
            seen.sha256 = hashlib.sha256(data).hexdigest()
        if not state.is_done(name, seen.sha256):
            yield p, name, seen


def _finished(folder: Path, state: WatchState, name: str) -> bool:
    """Is the current content of ``name`` journaled (or the file gone)?"""
    if name in state.done and state.hashes.get(name) is None:
        return True
    seen = state.seen.get(name)
    if seen is None or seen.sha256 is None:
        return not (folder / name).exists()
    return state.is_done(name, seen.sha256)


def _page_tiff(raw: np.ndarray) -> bytes:
    """One page's pixels, in their own type, as a one-page TIFF to send a server."""
    buf = io.BytesIO()
    rgb = raw.ndim == 3 and raw.shape[2] in (3, 4)
    tifffile.imwrite(buf, raw, photometric="rgb" if rgb else "minisblack")
    return buf.getvalue()


def _queries(data: bytes, source: str, pages: int) -> Iterator[tuple[str, bytes, Any]]:
    """``(output suffix, what to send, 8-bit RGB for the overlay)`` of each query of a
    file: the file itself, or each page of a stack, read one at a time."""
    if pages <= 1:
        yield "", data, sio.load_image_bytes(data, source=source)
        return
    for page in range(pages):
        where = f"{source} page {page}"
        raw = sio.read_pixels_bytes(data, where, page=page)
        yield f"_p{page}", _page_tiff(raw), sio.Normaliser("auto")(raw, where)


def run_watch(client: Any, folder: Path, supports: list[tuple[Path, Path]], out: Path, *,
              mode: str = "sequential", poll: float = 0.5, settle: float = 1.0,
              decode_grace: float = 10.0, idle_exit: float | None = None, once: bool = False,
              stop: Callable[[], bool] = lambda: False,
              formats: tuple[str, ...] = ("png", "overlay"),
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep,
              max_pages: int = MAX_PAGES) -> WatchState:
    """Watch ``folder`` until ``stop()``, ``idle_exit`` seconds without new images, or (with
    ``once``) until every image present at the start is done. ``client`` is an
    :class:`sst.client.Client` (or anything with its ``open_session``/``segment``);
    ``clock`` and ``sleep`` are injectable. A stack gives one query per page, at most
    ``max_pages``. The session is ended however this returns."""
    if not folder.is_dir():
        raise InputError(folder, "not a folder to watch")
    if max_pages < 1:
        raise InputError("--max-pages", f"expected a number of pages >= 1, got {max_pages}")
    out.mkdir(parents=True, exist_ok=True)
    for img_path, mask_path in supports:  # validate before waiting for images
        sio.check_single_page(img_path)
        img = sio.load_image(img_path)
        sio.load_mask(mask_path, image_size=(img.shape[1], img.shape[0]))
    sup = [p.read_bytes() for p, _ in supports]
    msk = [m.read_bytes() for _, m in supports]
    state = WatchState.load(out)
    banner = ServerBanner(getattr(client, "url", "server"))
    session = client.open_session(sup, msk) if mode == "sequential" else None
    initial = {p.relative_to(folder).as_posix() for p in _candidates(folder)} if once else set()
    last_activity = clock()
    try:
        while not stop():
            now = clock()
            for p, name, seen in list(_settled(folder, state, now, settle)):
                sha = seen.sha256
                assert sha is not None
                if seen.failed_at is not None:  # this version did not decode
                    if now - seen.failed_at >= decode_grace:
                        log.error("%s: %s", name, seen.problem)
                        state.record(out, name, f"failed: {seen.problem}", sha)
                    continue
                try:
                    data = p.read_bytes()
                except FileNotFoundError:
                    continue
                if hashlib.sha256(data).hexdigest() != sha:  # rewritten since it settled
                    del state.seen[name]
                    continue
                stem = state.output_for(name)
                if _recovered(state, out, stem, name, sha):
                    state.record(out, name, "ok", sha, stem, recovered=True)
                    continue
                done: list[dict[str, Any]] = []
                try:
                    pages = read_header(data, str(p), page_bound=max_pages).pages
                    check_pages(p, pages, max_pages)
                    for suffix, payload, img in _queries(data, str(p), pages):
                        if session is not None:
                            res = session.segment(payload)
                        else:
                            res = client.segment(sup, msk, [payload])[0]
                        banner.see(getattr(res, "served_model", None))  # once, if random
                        if "png" in formats:
                            sio.save_label_png(out / f"{stem}{suffix}.png", res.mask)
                        if "overlay" in formats:
                            ov = sio.overlay(img, res.mask)
                            if getattr(res, "random_weights", None):
                                ov = mark_random_weights(ov)
                            sio.save_png(out / "overlay" / f"{stem}{suffix}.png", ov)
                        done.append({"output": f"{stem}{suffix}", "scores": res.scores()})
                except InputError as exc:
                    if done:  # a later page of a stack that read whole: not a slow writer
                        log.error("%s: %s", name, exc.problem)
                        state.record(out, name, f"failed: {exc.problem}", sha)
                        continue
                    # maybe a writer that paused: wait for a change, or the grace period
                    seen.failed_at, seen.problem = now, exc.problem
                    log.info("%s does not decode yet (%s); waiting", name, exc.problem)
                    continue
                except InvalidRequest as exc:
                    log.error("%s: %s", name, exc)
                    state.record(out, name, f"failed: {exc}", sha)
                    continue
                sidecar: dict[str, Any] = {"query": name, "sha256": sha}
                if banner.reason is not None:
                    sidecar["random_weights_reason"] = banner.reason
                if len(done) == 1 and done[0]["output"] == stem:
                    sidecar["scores"] = done[0]["scores"]
                else:
                    sidecar["pages"] = [{"page": i, **d} for i, d in enumerate(done)]
                sio.save_json(out / f"{stem}.json", sidecar)
                state.record(out, name, "ok", sha, stem)
                log.info("segmented %s -> %s.png", name, stem)
                last_activity = clock()
            if once and all(_finished(folder, state, name) for name in initial):
                break
            if idle_exit is not None and clock() - last_activity > idle_exit:
                break
            sleep(poll)
    finally:
        if session is not None:
            session.close()
    return state


def cmd_watch(args: argparse.Namespace) -> int:
    """Ctrl-C and SIGTERM (raised as KeyboardInterrupt by the CLI) are the normal way to
    stop a watcher: the session is ended, the journal is whole, and the status is 0."""
    if len(args.support) != len(args.support_mask):
        raise InputError("--support-mask", "give one --support-mask per --support")
    stopped = ""
    with client_from_args(args) as client:
        try:
            run_watch(client, args.folder, list(zip(args.support, args.support_mask)),
                      args.out, mode=args.mode, poll=args.poll, settle=args.settle,
                      decode_grace=args.decode_grace, idle_exit=args.idle_exit,
                      once=args.once, max_pages=args.max_pages)
        except KeyboardInterrupt as exc:
            stopped = f"stopped ({signal_name(exc)}); "
    state = WatchState.load(args.out)
    failed = [n for n, s in state.done.items() if s != "ok"]
    print(f"{stopped}done: {len(state.done) - len(failed)} segmented, {len(failed)} failed "
          f"(journal: {args.out / JOURNAL})")
    return 0
