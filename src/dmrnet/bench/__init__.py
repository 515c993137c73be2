"""`dmrnet bench`: methods x datasets x seeds from a suite file, with every-combination results,
paired comparisons against the reference method (dmrnet), speed and memory, extra evaluations and
analyses (dmrnet.bench.analysis), and a report; throughput suites (`kind: throughput`) time the
engine's training step and the evaluation of paper-size models (dmrnet.bench.throughput).

    loaded = load_suite("standard")            # src/dmrnet/bench/suites/standard.yaml
    results = run_bench(loaded, "runs/bench/standard")
"""

from dmrnet.bench.analysis import (
    ANALYSES,
    evaluation_shift,
    metric_tables,
    paired_rungs,
    variance_against_error,
)
from dmrnet.bench.runner import collect, job_state, run_bench
from dmrnet.bench.suite import Job, LoadedSuite, Suite, find_suite, load_suite, suite_kind
from dmrnet.bench.throughput import load_throughput_suite, run_throughput

__all__ = [
    "ANALYSES",
    "Job",
    "LoadedSuite",
    "Suite",
    "collect",
    "evaluation_shift",
    "find_suite",
    "job_state",
    "load_suite",
    "load_throughput_suite",
    "metric_tables",
    "paired_rungs",
    "run_bench",
    "run_throughput",
    "suite_kind",
    "variance_against_error",
]
