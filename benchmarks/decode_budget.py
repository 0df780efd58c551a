"""What hostile images cost in-process, on the server's own decoding and engine path.

    python -m sst.benchmarks.decode_budget --model-dir DIR [--side 7000] [--labels 2,16,64]

Each figure comes from a fresh child process (so that one peak does not hide another),
read as the peak RSS over the process's RSS just before (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``):

* **labels x pixels**: one ``--side`` x ``--side`` solid PNG query against a 512 x 512
  support whose mask holds K labels, as the orchestrator runs a stateless request: header
  checks, decoding, the session manager and the ONNX Runtime engine on ``DIR``. Target:
  at most +1.5 GiB at every K, or refused from the headers in under a second.
* **crafted TIFFs** (:func:`sst.benchmarks.hostile_inputs.crafted_tiffs`): each through
  the server's checks and decoding and through ``sst segment``'s query reader. Target:
  refused in under a second, at most +100 MiB.

Prints one JSON object (and writes it to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sst.benchmarks.hostile_inputs import crafted_tiffs, label_mask_png, solid_png
from sst.tracker.backends import OrtBackend
from sst.tracker.engine import Engine
from sst.tracker.io.intensity import Normaliser
from sst.tracker.io.queries import QueryReader
from sst.tracker.serving.limits import (
    ServiceConfig,
    check_request,
    decode_masks,
    measure_request,
    normalise_images,
    read_images,
)
from sst.tracker.serving.sessions import Request, SessionManager

__all__ = ["main"]

GIB = 2**30


def _rss_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def _measured(call: Callable[[], str]) -> dict[str, Any]:
    """Seconds, peak RSS over the RSS before (bytes) and the answer of ``call()``."""
    base = _rss_kb("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM restarts from the current RSS
    t = time.perf_counter()
    try:
        answer = call()
    except Exception as exc:  # a refusal is the answer measured
        answer = f"refused: {exc}"
    seconds = time.perf_counter() - t
    return {"seconds": round(seconds, 3),
            "peak_over_base_bytes": (_rss_kb("VmHWM:") - base) * 1024, "answer": answer[:300]}


def _labels_child(model_dir: str, k: int, side: int) -> dict[str, Any]:
    config = ServiceConfig()
    manager = SessionManager(Engine(OrtBackend(model_dir, memory_arena=False),
                                    max_labels=config.max_labels), config)
    sup, msk = solid_png(512, 512, (90, 140, 30)), label_mask_png(512, 512, k)

    def run(query: bytes) -> str:
        blobs = {"QUERY_IMAGES": [query], "SUPPORT_IMAGES": [sup], "SUPPORT_MASKS": [msk]}
        measure_request(blobs, None, config, queries="QUERY_IMAGES")
        norm = Normaliser("auto")
        images = normalise_images(read_images([sup], "SUPPORT_IMAGES", config, checked=True),
                                  "SUPPORT_IMAGES", norm)
        masks = decode_masks([msk], images, "SUPPORT_MASKS", config)
        queries = normalise_images(read_images([query], "QUERY_IMAGES", config, checked=True),
                                   "QUERY_IMAGES", norm)
        (out,) = manager.run([Request(session_id=1, start=True, end=True, independent=True,
                                      supports=list(zip(images, masks)), queries=queries)])
        if isinstance(out, Exception):
            return f"refused: {out}"
        labels, results, _ = out
        return f"answered: {len(labels)} labels, mask {results[0].mask.shape}"

    run(solid_png(256, 256))  # warm: the engine's first run allocates for good
    query = solid_png(side, side)
    gc.collect()
    return {"labels": k, "side": side, **_measured(lambda: run(query))}


def _tiffs_child(folder: str) -> dict[str, Any]:
    out = {}
    for path in sorted(Path(folder).glob("*.tif")):
        data = path.read_bytes()

        def server(data: bytes = data) -> str:
            check_request({"QUERY_IMAGES": [data]}, None, ServiceConfig(), queries="QUERY_IMAGES")
            read_images([data], "QUERY_IMAGES", ServiceConfig(), checked=True)
            return "accepted"

        def segment(path: Path = path) -> str:
            QueryReader()(path)
            return "accepted"

        out[path.stem] = {"bytes": len(data), "server": _measured(server),
                          "segment": _measured(segment)}
    return out


def _child(*args: str) -> Any:
    proc = subprocess.run([sys.executable, "-m", "sst.benchmarks.decode_budget", "--child",
                           *args], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sst.benchmarks.decode_budget",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, help="an sst export folder")
    ap.add_argument("--side", type=int, default=7000)
    ap.add_argument("--labels", default="2,16,64", help="K values, comma-separated")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        result = (_labels_child(rest[0], int(rest[1]), int(rest[2])) if kind == "labels"
                  else _tiffs_child(rest[0]))
        print(json.dumps(result))
        return 0
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in crafted_tiffs().items():
            (Path(tmp) / f"{name}.tif").write_bytes(data)
        report["crafted_tiffs"] = tiffs = _child("tiffs", tmp)
    ok = all(row[path]["seconds"] < 1.0 and row[path]["peak_over_base_bytes"] <= 100 * 2**20
             for row in tiffs.values() for path in ("server", "segment"))
    if args.model_dir is not None:
        rows = [_child("labels", str(args.model_dir), k, str(args.side))
                for k in args.labels.split(",")]
        report["labels_x_pixels"] = rows
        ok = ok and all(r["peak_over_base_bytes"] <= 1.5 * GIB or (
            r["answer"].startswith("refused") and r["seconds"] < 1.0) for r in rows)
    report["targets_met"] = ok
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
