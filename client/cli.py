"""The ``sst`` command line. Each subcommand parses its arguments and calls one typed
function (``run_export``, ``run_segment``, ``run_serve``); tests call those directly.

Ctrl-C and SIGTERM both unwind the command (server sessions are ended on the way out);
the exit status is then 130 or 143."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sst.client.demo import add_demo_parser
from sst.client.interrupt import exit_status, signal_name, sigterm_raises
from sst.client.segment_cli import add_segment_parser
from sst.client.tools_cli import add_tools_parsers
from sst.client.watch import add_watch_parser
from sst.export.meta import REPORT_FILE, load_meta
from sst.export.registry import MODELS, default_checkpoint
from sst.export.specs import COMPONENTS, component_specs
from sst.model_repository.configs import PROFILES, write_repository
from sst.server_config.launcher import build_arg_parser, run_serve
from sst.tracker.errors import SSTError

__all__ = ["main", "build_parser"]

log = logging.getLogger("sst")


def _add_weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="sam2.1_hiera_tiny",
                   help="model name (default: sam2.1_hiera_tiny); see `sst models`")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--checkpoint", help="SAM 2 checkpoint file (default: checkpoints/<model>.pt)")
    w.add_argument("--random-weights", action="store_true",
                   help="use RANDOM weights (testing only: masks are meaningless); needs --seed")
    p.add_argument("--seed", type=int, help="seed for --random-weights")


def _cmd_export(args: argparse.Namespace) -> int:
    # torch and sam2 (1.7 s to import) only for the command that exports
    from sst.export.onnx_export import run_export

    if args.random_weights and args.seed is None:
        raise SSTError("--random-weights needs --seed N")
    checkpoint = args.checkpoint
    if not args.random_weights and checkpoint is None:
        checkpoint = default_checkpoint(args.model)
    result = run_export(args.model, args.out, image_size=args.image_size, checkpoint=checkpoint,
                        random_weights=args.random_weights, seed=args.seed,
                        precision=args.precision, tensorrt=args.tensorrt,
                        check=not args.skip_parity, serving_profile=args.profile)
    profile = result.report["serving_profile"]
    if len(result.files) == len(COMPONENTS):  # a servable Triton repository, for its profile
        write_repository(result.out_dir, component_specs(load_meta(result.out_dir).geometry),
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


def _cmd_models(args: argparse.Namespace) -> int:
    for m in MODELS.values():
        have = "present" if m.default_path.is_file() else "not downloaded"
        print(f"{m.name:24s} {m.config:40s} {m.checkpoint} ({have})")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    # run_serve writes this version's configs for --profile into a run folder: the
    # export folder is only read
    return run_serve(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sst", description="Static Segmentation by Tracking with SAM 2.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export SAM 2 components to ONNX (+TensorRT) with parity")
    _add_weights_args(p)
    p.add_argument("--image-size", type=int, default=1024,
                   help="model input size in pixels (default: 1024, SAM 2's own)")
    p.add_argument("--out", required=True, help="output model repository folder")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="fp16 converts the components that keep their accuracy in half "
                        "precision, the others stay fp32 (default: fp32)")
    p.add_argument("--tensorrt", action="store_true", help="also build TensorRT FP16 engines")
    p.add_argument("--profile", choices=PROFILES, default=None,
                   help="serving profile to record and write the Triton configs for "
                        "(default: gpu where nvidia-smi exists, else cpu)")
    p.add_argument("--skip-parity", action="store_true", help="skip the parity checks")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("models", help="list known models and their checkpoints")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("serve", help="run Triton Inference Server on a model repository")
    build_arg_parser(p)
    p.set_defaults(func=_cmd_serve)

    add_segment_parser(sub)
    add_watch_parser(sub)
    add_tools_parsers(sub)
    add_demo_parser(sub)
    return parser


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

