"""The ``mcdropout`` command: serve, train and evaluate."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


class UsageError(Exception):
    """Bad arguments or files: one clear line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, ValueError, FileNotFoundError) as error:
        print(f"mcdropout {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mcdropout {args.command}: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcdropout", description="Bayesian uncertainty from MC dropout.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve every bundle in a folder over HTTP",
                                description="Serve every bundle in MCD_MODELS_DIR (default models/) over HTTP."
                                " Every MCD_* setting applies; these flags override three of them.")
    serve.add_argument("--models-dir", help="folder of bundles (MCD_MODELS_DIR, default models)")
    serve.add_argument("--host", help="address to bind (MCD_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (MCD_PORT, default 8000)")
    serve.set_defaults(handler=_serve)

    train = commands.add_parser("train", help="re-train a shipped model into a bundle",
                                description="Re-train a shipped model reproducibly and write its bundle.")
    train.add_argument("name", metavar="NAME", help="shipped model: " + ", ".join(_recipe_names()))
    train.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    train.add_argument("--out", type=Path, help="bundle folder to write (default models/NAME)")
    train.add_argument("--epochs", type=int, help="override the recipe's number of epochs")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="metrics of a bundle on its held-out data",
                                   description="Print the held-out metrics of a bundle (and optionally plot).")
    evaluate.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder (manifest.json + weights)")
    evaluate.add_argument("--samples", type=int, help="MC samples T (default: the bundle's)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the T sub-networks (default 0)")
    evaluate.add_argument("--plot", metavar="FILE.png", help="draw the predictive band or reliability diagram")
    evaluate.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")
    evaluate.set_defaults(handler=_evaluate)
    return parser


def _serve(args: argparse.Namespace) -> int:
    import os

    try:
        import uvicorn
    except ImportError:
        raise UsageError("serving needs the serve extra: pip install 'mcdropout[serve]'") from None
    for flag, variable in (("models_dir", "MCD_MODELS_DIR"), ("host", "MCD_HOST"), ("port", "MCD_PORT")):
        if getattr(args, flag) is not None:
            os.environ[variable] = str(getattr(args, flag))
    host = os.environ.get("MCD_HOST", "127.0.0.1")
    port = int(os.environ.get("MCD_PORT", "8000"))
    # The app is named by import string, so the library itself never imports the service.
    uvicorn.run("service.app:app", host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
    return 0


def _recipe_names() -> list[str]:
    from mcdropout.recipes import RECIPES

    return list(RECIPES)


def _train(args: argparse.Namespace) -> int:
    from mcdropout.recipes import train

    path, metrics = train(args.name, seed=args.seed, out=args.out, epochs=args.epochs, quiet=args.quiet)
    print(f"wrote {path}")
    _print_metrics(metrics)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mcdropout.bundle import load_bundle
    from mcdropout.evaluation import evaluate, plot

    if args.samples is not None and args.samples < 2:
        raise UsageError(f"--samples must be >= 2, got {args.samples}")
    bundle = load_bundle(args.bundle, device="cpu")
    metrics = evaluate(bundle, samples=args.samples, seed=args.seed)
    _print_metrics(metrics)
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    if args.plot:
        try:
            plot(bundle, args.plot, samples=args.samples, seed=args.seed)
        except ImportError as error:
            raise UsageError(f"--plot needs matplotlib ({error}); pip install 'mcdropout[train]'") from None
        print(f"plot written to {args.plot}")
    return 0


def _print_metrics(metrics: dict, indent: str = "") -> None:
    for key, value in metrics.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_metrics(value, indent + "  ")
        elif isinstance(value, float):
            print(f"{indent}{key}: {value:.4g}")
        else:
            print(f"{indent}{key}: {value}")


if __name__ == "__main__":
    sys.exit(main())
