"""The ``mcdropout`` command: serve, train and evaluate."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mcdropout import __version__
from mcdropout._extras import missing_extra
from mcdropout._log_config import FORMATS, LEVELS, log_config
from mcdropout._malloc import pin_mmap_threshold
from mcdropout._serve_workers import worker_environment
from mcdropout.vocabulary import ABSTAIN_SCORES, INTERVAL_METHODS, SET_METHODS, TASKS


class UsageError(Exception):
    """Bad arguments or files: one clear line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, ValueError, FileNotFoundError, ImportError) as error:
        hint = missing_extra(error) if isinstance(error, ImportError) else None
        print(f"mcdropout {args.command}: error: {hint or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mcdropout {args.command}: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcdropout", description="Bayesian uncertainty from MC dropout.")
    parser.add_argument("--version", action="version", version=f"mcdropout {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve every bundle in a folder over HTTP",
                                description="Serve every bundle in MCD_MODELS_DIR (default models/) over HTTP."
                                " Every MCD_* setting applies; these flags override five of them.")
    serve.add_argument("--models-dir", help="folder of bundles (MCD_MODELS_DIR, default models)")
    serve.add_argument("--host", help="address to bind (MCD_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (MCD_PORT, default 8000)")
    serve.add_argument("--log-level", choices=LEVELS, help="server log level (MCD_LOG_LEVEL, default info)")
    serve.add_argument("--log-format", choices=FORMATS, help="text, or json: one JSON object a line"
                       " (MCD_LOG_FORMAT, default text)")
    serve.add_argument("--trust-bundle-code", action="store_true", help="run bundles' own model.py"
                       " (MCD_TRUST_BUNDLE_CODE; off by default)")
    serve.add_argument("--workers", type=int, metavar="N", help="worker processes on the one port, each with its"
                       " own models and batchers (MCD_WORKERS, default 1; see docs/workers.md)")
    _allow_argument(serve)
    _ray_arguments(serve)
    serve.set_defaults(handler=_serve)

    train = commands.add_parser(
        "train", help="train a bundle: a shipped model, or your own table",
        description="Re-train a shipped model reproducibly (mcdropout train NAME), or train an MLP on your own"
                    " table (mcdropout train --data FILE --target COLUMN); either way a bundle is written.")
    train.add_argument("name", nargs="?", metavar="NAME", help="shipped model: " + ", ".join(_recipe_names()))
    table = train.add_argument_group("training on your own table")
    table.add_argument("--data", type=Path, metavar="FILE", help="CSV, Parquet, JSON Lines, NPY or"
                       " whitespace-separated text (no header: columns are named 0, 1, ...)")
    table.add_argument("--target", metavar="COLUMN", help="the column to predict")
    table.add_argument("--features", nargs="+", metavar="COLUMN", help="feature columns (default: all others)")
    table.add_argument("--task", choices=TASKS, help="default: regression (a text"
                       " target needs classification)")
    table.add_argument("--dropout", type=float, metavar="P", help="dropout rate (default 0.05)")
    table.add_argument("--dropout-grid", nargs="+", metavar="P", help="dropout rates to choose from by validation"
                       " log-likelihood (space- or comma-separated)")
    table.add_argument("--tau", type=float, help="model precision in the target's units (regression)")
    table.add_argument("--tau-grid", nargs="+", metavar="TAU", help="precisions to choose from (default: tau"
                       " is fitted on the validation part)")
    table.add_argument("--hidden", metavar="50,50", help="hidden layer widths (default 50)")
    table.add_argument("--test-fraction", type=float, help="rows held out for the recorded"
                       " metrics (default 0.1)")
    table.add_argument("--name", dest="bundle_name", help="bundle name (default: the file's name)")
    train.add_argument("--calibration-fraction", type=float, metavar="F", help="fraction of the rows held out to"
                       " calibrate the bundle on, never trained on (default 0.15; 0: no calibration; with the test"
                       " fraction, below 1)")
    train.add_argument("--epochs", type=int, help="epochs (default: the recipe's; for a table the most, sized to"
                       " the data, with early stopping on the validation rows)")
    train.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    train.add_argument("--out", type=Path, help="bundle folder to write (default models/NAME)")
    train.add_argument("--overwrite", action="store_true", help="replace the bundle folder if it exists")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="metrics of a bundle on its held-out data",
                                   description="Print the held-out metrics of a bundle, and a table of the same"
                                   " rows scored before and after its calibration (and optionally plot).")
    evaluate.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder (manifest.json + weights)")
    _sampling_arguments(evaluate, "the bundle's")
    _trust_argument(evaluate)
    evaluate.add_argument("--set-level", type=float, default=0.9, metavar="LEVEL", help="classifiers: the level"
                          " of the prediction sets reported (default 0.9)")
    evaluate.add_argument("--set-method", choices=SET_METHODS, default="lac", help="classifiers: the"
                          " conformal set score (default lac)")
    evaluate.add_argument("--plot", metavar="DIR", help="write pictures into DIR: the reliability diagram and"
                          " (classifiers) the risk-coverage curve, before and after calibration, and the"
                          " predictive band of a 1-D model; a FILE.png gets the one main picture instead")
    evaluate.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")
    evaluate.set_defaults(handler=_evaluate)

    score = commands.add_parser(
        "score", help="score a table of rows with uncertainty, to Parquet or CSV",
        description="Predict every row of INPUT (CSV, Parquet, NPY, JSON Lines) with MC dropout and write the"
                    " statistics per row to OUTPUT (.parquet or .csv). Input is read in chunks; output appears only"
                    " when complete, and --resume continues an interrupted run.")
    score.add_argument("model", metavar="MODEL", help="bundle folder, or with --engine remote a model name")
    score.add_argument("input", type=Path, metavar="INPUT")
    score.add_argument("output", type=Path, metavar="OUTPUT")
    _sampling_arguments(score, "the model's", auto=True)
    score.add_argument("--interval", type=float, default=0.95, help="central interval level (default 0.95)")
    score.add_argument("--interval-method", choices=INTERVAL_METHODS, help="regression: the calibrated"
                       " conformal interval or the raw Gaussian one (default: conformal when the bundle is calibrated)")
    score.add_argument("--set-level", type=float, metavar="LEVEL", help="classifiers: add conformal prediction set"
                       " columns (in_set_<class>, set_size) at this level (a calibrated bundle)")
    score.add_argument("--set-method", choices=SET_METHODS, help="prediction set score (default lac)")
    score.add_argument("--max-risk", type=float, metavar="RISK", help="classifiers: add an 'abstain' column, true"
                       " where the accepted rows' error could exceed RISK (a calibrated bundle)")
    score.add_argument("--delta", type=float, help="with --max-risk: 1 - confidence of the guarantee (default: the"
                       " bundle's, 0.1)")
    score.add_argument("--abstain-score", choices=ABSTAIN_SCORES, help="with --max-risk: the uncertainty"
                       " thresholded (default one_minus_max_prob)")
    score.add_argument("--max-std", type=float, metavar="STD", help="regression: add an 'abstain' column, true"
                       " where any output's std exceeds STD")
    score.add_argument("--max-interval-width", type=float, metavar="WIDTH", help="regression: add an 'abstain'"
                       " column, true where an interval is wider than WIDTH")
    score.add_argument("--id-column", metavar="COL", help="column copied to the output as the row id (default:"
                       " the row number, as column 'row')")
    score.add_argument("--chunk-rows", type=int, default=10_000, help="rows per chunk (default 10000)")
    score.add_argument("--engine", choices=("local", "remote", "ray"), default="local")
    score.add_argument("--url", help="server for --engine remote, e.g. http://127.0.0.1:8000")
    score.add_argument("--api-key", help="API key for --engine remote (default: $MCD_API_KEY)")
    score.add_argument("--ray-address", help="join this Ray cluster (default: start a local Ray)")
    score.add_argument("--workers", type=int, default=2, help="Ray actors, one predictor each (default 2)")
    score.add_argument("--resume", action="store_true", help="continue an interrupted run from its last chunk")
    score.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists (never the input)")
    score.add_argument("--quiet", action="store_true", help="no progress output")
    _trust_argument(score)
    score.set_defaults(handler=_score)

    acquire = commands.add_parser(
        "acquire", help="pick the rows of a pool to label next (BALD, BatchBALD, stochastic batches)",
        description="Choose K rows of POOL_FILE (CSV, Parquet, NPY, JSON Lines, text; NPY (rows, *input shape) for"
                    " image models) for a classifier bundle to learn most from, and write them in pick order to"
                    " --out (.csv or .parquet: step, row, the id column, score). --resume continues an interrupted"
                    " run from its last recorded pick.")
    acquire.add_argument("model", metavar="BUNDLE", help="bundle folder, or with --engine remote a model name")
    acquire.add_argument("input", type=Path, metavar="POOL_FILE")
    acquire.add_argument("--k", type=int, required=True, help="rows to pick")
    acquire.add_argument("--method", default="batchbald", help="batchbald (default), bald, power, softmax,"
                         " softrank, entropy, margin or random")
    acquire.add_argument("--out", type=Path, required=True, metavar="PICKS", help="output file, .csv or .parquet")
    _sampling_arguments(acquire, "the bundle's")
    acquire.add_argument("--beta", type=float, default=1.0, help="power, softmax, softrank: the coldness beta"
                         " (1/temperature; default 1)")
    acquire.add_argument("--candidates", type=int, metavar="M", help="batchbald: search only the M rows of highest"
                         " BALD (default: every row)")
    acquire.add_argument("--configurations", type=int, metavar="M", default=1000, help="batchbald: label"
                         " configurations sampled once the exact joint no longer fits (default 1000)")
    acquire.add_argument("--memory-budget", default="256MB", help="working memory; BatchBALD's buffer of"
                         " candidates spills to disk past half of it (default 256MB)")
    acquire.add_argument("--id-column", metavar="COL", help="column copied to the output beside the row number")
    acquire.add_argument("--chunk-rows", type=int, default=10_000, help="rows read and predicted at once"
                         " (default 10000)")
    acquire.add_argument("--engine", choices=("local", "remote", "ray"), default="local")
    acquire.add_argument("--url", help="server for --engine remote, e.g. http://127.0.0.1:8000")
    acquire.add_argument("--api-key", help="API key for --engine remote (default: $MCD_API_KEY)")
    acquire.add_argument("--ray-address", help="join this Ray cluster (default: start a local Ray)")
    acquire.add_argument("--workers", type=int, default=2, help="Ray workers, one shard of the pool each"
                         " (default 2)")
    acquire.add_argument("--resume", action="store_true", help="continue an interrupted run")
    acquire.add_argument("--overwrite", action="store_true", help="replace --out if it exists (never the pool)")
    acquire.add_argument("--quiet", action="store_true", help="no progress output")
    _trust_argument(acquire)
    acquire.set_defaults(handler=_acquire)

    outcomes = commands.add_parser(
        "outcomes", help="report labels that arrived later for a scoring run's rows",
        description="Join SCORES (a `mcdropout score` output) with LABELS on a key column, and report each row's"
                    " label to the server that answered it (--server, --model: its live quality), or score them"
                    " here into a JSON report (--report; docs/live-quality.md).")
    outcomes.add_argument("scores", type=Path, metavar="SCORES_FILE")
    outcomes.add_argument("labels", type=Path, metavar="LABELS_FILE")
    outcomes.add_argument("--id-column", metavar="COL", help="key column of both files (default: SCORES' first"
                          " column, the scoring run's id column)")
    outcomes.add_argument("--target", required=True, metavar="COL", help="LABELS' column of outcomes")
    outcomes.add_argument("--server", metavar="URL", help="report to this server (the one that scored SCORES)")
    outcomes.add_argument("--model", help="with --server: the model's name")
    outcomes.add_argument("--api-key", help="API key for --server (default: $MCD_API_KEY)")
    outcomes.add_argument("--report", metavar="FILE", help="without --server: write the report here (default:"
                          " print it)")
    outcomes.add_argument("--interval", type=float, default=0.95, help="local report: the scoring run's --interval")
    outcomes.add_argument("--set-level", type=float, help="local report: the scoring run's --set-level")
    outcomes.add_argument("--max-risk", type=float, help="local report: the scoring run's --max-risk")
    outcomes.set_defaults(handler=_outcomes)

    bundle = commands.add_parser("bundle", help="make bundles from your own network and checkpoint",
                                 description="Bundles from your own code: see `mcdropout bundle create --help`.")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True, metavar="SUBCOMMAND")
    create = bundle_commands.add_parser(
        "create", help="turn an architecture and a checkpoint into a checked bundle",
        description="Build ARCHITECTURE (an import path, my_pkg.nets:Net, a registry name, or a class in --code)"
                    " with --config, load --weights into it (safetensors, or a .pt state dict read with"
                    " torch.load(weights_only=True): never pickled objects), check the bundle (it loads, answers a"
                    " probe, its dropout is sampled) and write it to --out.")
    create.add_argument("--pretrained", type=Path, metavar="FOLDER", help="instead of --architecture and --weights:"
                        " a Hugging Face save_pretrained folder (config.json, model.safetensors, tokenizer.json) of"
                        " a ...ForSequenceClassification model; the bundle takes text (needs mcdropout[hf])")
    create.add_argument("--max-length", type=int, metavar="N", help="with --pretrained: tokens per row, every row"
                        " padded to it (default: the model's positions, at most 128)")
    create.add_argument("--architecture", metavar="PATH", help="my_pkg.nets:Net, mlp, ... or"
                        " Net with --code")
    create.add_argument("--config", metavar="FILE.json", help="the architecture's keyword arguments (a JSON"
                        " object, a file or inline; default none)")
    create.add_argument("--code", type=Path, metavar="FILE.py", help="ship this file as the bundle's model.py"
                        " (served only with --trust-bundle-code)")
    create.add_argument("--weights", type=Path, metavar="CKPT", help=".safetensors or .pt/.pth")
    create.add_argument("--task", choices=TASKS)
    create.add_argument("--input-shape", nargs="+", metavar="N", help="one input's shape:"
                        " 8, or 1 28 28, or 1,28,28")
    names = create.add_mutually_exclusive_group()
    names.add_argument("--feature-names", nargs="+", metavar="NAME", help="the features of a flat input")
    names.add_argument("--classes", nargs="+", metavar="NAME", help="class names (classification; needed)")
    create.add_argument("--output-names", nargs="+", metavar="NAME", help="names of a regression's outputs")
    create.add_argument("--samples", type=int, default=100, help="default T of the bundle (default 100)")
    create.add_argument("--name", help="bundle name (default: --out's folder name)")
    create.add_argument("--description", default="", help="one line for the manifest")
    create.add_argument("--out", required=True, type=Path, metavar="FOLDER", help="bundle folder to write")
    create.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    create.set_defaults(handler=_bundle_create)

    uci = commands.add_parser(
        "uci", help="reproduce Gal & Ghahramani's UCI regression results",
        description="Run the UCI protocol (grid search over p and tau by validation log-likelihood, re-training,"
                    " T MC passes on the test rows) on data sets in the layout of ../shared/data/uci, and print"
                    " RMSE and test log-likelihood (mean ± standard error over splits) beside the published numbers.")
    uci.add_argument("datasets", nargs="+", type=Path, metavar="DATASET_DIR", help="data set folder(s)")
    uci.add_argument("--splits", type=int, help="use the first N splits (default: all, 20)")
    uci.add_argument("--epochs", type=int, help="training epochs (default: n_epochs.txt x 100 = 4000)")
    uci.add_argument("--samples", type=int, default=10_000, help="MC passes on the test rows (default 10000)")
    uci.add_argument("--validation-samples", type=int, default=1000,
                     help="MC passes for the grid search's validation log-likelihood (default 1000)")
    uci.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and masks (default 0)")
    uci.add_argument("--calibration-fraction", type=float, metavar="F",
                     help="also train each split's network on the first 1 - F of its training rows, calibrate it"
                          " on the last F (split conformal, |y - mean| / std) and report test coverage, width and"
                          " interval score of the conformal and Gaussian intervals at 90%% and 95%% (e.g. 0.2)")
    uci.add_argument("--hyperparameters", choices=("grid", "reuse"), default="grid",
                     help="with --calibration-fraction: choose p and tau by a grid search on the kept rows alone"
                          " (grid, default), or reuse the standard protocol's choice per split (reuse: faster, but"
                          " its validation rows are the calibration rows)")
    uci.add_argument("--json", metavar="FILE", help="also write every split's numbers as JSON")
    uci.add_argument("--quiet", action="store_true", help="no progress output")
    uci.set_defaults(handler=_uci)

    calibrate = commands.add_parser(
        "calibrate", help="fit a bundle's calibration on held-out rows",
        description="Fit conformal intervals and sigma-scaling (regression) or temperature, conformal sets and"
                    " abstention thresholds (classification) on rows the network never trained on, and write them"
                    " into BUNDLE's manifest (atomically).")
    calibrate.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle folder (manifest.json + weights)")
    calibrate.add_argument("--data", type=Path, metavar="FILE", help="CSV, Parquet, JSON Lines, NPY"
                           " or whitespace-separated text (no header: columns are named 0, 1, ...)")
    calibrate.add_argument("--split-rows", "--validation-rows", dest="split_rows", action="store_true",
                           help="instead of --data: the calibration rows of the split a bundle of `mcdropout train`"
                           " was trained on (its validation rows if it has none; --validation-rows is the old name)")
    calibrate.add_argument("--target", metavar="COLUMN", help="the column of true values (class index or name)")
    calibrate.add_argument("--labels", type=Path, metavar="FILE", help="true values in their own file instead"
                           " (NPY vector or one-column table), e.g. for image rows in NPY")
    calibrate.add_argument("--features", nargs="+", metavar="COLUMN", help="feature columns (default: the"
                           " bundle's feature names, or every other column by position)")
    calibrate.add_argument("--delta", type=float, default=0.1, help="1 - confidence of the abstention guarantee"
                           " (default 0.1)")
    _sampling_arguments(calibrate, "the bundle's")
    calibrate.add_argument("--quiet", action="store_true", help="no progress output")
    calibrate.set_defaults(handler=_calibrate)
    return parser


def _sampling_arguments(parser: argparse.ArgumentParser, default: str, auto: bool = False) -> None:
    if auto:
        parser.add_argument("--samples", type=_samples_or_auto, help="MC samples T, at least 2, or 'auto': sample"
                            f" each row until its MC error is below --tolerance (default: {default})")
        parser.add_argument("--tolerance", type=float, help="with --samples auto: the MC standard error to reach,"
                            " relative to the predictive std (regression) or on class probabilities (default 0.01)")
    else:
        parser.add_argument("--samples", type=int, help=f"MC samples T, at least 2 (default: {default})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the T sub-networks (default 0)")


def _samples_or_auto(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got {value!r}") from None


def _check_samples(args: argparse.Namespace) -> None:
    if args.samples is not None and args.samples != "auto" and args.samples < 2:
        raise UsageError(f"--samples must be >= 2 or 'auto', got {args.samples}")
    seed = getattr(args, "seed", 0)
    if seed is not None and not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be an integer from 0 to 2^63-1, got {seed}")
    tolerance = getattr(args, "tolerance", None)
    if tolerance is not None and (args.samples != "auto" or not 0 < tolerance < 1):
        raise UsageError(f"--tolerance takes a number in (0, 1) and goes with --samples auto, got {tolerance}")


def _serve(args: argparse.Namespace) -> int:
    import importlib.util

    try:
        import uvicorn
    except ImportError:
        raise UsageError("serving needs the serve extra: pip install 'mcdropout[serve]'") from None
    for flag, variable in (("models_dir", "MCD_MODELS_DIR"), ("host", "MCD_HOST"), ("port", "MCD_PORT"),
                           ("log_level", "MCD_LOG_LEVEL"), ("log_format", "MCD_LOG_FORMAT"),
                           ("workers", "MCD_WORKERS")):
        if getattr(args, flag) is not None:
            os.environ[variable] = str(getattr(args, flag))
    if args.trust_bundle_code:
        os.environ["MCD_TRUST_BUNDLE_CODE"] = "1"
    _allow_modules(args)
    if args.ray and args.workers not in (None, 1):
        raise UsageError("--workers goes without --ray: a Ray Serve deployment's processes are its replicas"
                         " (--replicas or --autoscale)")
    if args.ray:
        return _serve_ray(args)
    if args.address or args.autoscale or (args.replicas, args.replica_cpus, args.replica_gpus) != (1, 1.0, 0.0):
        raise UsageError("--replicas, --autoscale, --address, --replica-cpus and --replica-gpus go with --ray")
    os.environ.setdefault("MCD_GRPC_PORT", "8001")  # the gRPC Open Inference Protocol; 0: off
    host = os.environ.get("MCD_HOST", "127.0.0.1")
    port = int(os.environ.get("MCD_PORT", "8000"))
    level = os.environ.get("MCD_LOG_LEVEL", "info").lower()
    logging = log_config(level, os.environ.get("MCD_LOG_FORMAT", "text").lower())
    pin_mmap_threshold()
    # The app and the protocol are named by import string, so the library itself never imports the service.
    # Under httptools the service's protocol bounds each request head (size and time); under h11, uvicorn's
    # h11_max_incomplete_event_size bounds its size.
    http = "service.protocol:BoundedHttpTools" if importlib.util.find_spec("httptools") else "h11"
    workers = int(_number_setting("MCD_WORKERS", 1, int))
    with worker_environment(workers):  # N > 1: uvicorn's supervisor; what they share (mcdropout/_serve_workers.py)
        uvicorn.run("service.app:app", host=host, port=port, log_level=level, log_config=logging,
                    timeout_graceful_shutdown=30, http=http, workers=workers, timeout_worker_healthcheck=30,
                    h11_max_incomplete_event_size=_number_setting("MCD_MAX_HEADER_BYTES", 16_384, int),
                    timeout_keep_alive=_number_setting("MCD_KEEP_ALIVE_S", 5.0, float))
    return 0


def _ray_arguments(serve: argparse.ArgumentParser) -> None:
    ray = serve.add_argument_group("Ray Serve (docs/cluster.md)")
    ray.add_argument("--ray", action="store_true", help="serve as a Ray Serve deployment: replicas of the app behind"
                     " Serve's proxy on --host/--port; without --address on a Ray started (and stopped) here")
    scale = ray.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=1, metavar="N", help="replicas (default 1)")
    scale.add_argument("--autoscale", metavar="MIN:MAX", help="let Serve scale between MIN and MAX replicas")
    ray.add_argument("--address", help="a running Ray cluster (e.g. 10.0.0.5:6379); the app is removed on exit")
    ray.add_argument("--replica-cpus", type=float, default=1.0, metavar="N", help="CPUs per replica (default 1;"
                     " also its torch threads unless MCD_TORCH_THREADS is set)")
    ray.add_argument("--replica-gpus", type=float, default=0.0, metavar="N", help="GPUs per replica (default 0)")


def _serve_ray(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module("service.ray_serve")  # by name, as the app: the library never imports it
    if args.replicas < 1 or args.replica_cpus < 0 or args.replica_gpus < 0:
        raise UsageError("--replicas takes N >= 1, --replica-cpus and --replica-gpus numbers >= 0")
    options = module.RayOptions(
        host=os.environ.get("MCD_HOST", "127.0.0.1"), port=int(os.environ.get("MCD_PORT", "8000")),
        replicas=args.replicas, autoscale=module.parse_autoscale(args.autoscale) if args.autoscale else None,
        address=args.address, cpus=args.replica_cpus, gpus=args.replica_gpus)
    return module.run(options)


def _number_setting(variable: str, default: float, kind: type) -> float:
    """A numeric MCD_* setting that uvicorn takes, read before the app (whose Settings check the rest)."""
    text = os.environ.get(variable)
    try:
        value = default if text is None else kind(text)
    except ValueError:
        raise UsageError(f"{variable}: expected a positive number, got {text!r}") from None
    if value <= 0:
        raise UsageError(f"{variable}: expected a positive number, got {text!r}")
    return value


def _recipe_names() -> list[str]:
    # torch-free, so that `train --help` stays fast
    from mcdropout.training import RECIPE_NAMES

    return list(RECIPE_NAMES)


def _trust_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument("--trust-bundle-code", action="store_true", help="run a bundle's own model.py"
                         " (MCD_TRUST_BUNDLE_CODE; off by default)")
    _allow_argument(command)


def _allow_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument("--allow-architecture-module", action="append", default=[], metavar="MODULE",
                         help="a module (my_pkg.nets, or my_pkg and all under it) whose classes a bundle may name"
                         " as its architecture ('my_pkg.nets:Net') without --trust-bundle-code; repeatable"
                         " (added to MCD_ALLOWED_ARCHITECTURE_MODULES)")


def _allow_modules(args: argparse.Namespace) -> None:
    """--allow-architecture-module, added to MCD_ALLOWED_ARCHITECTURE_MODULES: the setting that load_bundle,
    the server and scoring workers (which inherit the environment) read."""
    import os

    if not getattr(args, "allow_architecture_module", None):
        return  # and torch stays unimported (the supervisor of `serve --workers N` never needs it)
    from mcdropout.bundle import ALLOWED_MODULES_ENV, allowed_modules_from_env, parse_modules

    given = parse_modules(getattr(args, "allow_architecture_module", None) or [])
    if given:
        os.environ[ALLOWED_MODULES_ENV] = ",".join(dict.fromkeys([*allowed_modules_from_env(), *given]))


def _trusts_bundle_code(args: argparse.Namespace) -> bool:
    """--trust-bundle-code, or MCD_TRUST_BUNDLE_CODE set to a true value, as for the server (and
    --allow-architecture-module put into MCD_ALLOWED_ARCHITECTURE_MODULES, which load_bundle reads)."""
    import os

    _allow_modules(args)
    return args.trust_bundle_code or os.environ.get("MCD_TRUST_BUNDLE_CODE", "").strip().lower() in (
        "1", "true", "yes", "on")


def _warn_baseline(command: str, metrics: dict) -> None:
    warning = (metrics.get("baseline") or {}).get("warning")
    if warning:
        print(f"mcdropout {command}: warning: {warning}", file=sys.stderr)


_TABLE_OPTIONS = {"--target": "target", "--features": "features", "--task": "task", "--dropout": "dropout",
                  "--dropout-grid": "dropout_grid", "--tau": "tau", "--tau-grid": "tau_grid", "--hidden": "hidden",
                  "--test-fraction": "test_fraction", "--name": "bundle_name"}


def _train(args: argparse.Namespace) -> int:
    from mcdropout.training.datasets import CALIBRATION_FRACTION

    fraction = CALIBRATION_FRACTION if args.calibration_fraction is None else args.calibration_fraction
    if args.data is None:
        if args.name is None:
            raise UsageError("name a shipped model (" + ", ".join(_recipe_names()) + ") or give --data and --target")
        given = [flag for flag, dest in _TABLE_OPTIONS.items() if getattr(args, dest) is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: for training on your own table (--data); the recipe of"
                             f" {args.name!r} fixes its data, split and network")
        from mcdropout.training import train

        path, metrics = train(args.name, seed=args.seed, out=args.out, epochs=args.epochs,
                              calibration_fraction=fraction, quiet=args.quiet, overwrite=args.overwrite)
    else:
        from mcdropout.training import train_from_table

        if args.name is not None:
            raise UsageError(f"give either a shipped model name ({args.name!r}) or --data, not both")
        if args.target is None:
            raise UsageError("--data needs --target COLUMN")
        if args.dropout is not None and args.dropout_grid:
            raise UsageError("give --dropout or --dropout-grid, not both")
        if args.tau is not None and args.tau_grid:
            raise UsageError("give --tau or --tau-grid, not both")
        dropouts = _numbers(args.dropout_grid, "--dropout-grid") if args.dropout_grid else [args.dropout or 0.05]
        taus = _numbers(args.tau_grid, "--tau-grid") if args.tau_grid else (
            None if args.tau is None else [args.tau])
        hidden = _numbers([args.hidden or "50"], "--hidden")
        if not all(h.is_integer() and h > 0 for h in hidden):
            raise UsageError(f"--hidden takes positive whole layer widths, got {args.hidden!r}")
        path, metrics = train_from_table(
            args.data, target=args.target, features=args.features, task=args.task or "regression", dropouts=dropouts,
            taus=taus, hidden=[int(h) for h in hidden], epochs=args.epochs,
            test_fraction=0.1 if args.test_fraction is None else args.test_fraction,
            calibration_fraction=fraction,
            name=args.bundle_name, out=args.out, seed=args.seed, quiet=args.quiet, overwrite=args.overwrite,
        )
    print(f"wrote {path}")
    _print_metrics(metrics)
    _warn_baseline("train", metrics)
    return 0


def _numbers(values: Sequence[str], flag: str) -> list[float]:
    """Numbers given as separate arguments, comma-separated, or both."""
    try:
        return [float(v) for value in values for v in value.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes numbers, got {' '.join(values)!r}") from None


def _evaluate(args: argparse.Namespace) -> int:
    from mcdropout.bundle import load_bundle
    from mcdropout.training import calibration_report, compare, evaluate, format_report, plot, plot_report, split_of

    _check_samples(args)
    if not 0 < args.set_level < 1:
        raise UsageError(f"--set-level must lie in (0, 1), got {args.set_level}")
    bundle = load_bundle(args.bundle, device="cpu", trust_code=_trusts_bundle_code(args))
    split = split_of(bundle)
    metrics = evaluate(bundle, split, samples=args.samples, seed=args.seed)
    compared = compare(bundle.manifest.task, split, metrics)
    if compared is not None:
        metrics["baseline"] = compared
    report = calibration_report(
        bundle, split.x_test, split.y_test, rows_source="test rows of the recorded split", samples=args.samples,
        seed=args.seed, set_level=args.set_level, set_method=args.set_method)
    _print_metrics(metrics)
    _warn_baseline("evaluate", metrics)
    print()
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps({**metrics, "calibration_report": report.to_dict()}, indent=2) + "\n")
    if args.plot:
        try:
            if args.plot.lower().endswith(".png"):
                plot(bundle, args.plot, samples=args.samples, seed=args.seed)
                written = [args.plot]
            else:
                written = plot_report(report, Path(args.plot), bundle.name)
                if bundle.manifest.task == "regression" and split.x_test.ndim == 2 and split.x_test.shape[1] == 1:
                    band = Path(args.plot) / f"{bundle.name}-band.png"
                    plot(bundle, str(band), samples=args.samples, seed=args.seed)
                    written.append(band)
        except ImportError as error:
            raise UsageError(f"--plot needs matplotlib ({error}); pip install 'mcdropout[train]'") from None
        print("plots written: " + ", ".join(map(str, written)))
    return 0


def _score(args: argparse.Namespace) -> int:
    from mcdropout.scoring import Job, score

    pin_mmap_threshold()
    _check_samples(args)
    if not 0 < args.interval < 1:
        raise UsageError(f"--interval must lie in (0, 1), got {args.interval}")
    if args.engine != "remote" and args.url:
        raise UsageError("--url applies to --engine remote")
    job = Job(model=args.model, input=str(args.input), output=str(args.output), engine=args.engine,
              samples=args.samples, seed=args.seed, interval=args.interval, id_column=args.id_column,
              chunk_rows=args.chunk_rows, url=args.url, interval_method=args.interval_method,
              set_level=args.set_level, set_method=args.set_method, max_risk=args.max_risk, delta=args.delta,
              abstain_score=args.abstain_score, max_std=args.max_std, max_interval_width=args.max_interval_width,
              tolerance=args.tolerance)
    summary = score(job, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet, api_key=args.api_key or os.environ.get("MCD_API_KEY"),
                    ray_address=args.ray_address, workers=args.workers, trust_code=_trusts_bundle_code(args))
    resumed = f", resumed after {summary.resumed_from}" if summary.resumed_from else ""
    print(f"wrote {summary.output}: {summary.rows} rows in {summary.seconds:.1f} s"
          f" ({summary.rows_per_second:.0f} rows/s{resumed})")
    return 0


def _acquire(args: argparse.Namespace) -> int:
    from mcdropout.acquisition import AcquireJob, acquire_file

    pin_mmap_threshold()
    _check_samples(args)
    if args.engine != "remote" and args.url:
        raise UsageError("--url applies to --engine remote")
    job = AcquireJob(model=args.model, input=str(args.input), output=str(args.out), k=args.k, method=args.method,
                     engine=args.engine, samples=args.samples, seed=args.seed, id_column=args.id_column,
                     chunk_rows=args.chunk_rows, beta=args.beta, candidates=args.candidates,
                     configurations=args.configurations, memory_budget=args.memory_budget, url=args.url)
    summary = acquire_file(job, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet,
                           api_key=args.api_key or os.environ.get("MCD_API_KEY"), ray_address=args.ray_address,
                           workers=args.workers, trust_code=_trusts_bundle_code(args))
    resumed = f", resumed after {summary.resumed_from}" if summary.resumed_from else ""
    print(f"wrote {summary.output}: {summary.picks} picks by {args.method} in {summary.seconds:.1f} s{resumed}")
    return 0


def _outcomes(args: argparse.Namespace) -> int:
    from mcdropout import _outcomes as outcomes

    if (args.server is None) != (args.model is None):
        raise UsageError("--server and --model go together")
    found = outcomes.joined(args.scores, args.labels, args.id_column, args.target)
    if args.server:
        sent = outcomes.report_to_server(found, args.server, args.model, args.api_key or os.environ.get("MCD_API_KEY"))
        print(f"reported {found.num_rows} outcome(s) to {args.model}: {sent['accepted']} accepted,"
              f" {sent['duplicates']} already reported")
        return 0
    report = outcomes.local_report(found, args.interval, args.set_level, args.max_risk)
    text = outcomes.write_report(report, args.report)
    print(f"wrote {args.report}: {found.num_rows} row(s)" if args.report else text)
    return 0


def _bundle_create(args: argparse.Namespace) -> int:
    from mcdropout.bundle import create, read_config

    if args.pretrained is not None:
        return _bundle_create_pretrained(args)
    missing = [flag for flag, value in (("--architecture", args.architecture), ("--weights", args.weights),
                                        ("--task", args.task), ("--input-shape", args.input_shape)) if not value]
    if missing:
        raise UsageError(f"bundle create needs {', '.join(missing)} (or --pretrained FOLDER)")
    shape = _numbers(args.input_shape, "--input-shape")
    if not all(s.is_integer() and s > 0 for s in shape):
        raise UsageError(f"--input-shape takes positive whole sizes, got {' '.join(args.input_shape)!r}")
    made = create(architecture=args.architecture, config=read_config(args.config), code=args.code,
                  weights=args.weights, task=args.task, input_shape=[int(s) for s in shape], out=args.out,
                  name=args.name, feature_names=args.feature_names, classes=args.classes,
                  output_names=args.output_names, samples=args.samples, description=args.description,
                  overwrite=args.overwrite)
    for note in made.notes:
        print(f"note: {note}")
    print(f"wrote {made.path}: {made.bundle.manifest.architecture}, {made.parameters:,} parameters;"
          " it loads, answers a probe and its dropout is sampled")
    print(f"sample prediction for {made.sample}")
    return 0


def _bundle_create_pretrained(args: argparse.Namespace) -> int:
    from mcdropout.bundle import create_pretrained

    made = create_pretrained(args.pretrained, args.out, name=args.name, max_length=args.max_length,
                             samples=args.samples, description=args.description, overwrite=args.overwrite)
    for note in made.notes:
        print(f"note: {note}")
    print(f"wrote {made.path}: {made.bundle.manifest.config['model_class']}, {made.parameters:,} parameters,"
          " text in; it loads, answers a probe and its dropout is sampled")
    print(f"sample prediction for {made.sample}")
    return 0


def _uci(args: argparse.Namespace) -> int:
    from mcdropout.training import format_uci_calibrated_table, format_uci_table, run_uci

    results = []
    for folder in args.datasets:
        result = run_uci(folder, splits=args.splits, epochs=args.epochs, samples=args.samples,
                         validation_samples=args.validation_samples, seed=args.seed,
                         calibration_fraction=args.calibration_fraction, hyperparameters=args.hyperparameters,
                         quiet=args.quiet)
        results.append(result)
        print(format_uci_table([result]).splitlines()[-1] if len(results) > 1 else format_uci_table([result]),
              flush=True)
    if len(results) > 1:
        print()
        print(format_uci_table(results))
    if args.calibration_fraction is not None:
        print(f"\ncalibrated: trained on the first {1 - args.calibration_fraction:g} of each training split"
              f" (p and tau: {args.hyperparameters}), calibrated on the rest; test rows, mean over splits")
        print(format_uci_calibrated_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from mcdropout import _calibrate as calibration

    _check_samples(args)
    if not 0 < args.delta < 1:
        raise UsageError(f"--delta must lie in (0, 1), got {args.delta}")
    if (args.data is None) == (not args.split_rows):
        raise UsageError("give --data FILE (with --target or --labels), or --split-rows")
    if args.split_rows:
        if args.target or args.labels or args.features:
            raise UsageError("--split-rows takes the split's own targets: no --target, --labels or --features")
        fitted = calibration.calibrate_on_split(args.bundle, samples=args.samples, seed=args.seed,
                                                delta=args.delta, quiet=args.quiet)
    else:
        fitted = calibration.calibrate(args.bundle, args.data, args.target, features=args.features,
                                       labels=args.labels, samples=args.samples, seed=args.seed, delta=args.delta,
                                       quiet=args.quiet)
    print(calibration.describe(fitted))
    return 0


def _print_metrics(metrics: dict, indent: str = "") -> None:
    for key, value in metrics.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_metrics(value, indent + "  ")
        elif isinstance(value, float):
            print(f"{indent}{key}: {_number(value)}")
        else:
            print(f"{indent}{key}: {value}")


def _number(value: float) -> str:
    """Four significant digits, but a large value (in the target's units) with one decimal and no exponent: an
    RMSE in dollars prints 68930.3, not 6.893e+04."""
    return f"{value:.1f}" if 1e4 <= abs(value) < 1e15 else f"{value:.4g}"


if __name__ == "__main__":
    sys.exit(main())
