"""Command line: dmrnet train | evaluate | predict | datasets | configs | bench."""

from __future__ import annotations

import argparse
import csv
import functools
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from dmrnet import __version__
from dmrnet.errors import DataError, DmrnetError, RunInterrupted


def _console() -> Any:
    from rich.console import Console

    return Console()


TRAINER_FLAGS = {  # train's argparse dest -> key under `train.`
    "devices": "devices",
    "strategy": "strategy",
    "precision": "precision",
    "num_nodes": "num_nodes",
}


def cmd_train(args: argparse.Namespace) -> int:
    from dmrnet.config import load_config
    from dmrnet.runs import resume_config, train

    overrides = list(args.set)
    # The Trainer flags are shorthands for their config keys (and win over --set).
    for flag, key in TRAINER_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"train.{key}={value}")
    if args.quiet:
        overrides.append("train.progress_bar=false")
    if args.resume:
        if args.config or args.run_dir:
            raise DmrnetError(
                "--resume continues a run with its stored config: give RUN_DIR only (and "
                "--set for the keys a resume may change, e.g. train.epochs to extend it)"
            )
        run_dir = Path(args.resume)
        config = resume_config(run_dir, overrides)
    else:
        if not args.config:
            raise DmrnetError("give a CONFIG file (or --resume RUN_DIR)")
        config = load_config(args.config, overrides)
        run_dir = Path(args.run_dir or Path("runs") / (config.name or Path(args.config).stem))
    untangle_lightning_logging(args.quiet)
    report = train(config, run_dir, data_root=args.data_root, resume=bool(args.resume))
    if report is not None:
        if not args.quiet:
            _console().print(report.rich_table())
        print(f"results written to {run_dir}/results.json (.csv, .md, .png)")
        print(f"model card written to {run_dir}/MODEL_CARD.md")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dmrnet.calibration import parse_availability
    from dmrnet.runs import evaluate_run

    combinations = (
        [c for part in args.combinations for c in part.split(",") if c.strip()]
        if args.combinations
        else None
    )
    report, out_dir = evaluate_run(
        args.path,
        split=args.split,
        combinations=combinations,
        data_root=args.data_root,
        out_dir=args.out,
        availability=parse_availability(args.availability, "--availability")
        if args.availability
        else None,
        target_accuracy=_fraction(args.target_accuracy, "--target-accuracy"),
    )
    if not args.quiet:
        _console().print(report.rich_table())
    print(f"results written to {out_dir}/results.json (.csv, .md, .png)")
    return 0


def _fraction(value: float | None, option: str) -> float | None:
    if value is not None and not 0.0 < value <= 1.0:
        raise DmrnetError(f"{option}: expected a fraction in (0, 1], got {value}")
    return value


def cmd_predict(args: argparse.Namespace) -> int:
    from dmrnet.api import Prediction, load
    from dmrnet.inputs import read_inputs
    from dmrnet.tasks import Task

    predictor = load(args.run_dir, device=args.device)
    batch_size = args.batch_size or predictor.batch_size
    source = read_inputs(Path(args.input), predictor.spec.input_shapes, batch_size)
    # The API checks both abstention options (a one-line DataError).
    predictions = predictor.predict_batches(
        source.batches,
        batch_size,
        min_confidence=args.min_confidence,
        target_accuracy=args.target_accuracy,
    )
    seen: set[tuple[bool, ...]] = set()  # presence rows, only for the abstention cost
    if args.target_accuracy is not None:
        predictions = seen_combinations(predictions, seen)
    if source.ignored:
        print(f"ignored keys that are not modalities: {', '.join(source.ignored)}", file=sys.stderr)
    task = predictor.method.task
    if type(task).write_predictions is not Task.write_predictions:
        # Tasks with outputs of their own (segmentation: colour masks) write them into a folder.
        folder = Path(args.out or "predictions")
        prediction = Prediction.concatenate(list(predictions))
        files = predictor.method.task.write_predictions(prediction, folder, predictor.spec)
        count = prediction.labels.shape[0]
        print(f"{count} predictions written to {folder}/ ({len(files or [])} files)")
        if args.target_accuracy is not None:
            _print_abstention_cost(predictor, seen, args.target_accuracy)
        return 0
    out = Path(args.out) if args.out else None
    if out is None:
        write_prediction_rows(predictor, predictions, sys.stdout, args.probabilities)
        if args.target_accuracy is not None:
            _print_abstention_cost(predictor, seen, args.target_accuracy)
        return 0
    if not out.parent.is_dir():
        raise DataError(f"--out {out}: folder {out.parent} does not exist")
    # Into a temporary file beside the output, renamed when every row is written: a bad row
    # in the middle of the input leaves no half-written predictions.
    partial = out.with_name(f".{out.name}.partial")
    try:
        with partial.open("w", newline="") as handle:
            count = write_prediction_rows(predictor, predictions, handle, args.probabilities)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    print(f"{count} predictions written to {out}")
    if args.target_accuracy is not None:
        _print_abstention_cost(predictor, seen, args.target_accuracy)
    return 0


def seen_combinations(predictions: Iterable[Any], seen: set[tuple[bool, ...]]) -> Iterator[Any]:
    """`predictions` as they stream, recording into `seen` the presence rows they used."""
    for prediction in predictions:
        seen.update(tuple(row) for row in prediction.present.tolist())
        yield prediction


def write_prediction_rows(
    predictor: Any, predictions: Iterable[Any], handle: IO[str], probabilities: bool
) -> int:
    """The per-sample CSV of `predict`, written batch by batch; returns the number of rows."""
    from dmrnet.api import class_label

    modalities = predictor.modalities
    classes = [class_label(predictor.class_names, k) for k in range(predictor.spec.num_classes)]
    writer = csv.writer(handle)
    header = ["index", "prediction", "confidence", "abstained", "embedding_variance", "modalities"]
    writer.writerow(header + ([f"p({name})" for name in classes] if probabilities else []))
    index = 0
    for prediction in predictions:
        variance = prediction.embedding_variance
        for row in range(prediction.labels.shape[0]):
            cells = [
                index,
                classes[int(prediction.labels[row])],
                f"{float(prediction.confidence[row]):.4f}",
                int(prediction.abstained[row]),
                "" if variance is None else f"{float(variance[row]):.5f}",
                modalities.format(modalities.combination_of(prediction.present[row])),
            ]
            if probabilities:
                cells += [f"{float(p):.4f}" for p in prediction.probabilities[row]]
            writer.writerow(cells)
            index += 1
        handle.flush()  # a reader (e.g. `| head`) sees each batch as it is predicted
    return index


def cmd_export(args: argparse.Namespace) -> int:
    from dmrnet.export import export

    result = export(args.run, args.format, args.out)
    print(
        f"{args.format} model written to {result.path} (inputs: {', '.join(result.inputs)}; "
        f"max |difference| to predict over {result.combinations} combinations: "
        f"{result.max_difference:.1e})"
    )
    return 0


def _print_abstention_cost(predictor: Any, rows: set[Any], accuracy: float) -> None:
    """Per combination in the input (`rows`: the presence rows seen): the confidence threshold
    that reached `accuracy` on the validation split and the share of validation samples it kept
    (the coverage it costs)."""
    import torch

    modalities = predictor.modalities
    combinations = {modalities.combination_of(torch.tensor(row)) for row in rows}
    for combination in sorted(combinations, key=lambda c: (len(c), c)):
        threshold, coverage = predictor.calibration.threshold_for(combination, accuracy)
        where = f"{modalities.format(combination)}: target accuracy {100 * accuracy:g}%"
        if coverage == 0.0:
            print(f"{where} not reached on validation; abstains on every sample", file=sys.stderr)
        else:
            print(
                f"{where}: confidence >= {threshold:.4f} kept {100 * coverage:.1f}% of validation",
                file=sys.stderr,
            )


def cmd_datasets(args: argparse.Namespace) -> int:
    from rich.table import Table

    from dmrnet.data import DATASETS, DataStore

    store = DataStore(args.data_root)
    table = Table(title="dmrnet datasets")
    table.add_column("name")
    table.add_column("description")
    table.add_column("files")
    for name in DATASETS.names():
        entry = DATASETS.get(name)
        if entry.files:
            found = [store.locate(f) for f in entry.files]
            status = f"{sum(p is not None for p in found)}/{len(found)} present"
        else:
            status = "user-provided"
        table.add_row(name, entry.description, status)
    _console().print(table)
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    from rich.table import Table

    from dmrnet.bench.suite import SUITES_DIR
    from dmrnet.config import packaged_configs, read_yaml, resolve_config

    table = Table(title="packaged configs (dmrnet train NAME)")
    for column in ("name", "dataset", "method"):
        table.add_column(column)
    for name in packaged_configs():
        raw = read_yaml(resolve_config(name))
        table.add_row(name, str(raw["data"]["name"]), str(raw["model"]["method"]))
    _console().print(table)
    suites = Table(title="packaged benchmark suites (dmrnet bench NAME)")
    suites.add_column("name")
    suites.add_column("description")
    for path in sorted(SUITES_DIR.glob("*.yaml")):
        description = str(read_yaml(path).get("description", "")).strip()
        suites.add_row(path.stem, description.split(". ")[0])
    _console().print(suites)
    return 0


def _csv_list(values: list[str] | None) -> list[str] | None:
    return [v.strip() for part in values for v in part.split(",") if v.strip()] if values else None


def cmd_bench(args: argparse.Namespace) -> int:
    from dmrnet.bench import find_suite, load_suite, run_bench, run_throughput, suite_kind

    path = find_suite(args.suite)
    if suite_kind(path) == "throughput":
        if args.seeds or args.datasets or args.report:
            raise DmrnetError(
                f"{path}: a throughput suite has no seeds, datasets or report; use --models, "
                "--set, --device and --out"
            )
        run_throughput(
            path,
            Path(args.out or Path("runs") / "bench" / path.stem),
            device=args.device,
            overrides=list(args.set),
            models=_csv_list(args.methods),
            command="dmrnet " + " ".join(sys.argv[1:]),
        )
        return 0
    seeds = _csv_list(args.seeds)
    try:
        seed_numbers = [int(s) for s in seeds] if seeds else None
    except ValueError:
        raise DmrnetError(f"--seeds: expected integers, got {', '.join(seeds or [])}") from None
    loaded = load_suite(
        args.suite,
        overrides=list(args.set),
        seeds=seed_numbers,
        methods=_csv_list(args.methods),
        datasets=_csv_list(args.datasets),
    )
    if args.no_speed:
        loaded.suite.speed.enabled = False
    untangle_lightning_logging(args.quiet)
    if not args.verbose:
        # Runs log to their train.log; the console shows the bench's progress.
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.WARNING)
    out = Path(args.out or Path("runs") / "bench" / loaded.suite.name)
    run_bench(
        loaded,
        out,
        data_root=args.data_root,
        device=args.device,
        report=args.report,
        figures=args.figures,
        report_only=args.report_only,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmrnet",
        description="Robust multimodal learning under missing modalities (DMRNet, ECCV 2024).",
    )
    add_console_flags(parser, argparse.SUPPRESS)  # also before the command: dmrnet -q train ...
    parser.add_argument("--version", action="version", version=f"dmrnet {__version__}")
    # Every command takes --import (plugins register encoders, methods, datasets; see plugins.py).
    common = argparse.ArgumentParser(add_help=False)
    add_console_flags(common, argparse.SUPPRESS)
    common.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a plugin module first, e.g. one that registers an encoder (repeatable)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_command = functools.partial(commands.add_parser, parents=[common])

    train = add_command(
        "train",
        help="train a config, then evaluate every modality combination on the test split",
        description="Train CONFIG into a run directory (config, checkpoints, logs), then "
        "evaluate every modality combination on the test split.",
    )
    train.add_argument(
        "config",
        nargs="?",
        help="YAML config file, or a packaged config name, e.g. handwritten/dmrnet",
    )
    train.add_argument("--run-dir", help="output directory (default: runs/<config name>)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.kl_weight=0.01 (repeatable)",
    )
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run from its last checkpoint, exactly; with --set train.epochs=N, "
        "extend it (docs/runs.md)",
    )
    train.add_argument("--data-root", help="data mirror folder (default: $DMRNET_DATA)")
    train.add_argument("--devices", help="Lightning devices, e.g. 2 (same as --set train.devices)")
    train.add_argument("--strategy", help="Lightning strategy, e.g. ddp")
    train.add_argument("--precision", help="Lightning precision, e.g. bf16-mixed")
    train.add_argument("--num-nodes", help="machines of a multi-node run (docs/configuration.md)")
    train.set_defaults(func=cmd_train)

    evaluate = add_command(
        "evaluate",
        help="evaluate a trained run on every (or given) modality combination",
        description="Evaluate RUN_DIR_OR_CHECKPOINT; writes results.json/.csv/.md/.png into "
        "its own folder (never over the run's results).",
    )
    evaluate.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    evaluate.add_argument(
        "--combinations",
        nargs="+",
        metavar="COMB",
        help="combinations such as pix+fou (default: all 2^M - 1)",
    )
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--data-root", help="data mirror folder (default: $DMRNET_DATA)")
    evaluate.add_argument(
        "--out", help="output folder (default: RUN_DIR/evaluations/<split>-<checkpoint>[-<combs>])"
    )
    evaluate.add_argument(
        "--availability",
        metavar="MOD=P,...",
        help="per-modality availability probabilities of the expected_availability summary, "
        "e.g. pix=0.9,fou=0.5 (unnamed modalities: eval.availability_p); as eval.availability",
    )
    evaluate.add_argument(
        "--target-accuracy",
        type=float,
        metavar="A",
        help="report the coverage that reaching accuracy A costs per combination (thresholds "
        "picked on validation; default: eval.target_accuracy)",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    predict = add_command(
        "predict",
        help="predict from an input file holding any subset of modalities",
        description="INPUT_FILE is .npz or .mat with one array per modality (samples as rows); "
        "absent keys are missing modalities, an all-NaN row marks one sample's modality missing.",
    )
    predict.add_argument("run_dir", metavar="RUN_DIR")
    predict.add_argument("input", metavar="INPUT_FILE")
    predict.add_argument(
        "--out",
        help="CSV output file (default: standard output); segmentation: a folder for the colour "
        "masks, labels.npz and classes.csv (default: predictions/)",
    )
    predict.add_argument(
        "--probabilities",
        action="store_true",
        help="add every class's probability to the CSV: one p(<class>) column per class",
    )
    predict.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    predict.add_argument(
        "--batch-size",
        type=positive_int,
        help="rows per forward pass; memory grows with it (default: the run's eval.batch_size)",
    )
    abstain = predict.add_mutually_exclusive_group()
    abstain.add_argument(
        "--min-confidence",
        type=float,
        metavar="X",
        help="abstain (column abstained = 1) where the calibrated confidence is below X",
    )
    abstain.add_argument(
        "--target-accuracy",
        type=float,
        metavar="A",
        help="abstain below the per-combination confidence threshold that reached accuracy A "
        "on the validation split; prints the validation coverage it costs",
    )
    predict.set_defaults(func=cmd_predict)

    export = add_command(
        "export",
        help="export a run as ONNX, TorchScript or a torch.export program with a presence mask",
        description="Write RUN as a graph whose inputs are every modality plus a presence mask "
        "`present` (B, M) and whose output is the class probabilities; the file is loaded back "
        "and checked against predict on every modality combination. See docs/deploy.md.",
    )
    export.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    export.add_argument(
        "--format", default="onnx", choices=["onnx", "torchscript", "exported-program"]
    )
    export.add_argument(
        "--out", help="output file (default: RUN/export/model.onnx, .torchscript.pt or .pt2)"
    )
    export.set_defaults(func=cmd_export)

    datasets = add_command(
        "datasets", help="list registered datasets and whether their files are present"
    )
    datasets.add_argument("--data-root", help="data mirror folder (default: $DMRNET_DATA)")
    datasets.set_defaults(func=cmd_datasets)

    configs = add_command(
        "configs", help="list the configs and benchmark suites shipped with dmrnet"
    )
    configs.set_defaults(func=cmd_configs)

    bench = add_command(
        "bench",
        help="run a benchmark suite: methods x datasets x seeds, with a report",
        description="Train every method of SUITE on every dataset and seed (finished runs are "
        "skipped, interrupted ones resumed), measure speed and memory, and write OUT/report.md "
        "and OUT/results.json.",
    )
    bench.add_argument(
        "suite",
        metavar="SUITE",
        help="suite file, or a packaged suite name (quick, standard, throughput, ...)",
    )
    bench.add_argument("--out", help="output folder (default: runs/bench/<suite name>)")
    bench.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value in every run, e.g. --set train.epochs=1 (repeatable)",
    )
    bench.add_argument("--seeds", action="append", help="only these seeds, e.g. 0,1")
    bench.add_argument(
        "--methods",
        "--models",
        action="append",
        help="only these methods (suite labels; a throughput suite's models)",
    )
    bench.add_argument("--datasets", action="append", help="only these datasets (suite labels)")
    bench.add_argument("--no-speed", action="store_true", help="skip speed and memory")
    bench.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: report the finished runs (missing seeds are listed in the notes)",
    )
    bench.add_argument(
        "--device", default="cpu", help="device of the speed and throughput measurements"
    )
    bench.add_argument("--report", help="also write the Markdown report here, e.g. BENCHMARKS.md")
    bench.add_argument("--figures", help="figures folder of --report (default: beside it)")
    bench.add_argument("--data-root", help="data mirror folder (default: $DMRNET_DATA)")
    bench.set_defaults(func=cmd_bench)
    return parser


def add_console_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="only warnings and errors"
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="debug logs too",
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# Known noise of the pinned dependencies, silenced for the console (files still log everything).
KNOWN_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)
ADVERTISEMENTS = ("litlogger",)


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one console handler of dmrnet's and Lightning's messages (to standard error)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.addFilter(lambda record: not any(ad in record.getMessage() for ad in ADVERTISEMENTS))


def configure_console(quiet: bool, verbose: bool) -> None:
    """Install one ConsoleHandler on the root logger (replacing a previous main()'s), at the
    chosen level, and silence the known warnings. Other handlers (a run's train.log, pytest's)
    stay."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, ConsoleHandler)]:
        root.removeHandler(handler)
    root.addHandler(ConsoleHandler())
    root.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    for pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


def untangle_lightning_logging(quiet: bool) -> None:
    """Importing `lightning` adds its own console handler ("INFO: ...") to the `lightning` logger,
    which also propagates to the root handler: every line printed twice. Drop that handler after
    the import. Lightning's INFO lines (GPU available..., DDP start-up) then print once, and not
    at all with --quiet."""
    import lightning  # noqa: F401

    logger = logging.getLogger("lightning")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.quiet = bool(getattr(args, "quiet", False))
    args.verbose = bool(getattr(args, "verbose", False))
    if args.quiet and args.verbose:
        parser.error("--quiet and --verbose exclude each other")
    configure_console(args.quiet, args.verbose)
    try:
        if args.imports:
            from dmrnet.plugins import import_plugins

            import_plugins(args.imports)
        return int(args.func(args))
    except RunInterrupted as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except DmrnetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`dmrnet predict ... | head`): stop quietly, as `cat` would.
        # Python would report the failed flush of stdout at exit; point it at devnull instead.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the status of a program stopped by a closed pipe
    except KeyboardInterrupt:
        # Before a run directory exists (RunInterrupted carries the resume command after).
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
