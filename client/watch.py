"""``sst watch``: segment images as an imaging rig drops them into a folder.

Each new image is processed once, after it is complete (its size and modification time
have not changed for ``--settle`` seconds and it decodes), through one server session
(sequential SST: each specimen also remembers the ones before it) or stateless requests
(``--mode independent``). Outputs are those of ``sst segment`` plus a journal,
``<out>/.sst-watch.jsonl``, with one line per finished image. On restart the journal and
the (atomically written) outputs say what is done, so no image is processed twice or
skipped. Server restarts are ridden out by the client's retries and session re-priming.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sst.tracker import imageio
from sst.tracker.errors import InputError

__all__ = ["WatchState", "run_watch", "add_watch_parser", "JOURNAL"]

log = logging.getLogger("sst.watch")
JOURNAL = ".sst-watch.jsonl"
_SKIP_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial")


@dataclass
class WatchState:
    done: dict[str, str] = field(default_factory=dict)  # name -> "ok" | "failed: ..."
    seen: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # size, mtime, since

    @classmethod
    def load(cls, out: Path) -> WatchState:
        state = cls()
        path = out / JOURNAL
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a torn last line after a crash
                    continue
                state.done[entry["name"]] = entry["status"]
        return state

    def record(self, out: Path, name: str, status: str, **extra: Any) -> None:
        self.done[name] = status
        with open(out / JOURNAL, "a") as fh:
            fh.write(json.dumps({"name": name, "status": status, "time": time.time(), **extra})
                     + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _candidates(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in imageio.IMAGE_EXTENSIONS
             and not p.name.lower().endswith(_SKIP_SUFFIXES)]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, imageio.natural_key(p.name)))


def run_watch(client: Any, folder: Path, supports: list[tuple[Path, Path]], out: Path, *,
              mode: str = "sequential", poll: float = 0.5, settle: float = 1.0,
              idle_exit: float | None = None, once: bool = False,
              stop: Callable[[], bool] = lambda: False, formats: tuple[str, ...] = (
                  "png", "overlay")) -> WatchState:
    """Watch ``folder`` until ``stop()``, ``idle_exit`` seconds without new images, or (with
    ``once``) until every image present at the start is done."""
    from sst.client.errors import InvalidRequest

    if not folder.is_dir():
        raise InputError(folder, "not a folder to watch")
    out.mkdir(parents=True, exist_ok=True)
    for img_path, mask_path in supports:  # validate before waiting for images
        img = imageio.load_image(img_path)
        imageio.load_mask(mask_path, image_size=(img.shape[1], img.shape[0]))
    sup = [p.read_bytes() for p, _ in supports]
    msk = [m.read_bytes() for _, m in supports]
    state = WatchState.load(out)
    session = client.open_session(sup, msk) if mode == "sequential" else None
    initial = {p.name for p in _candidates(folder)} if once else set()
    last_activity = time.monotonic()
    try:
        while not stop():
            now = time.monotonic()
            ready = []
            for p in _candidates(folder):
                if p.name in state.done:
                    continue
                if (out / f"{p.stem}.png").is_file():  # finished before a crash: journal it
                    state.record(out, p.name, "ok", recovered=True)
                    continue
                st = p.stat()
                sig = (st.st_size, st.st_mtime_ns)
                prev = state.seen.get(p.name)
                if prev is None or prev[:2] != sig:
                    state.seen[p.name] = (*sig, now)
                    continue
                if now - prev[2] >= settle and st.st_size > 0:
                    ready.append(p)
            for p in ready:
                try:
                    img = imageio.load_image(p)
                except InputError as exc:
                    if now - state.seen[p.name][2] < settle * 5:
                        continue  # maybe still being written by a slow writer
                    log.error("%s", exc)
                    state.record(out, p.name, f"failed: {exc.problem}")
                    continue
                try:
                    if session is not None:
                        res = session.segment(p.read_bytes())
                    else:
                        res = client.segment(sup, msk, [p.read_bytes()])[0]
                except InvalidRequest as exc:
                    state.record(out, p.name, f"failed: {exc}")
                    continue
                if "png" in formats:
                    imageio.save_label_png(out / f"{p.stem}.png", res.mask)
                if "overlay" in formats:
                    imageio.save_png(out / "overlay" / f"{p.stem}.png",
                                     imageio.overlay(img, res.mask))
                imageio.save_json(out / f"{p.stem}.json", {"query": p.name,
                                                           "scores": res.scores()})
                state.record(out, p.name, "ok")
                log.info("segmented %s", p.name)
                last_activity = time.monotonic()
            if once and initial <= set(state.done):
                break
            if idle_exit is not None and time.monotonic() - last_activity > idle_exit:
                break
            time.sleep(poll)
    finally:
        if session is not None:
            session.close()
    return state


def add_watch_parser(sub: Any) -> None:
    p = sub.add_parser("watch", help="segment images as they land in a folder (needs a server)")
    p.add_argument("folder", type=Path)
    p.add_argument("--server", required=True, help="HOST:PORT of an `sst serve` gRPC endpoint")
    p.add_argument("--support", action="append", required=True, type=Path)
    p.add_argument("--support-mask", action="append", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--mode", choices=["sequential", "independent"], default="sequential")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between folder scans")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds a file must stay unchanged before it is read")
    p.add_argument("--once", action="store_true", help="process what is there, then exit")
    p.add_argument("--idle-exit", type=float, help="exit after this many idle seconds")
    p.set_defaults(func=_cmd_watch)


def _cmd_watch(args: argparse.Namespace) -> int:
    from sst.client import Client

    if len(args.support) != len(args.support_mask):
        raise InputError("--support-mask", "give one --support-mask per --support")
    with Client(args.server) as client:
        try:
            state = run_watch(client, args.folder, list(zip(args.support, args.support_mask)),
                              args.out, mode=args.mode, poll=args.poll, settle=args.settle,
                              idle_exit=args.idle_exit, once=args.once)
        except KeyboardInterrupt:
            print("stopped")
            return 0
    failed = [n for n, s in state.done.items() if s != "ok"]
    print(f"done: {len(state.done) - len(failed)} segmented, {len(failed)} failed "
          f"(journal: {args.out / JOURNAL})")
    return 0
