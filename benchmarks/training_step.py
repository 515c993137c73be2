"""The timed training step shared by the GPU throughput scripts (benchmarks/gpu_*_throughput.py).

Scripts in benchmarks/ import it as a sibling module (`python benchmarks/gpu_x_throughput.py`
puts this folder on sys.path).
"""

from __future__ import annotations

import time
from typing import Any

import torch


def training_throughput(
    method: Any,
    optimizer: torch.optim.Optimizer,
    inputs: dict[str, torch.Tensor],
    present: torch.Tensor,
    target: torch.Tensor,
    precision: str,
    device: torch.device,
    warmup: int,
    steps: int,
) -> tuple[float, float]:
    """(training samples/s, peak GPU memory in GiB or NaN on CPU) of full training steps: the
    modality-dropout mask, encode, decode, loss, backward and optimizer step; `precision` is
    "fp32" or "bf16" (autocast)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=precision == "bf16"):
            mask = method.training_mask(present)
            output = method.decode(method.encode(inputs, present), mask)
            loss = method.loss(output, target, mask).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return steps * present.shape[0] / elapsed, peak
