"""`dmrnet bench`: methods x datasets x seeds from a suite file, with every-combination results,
paired comparisons against the reference method (dmrnet), speed and memory, and a report.

    loaded = load_suite("standard")            # src/dmrnet/bench/suites/standard.yaml
    results = run_bench(loaded, "runs/bench/standard")
"""

from dmrnet.bench.runner import collect, job_state, run_bench
from dmrnet.bench.suite import Job, LoadedSuite, Suite, find_suite, load_suite

__all__ = [
    "Job",
    "LoadedSuite",
    "Suite",
    "collect",
    "find_suite",
    "job_state",
    "load_suite",
    "run_bench",
]
