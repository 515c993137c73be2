"""Speed and memory of a trained run: training throughput, every-combination evaluation in one
pass against the per-combination loop, and the peak memory of each.

The measurement runs in a fresh process by default (`isolate`), so its memory is not hidden by
what earlier work left in the allocator. Peak memory is measured from the moment the data is loaded,
before the model is: it covers the weights, (for training) gradients and optimizer state, and the
activations. On CUDA it is `torch.cuda.max_memory_allocated` above the level at that moment; on
CPU, the peak resident set size (RSS) above it, sampled every millisecond from /proc/self/statm
by a background thread (PyTorch's CPU allocator is invisible to tracemalloc). Where /proc is
missing (macOS, Windows) the CPU peak is reported as unavailable.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, suppress
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from dmrnet.config import Config
from dmrnet.data import DataSplits
from dmrnet.data.loaders import make_loader
from dmrnet.engine import build_optimizer, training_loss
from dmrnet.evaluate import evaluate_combinations, to_device
from dmrnet.methods import Method
from dmrnet.methods.stages import StagedMethod

MIB = 2**20


class PeakMemory:
    """Peak memory (bytes) used above the level at the start of a `with` block."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: float | None = None

    @contextmanager
    def measure(self) -> Iterator[PeakMemory]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield self
            torch.cuda.synchronize(self.device)
            self.peak = float(torch.cuda.max_memory_allocated(self.device) - start)
            return
        if _rss() is None:
            yield self
            self.peak = None
            return
        start = _rss() or 0
        highest = [start]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                highest[0] = max(highest[0], _rss() or 0)
                stop.wait(0.001)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            highest[0] = max(highest[0], _rss() or 0)
            self.peak = float(highest[0] - start)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _release_free_memory() -> None:
    """Return freed heap memory to the system, so the RSS baseline is what is really in use."""
    gc.collect()
    with suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        run()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def measure_evaluation(
    method: Method, config: Config, data: DataSplits, device: torch.device, repeats: int
) -> dict[str, Any]:
    """Every combination of the test split: one encoder pass + `decode_many`, against
    re-encoding for every combination (`batched=False`), and against evaluating the
    full-modality forward pass alone (what one ordinary pass costs, without metrics). The first
    two must give the same numbers. The three are timed in turn, so a change in machine load affects
    them alike."""
    loader = make_loader(data.test, config.eval.batch_size, False, 0)
    method.to(device).eval()
    full = method.modalities.mask(method.modalities.full).to(device)

    def one_pass() -> Any:
        return evaluate_combinations(method, loader, device=device)

    def loop() -> Any:
        return evaluate_combinations(method, loader, device=device, batched=False)

    @torch.no_grad()
    def full_pass() -> None:  # encode + decode with every modality: one ordinary forward pass
        for batch in loader:
            batch = to_device(batch, device)
            features = method.encode(batch["inputs"], batch["present"])
            method.decode(features, full.expand(batch["present"].shape[0], -1))

    batched, looped = one_pass(), loop()  # also the warm-up
    full_pass()
    headline = method.task.headline.name
    difference = max(
        abs(a.metrics[headline] - b.metrics[headline])
        for a, b in zip(batched, looped, strict=True)
        if a.samples
    )
    one_pass_times, loop_times, full_times = [], [], []
    for _ in range(repeats):
        one_pass_times += _timed(one_pass, device, 1)
        loop_times += _timed(loop, device, 1)
        full_times += _timed(full_pass, device, 1)
    one, per = statistics.median(one_pass_times), statistics.median(loop_times)
    single = statistics.median(full_times)
    return {
        "combinations": len(batched),
        "samples": len(data.test),  # type: ignore[arg-type]
        "one_pass_s": one,
        "loop_s": per,
        "full_pass_s": single,
        "speedup": per / one if one > 0 else None,
        "one_pass_over_full": one / single if single > 0 else None,
        "max_metric_difference": difference,
    }


def measure_training(
    method: Method,
    config: Config,
    data: DataSplits,
    device: torch.device,
    steps: int,
    warmup: int,
    repeats: int = 1,
) -> dict[str, Any]:
    """Training samples/s of the final training stage: sample the dropout mask, encode, decode,
    loss, backward, optimizer step, on the config's batch size. `repeats` blocks of `steps`
    steps; the median block is reported (robust to a burst of load on a shared machine)."""
    if isinstance(method, StagedMethod):
        from dmrnet.runs import training_stages

        method.begin_stage(training_stages(method, config)[-1].name)
    method.to(device).train()
    parameters = [p for p in method.parameters() if p.requires_grad]
    optimizer = build_optimizer(parameters, config.train.optimizer)
    loader = make_loader(data.train, config.train.batch_size, True, 0, config.seed)
    batches = itertools.cycle(list(loader))

    def step() -> int:
        batch = to_device(next(batches), device)
        optimizer.zero_grad(set_to_none=True)
        training_loss(method, batch).total.backward()
        optimizer.step()
        return int(batch["present"].shape[0])

    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        samples = 0
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            samples += step()
        _synchronize(device)
        rates.append(samples / (time.perf_counter() - start))
    method.eval()
    rate = statistics.median(rates)
    return {
        "steps": steps,
        "repeats": repeats,
        "batch_size": config.train.batch_size,
        "samples_per_s": rate,
        "step_s": config.train.batch_size / rate,
        "parameters": sum(p.numel() for p in method.parameters()),
        "trainable_parameters": sum(p.numel() for p in parameters),
    }


def measure_phases(
    run_dir: str,
    settings: dict[str, Any],
    device: str = "cpu",
    data_root: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Evaluation, then training, each on a freshly loaded copy of the run's best model; the
    peak memory of each is counted from after the data is loaded (and what the previous phase
    freed is given back), before the model is loaded."""
    from dmrnet.runs import build_data_for, load_checkpoint, load_run_config

    if threads is not None:
        torch.set_num_threads(threads)
    torch_device = torch.device(device)
    config = load_run_config(run_dir)
    data = build_data_for(config, data_root)
    loader = make_loader(data.test, config.eval.batch_size, False, 0)

    _release_free_memory()
    memory = PeakMemory(torch_device)
    with memory.measure():  # loading the model and evaluating every combination in one pass
        method = load_checkpoint(run_dir).method.to(torch_device)
        evaluate_combinations(method, loader, device=torch_device)
    evaluation = measure_evaluation(method, config, data, torch_device, settings["repeats"])
    evaluation["peak_memory_mib"] = None if memory.peak is None else memory.peak / MIB
    del method
    _release_free_memory()
    with memory.measure():
        training = measure_training(
            load_checkpoint(run_dir).method,
            config,
            data,
            torch_device,
            steps=settings["train_steps"],
            warmup=settings["warmup_steps"],
            repeats=settings["repeats"],
        )
    training["peak_memory_mib"] = None if memory.peak is None else memory.peak / MIB
    return {"evaluation": evaluation, "training": training}


def measure_speed(
    run_dir: str | Path,
    settings: dict[str, Any],
    device: str = "cpu",
    data_root: str | None = None,
    isolate: bool = True,
) -> dict[str, Any]:
    """`measure_phases`; with `isolate`, in a fresh process (spawned: nothing is inherited but
    the arguments), so earlier work in this process cannot hide memory in the allocator."""
    arguments = (str(run_dir), settings, device, data_root, torch.get_num_threads())
    if not isolate:
        return measure_phases(*arguments)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure_phases, *arguments).result()
