"""The ``sst`` command line: :func:`main` parses with :func:`sst.client.arguments.build_parser`
(where every command's options are) and runs the command's handler; each handler calls
one typed function (``run_export``, ``run_segment``, ``run_serve``), which tests call
directly. ``sst export`` and ``sst models`` are handled here.

Ctrl-C and SIGTERM both unwind the command (server sessions are ended on the way out);
the exit status is then 130 or 143."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sst.client.arguments import build_parser
from sst.client.interrupt import exit_status, signal_name, sigterm_raises
from sst.export.families import FAMILIES, family_of_model, family_specs
from sst.export.meta import REPORT_FILE, load_meta
from sst.export.registry import MODELS, default_checkpoint
from sst.export.specs import COMPONENTS
from sst.model_repository.configs import write_repository
from sst.tracker.errors import ModelError, SSTError

__all__ = ["main", "build_parser", "cmd_export", "cmd_models"]

log = logging.getLogger("sst")


def cmd_export(args: argparse.Namespace) -> int:
    # torch and sam2 (1.7 s to import) only for the command that exports
    from sst.export.onnx_export import run_export

    if args.random_weights and args.seed is None:
        raise SSTError("--random-weights needs --seed N")
    checkpoint = args.checkpoint
    if not args.random_weights and checkpoint is None:
        if family_of_model(args.model).name != "sam2":
            raise ModelError(f"--model {args.model}: give --checkpoint FOLDER (its weights in "
                             f"transformers' layout: config.json, model.safetensors) or "
                             f"--random-weights --seed N")
        checkpoint = default_checkpoint(args.model)
    result = run_export(args.model, args.out, image_size=args.image_size, checkpoint=checkpoint,
                        random_weights=args.random_weights, seed=args.seed,
                        precision=args.precision, tensorrt=args.tensorrt,
                        check=not args.skip_parity, serving_profile=args.profile)
    profile = result.report["serving_profile"]
    if len(result.files) == len(COMPONENTS):  # a servable Triton repository, for its profile
        write_repository(result.out_dir, family_specs(load_meta(result.out_dir).geometry),
                         profile)
    print(f"{'component':18s} {'precision':9s} {'MB':>7s} {'export s':>9s} "
          f"{'max|diff|':>10s} {'tol':>8s}  ok")
    for name, c in result.report["components"].items():
        diff = c.get("max_abs_diff")
        print(f"{name:18s} {c['precision']:9s} {c['bytes'] / 1e6:7.1f} "
              f"{c['export_seconds']:9.1f} {'-' if diff is None else f'{diff:10.2e}':>10s} "
              f"{c.get('tolerance', float('nan')):8.0e}  "
              f"{'yes' if c.get('passed', True) else 'NO'}")
        for err in c.get("errors", []):
            print(f"    {err}")
    print(f"report: {result.out_dir / REPORT_FILE}")
    print(f"serving profile: {profile} (Triton configs written; `sst serve` starts with it)")
    return 0 if result.passed else 1


def cmd_models(args: argparse.Namespace) -> int:
    for m in MODELS.values():
        have = "present" if m.default_path.is_file() else "not downloaded"
        print(f"{m.name:24s} {'sam2':8s} {m.config:40s} {m.checkpoint} ({have})")
    for fam in FAMILIES.values():
        for name in fam.models:
            if name not in MODELS:
                needs = f" needs the [{fam.extra}] extra" if fam.extra else ""
                print(f"{name:24s} {fam.name:8s} "
                      f"{'--checkpoint FOLDER (transformers layout)':40s}{needs}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnxruntime", "onnxruntime.transformers.float16", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        # SIGTERM unwinds like Ctrl-C: sessions are ended (END sent), files closed.
        with sigterm_raises():
            return int(args.func(args))
    except SSTError as exc:
        print(f"sst {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"sst {args.command}: interrupted ({signal_name(exc)})", file=sys.stderr)
        return exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())

