"""Command line: dmrnet train | evaluate | predict | datasets | bench."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from typing import Any

from dmrnet.errors import DataError, DmrnetError, RunInterrupted


def _console() -> Any:
    from rich.console import Console

    return Console()


def cmd_train(args: argparse.Namespace) -> int:
    from dmrnet.config import load_config
    from dmrnet.runs import resume_config, train

    overrides = list(args.set)
    if args.devices is not None:
        overrides.append(f"train.devices={args.devices}")
    if args.strategy is not None:
        overrides.append(f"train.strategy={args.strategy}")
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
    report = train(config, run_dir, data_root=args.data_root, resume=bool(args.resume))
    if report is not None:
        _console().print(report.rich_table())
        print(f"results written to {run_dir}/results.json (.csv, .md, .png)")
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
    _console().print(report.rich_table())
    print(f"results written to {out_dir}/results.json (.csv, .md, .png)")
    return 0


def _fraction(value: float | None, option: str) -> float | None:
    if value is not None and not 0.0 < value <= 1.0:
        raise DmrnetError(f"{option}: expected a fraction in (0, 1], got {value}")
    return value


def read_input_file(path: Path) -> dict[str, Any]:
    """Modalities for `predict` from .npz or .mat (one key per modality, samples as rows)."""
    import numpy as np

    if not path.is_file():
        raise DataError(f"{path}: no such input file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {k: archive[k] for k in archive.files}
        if suffix == ".mat":
            import scipy.io

            data = scipy.io.loadmat(path)
            return {k: v for k, v in data.items() if not k.startswith("__")}
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read input file: {error}") from None
    raise DataError(f"{path}: unsupported input format {suffix!r}; use .npz or .mat")


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from dmrnet.api import load

    predictor = load(args.run_dir)
    arrays = read_input_file(Path(args.input))
    names = predictor.modalities.names
    ignored = sorted(set(arrays) - set(names))
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items() if k in names}
    if not arrays:
        raise DataError(
            f"{args.input}: none of its keys {ignored} is a modality of this model "
            f"({'+'.join(names)})"
        )
    prediction = predictor.predict(
        arrays,
        min_confidence=args.min_confidence,
        target_accuracy=args.target_accuracy,
    )
    if args.target_accuracy is not None:
        _print_abstention_cost(predictor, prediction, args.target_accuracy)
    # Tasks with outputs of their own (segmentation: colour masks) write them into a folder.
    folder = Path(args.out or "predictions")
    files = predictor.method.task.write_predictions(prediction, folder, predictor.spec)
    if files is not None:
        print(f"{prediction.labels.shape[0]} predictions written to {folder}/ ({len(files)} files)")
        if ignored:
            print(f"ignored keys that are not modalities: {', '.join(ignored)}", file=sys.stderr)
        return 0
    class_names = predictor.spec.class_names
    out = Path(args.out) if args.out else None
    handle = out.open("w", newline="") if out else sys.stdout
    try:
        writer = csv.writer(handle)
        writer.writerow(
            ["index", "prediction", "confidence", "abstained", "embedding_variance", "modalities"]
        )
        variance = prediction.embedding_variance
        for i in range(prediction.labels.shape[0]):
            label = int(prediction.labels[i])
            writer.writerow(
                [
                    i,
                    class_names[label] if class_names else label,
                    f"{float(prediction.confidence[i]):.4f}",
                    int(prediction.abstained[i]),
                    "" if variance is None else f"{float(variance[i]):.5f}",
                    predictor.modalities.format(
                        predictor.modalities.combination_of(prediction.present[i])
                    ),
                ]
            )
    finally:
        if out:
            handle.close()
    if out:
        print(f"{prediction.labels.shape[0]} predictions written to {out}")
    if ignored:
        print(f"ignored keys that are not modalities: {', '.join(ignored)}", file=sys.stderr)
    return 0


def _print_abstention_cost(predictor: Any, prediction: Any, accuracy: float) -> None:
    """Per combination in the input: the confidence threshold that reached `accuracy` on the
    validation split and the share of validation samples it kept (the coverage it costs)."""
    modalities = predictor.modalities
    combinations = {modalities.combination_of(row) for row in prediction.present}
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
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmrnet",
        description="Robust multimodal learning under missing modalities (DMRNet, ECCV 2024).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
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
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser(
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

    predict = commands.add_parser(
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

    datasets = commands.add_parser(
        "datasets", help="list registered datasets and whether their files are present"
    )
    datasets.add_argument("--data-root", help="data mirror folder (default: $DMRNET_DATA)")
    datasets.set_defaults(func=cmd_datasets)

    bench = commands.add_parser(
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
        "--device", default="cpu", help="device of the speed and throughput measurements"
    )
    bench.add_argument("--report", help="also write the Markdown report here, e.g. BENCHMARKS.md")
    bench.add_argument("--figures", help="figures folder of --report (default: beside it)")
    bench.add_argument("--data-root", help="data mirror folder (default: $DMRNET_DATA)")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return int(args.func(args))
    except RunInterrupted as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except DmrnetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Before a run directory exists (RunInterrupted carries the resume command after).
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
