"""Command line: ``sgem <command> ...``. Each command is a thin call into the library."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import describe_model, list_models

    for name in list_models():
        print(f"{name:12s} {describe_model(name)}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from .profiling import format_profile, profile_model

    result = profile_model(args.model, size=args.size, channels=args.channels, batch=args.batch,
                           device=args.device, precision=args.precision, warmup=args.warmup,
                           runs=args.runs, timing=not args.no_timing)
    result["command"] = args.command_line
    if args.out:
        from .io import atomic_write_json

        atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2) if args.json else format_profile(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sgem", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list registered models")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("profile", help="params, MACs, latency and FPS of a model",
                       description="Params, module-level MACs (paper convention), full MACs/FLOPs, "
                                   "forward latency (median, p90) and FPS, with device and versions.")
    p.add_argument("model", help="registered model name (see `sgem models`)")
    p.add_argument("--size", type=int, default=256, help="input height and width (default 256)")
    p.add_argument("--channels", type=int, default=None, help="input channels (default: the model's)")
    p.add_argument("--batch", type=int, default=1, help="batch size for timing (MACs are per image)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before timing (default 10)")
    p.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    p.add_argument("--no-timing", action="store_true", help="count params and MACs only")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", default=None, help="also write the JSON result to this file (atomically)")
    p.set_defaults(func=_cmd_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = " ".join(["sgem", *argv])
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, TypeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"sgem {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
