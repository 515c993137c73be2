"""What evaluating every combination costs, relative to one full-modality pass.

    python benchmarks/eval_cost.py RUN_DIR [--repeats 20] [--threads 1]

Times, over the run's test split: (1) one pass with all modalities (encode + decode), (2) all
2^M - 1 combinations the batched way (encode once, `decode_many`), (3) the naive loop (a full
forward pass per combination). Prints the medians and the ratios (2)/(1) and (3)/(2).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from dmrnet.engine import make_loader
from dmrnet.evaluate import evaluate_combinations, to_device
from dmrnet.runs import build_data_for, load_checkpoint


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    work()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.run_dir)
    method, config = loaded.method, loaded.config
    data = build_data_for(config)
    loader = make_loader(data.test, config.eval.batch_size, shuffle=False)
    batches = [to_device(b, "cpu") for b in loader]
    full = method.modalities.mask(method.modalities.full)

    @torch.no_grad()
    def one_full_pass() -> None:
        for batch in batches:
            features = method.encode(batch["inputs"], batch["present"])
            method.decode(features, full.expand(batch["present"].shape[0], -1))

    count = len(method.modalities.combinations())
    single = median_seconds(one_full_pass, args.repeats)
    batched = median_seconds(lambda: evaluate_combinations(method, batches), args.repeats)
    looped = median_seconds(
        lambda: evaluate_combinations(method, batches, batched=False), max(3, args.repeats // 4)
    )
    samples = len(data.test)
    print(
        f"run: {args.run_dir} ({config.model.method}, {samples} test samples, "
        f"{count} combinations, {args.threads} thread(s))"
    )
    print(f"one full-modality pass:             {1e3 * single:8.2f} ms")
    print(
        f"all combinations, batched (1 pass): {1e3 * batched:8.2f} ms  "
        f"= {batched / single:.2f}x one full pass"
    )
    print(
        f"all combinations, naive loop:       {1e3 * looped:8.2f} ms  "
        f"= {looped / batched:.1f}x the batched evaluation"
    )


if __name__ == "__main__":
    main()
