"""Training throughput of the face-anti-spoofing network (surf-dmrnet), fp32 vs bf16.

    python benchmarks/gpu_surf_throughput.py --device cuda            # 112 x 112, batch 64
    python benchmarks/gpu_surf_throughput.py --device cpu --size 32 --batch-size 4 --width 8 \
        --steps 2 --warmup 1                                          # a quick check without GPU

Random tensors for three modalities (RGB, depth, IR, 3 channels each), random labels; one step is
what the engine does: modality-dropout mask, encode, decode, loss (task + KL + HCR), backward,
SGD (nesterov) update. bf16 runs the forward pass under `torch.autocast(dtype=torch.bfloat16)`,
as Lightning's "bf16-mixed" precision does. Prints samples per second and peak memory per
precision.
"""

from __future__ import annotations

import argparse

import torch
from training_step import training_throughput

from dmrnet.config import parse_config
from dmrnet.data.base import DataSpec
from dmrnet.methods import build_method
from dmrnet.modalities import ModalitySet
from dmrnet.tasks import build_task

MODALITIES = ("rgb", "depth", "ir")


def build(size: int, width: int, device: torch.device) -> torch.nn.Module:
    spec = DataSpec(
        name="random-faces",
        modalities=ModalitySet(MODALITIES),
        input_shapes={m: (3, size, size) for m in MODALITIES},
        task="pad",
        num_classes=2,
    )
    model = {
        "method": "surf-dmrnet",
        "width": width,
        "embed_dim": 8 * width,
        "hcr": {"rule": "fixed", "combinations": ["rgb", "rgb+ir", "ir"], "weight": 0.7},
    }
    config = parse_config({"data": {"name": "random-faces"}, "model": model})
    method = build_method(config.model, spec, build_task(spec)).to(device).train()
    method.hcr.hard.copy_(method.hcr.select(*method.hcr.statistics()))
    method.hcr.epoch.fill_(config.model.hcr.warmup_epochs)  # HCR on, as after the warm-up
    return method


def throughput(
    args: argparse.Namespace, precision: str, device: torch.device
) -> tuple[float, float]:
    torch.manual_seed(0)
    method = build(args.size, args.width, device)
    optimizer = torch.optim.SGD(
        method.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    inputs = {
        m: torch.randn(args.batch_size, 3, args.size, args.size, device=device) for m in MODALITIES
    }
    present = torch.ones(args.batch_size, len(MODALITIES), dtype=torch.bool, device=device)
    target = torch.randint(0, 2, (args.batch_size,), device=device)
    return training_throughput(
        method, optimizer, inputs, present, target, precision, device, args.warmup, args.steps
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=112, help="input height and width")
    parser.add_argument("--width", type=int, default=64, help="ResNet base channels")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} thread(s)"
    print(
        f"surf-dmrnet, {len(MODALITIES)} modalities, {args.size} x {args.size}, batch "
        f"{args.batch_size}, width {args.width}, {args.steps} timed steps on {name}"
    )
    results = {}
    for precision in args.precisions:
        if precision not in ("fp32", "bf16"):
            parser.error(f"unknown precision {precision!r}; use fp32 or bf16")
        results[precision] = throughput(args, precision, device)
        rate, peak = results[precision]
        memory = "" if peak != peak else f", peak memory {peak:.2f} GiB"  # NaN on CPU
        print(f"{precision}: {rate:8.1f} samples/s{memory}")
    if {"fp32", "bf16"} <= set(results):
        print(f"bf16 / fp32: {results['bf16'][0] / results['fp32'][0]:.2f}x")


if __name__ == "__main__":
    main()
