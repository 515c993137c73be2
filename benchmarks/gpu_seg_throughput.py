"""Training throughput of the paper-size dense DMRNet (configs/nyuv2/dmrnet.yaml), fp32 vs bf16,
on random 480 x 640 RGB-D images.

    python benchmarks/gpu_seg_throughput.py --device cuda            # the paper's size, batch 8
    python benchmarks/gpu_seg_throughput.py --device cpu --height 64 --width 64 --depth 10 \
        --resnet-width 8 --batch-size 2 --steps 2 --warmup 1     # a quick check without GPU

The model is the config's `model` section (two ResNet-50 branches fused at every stage, pyramid
pooling, decoder [512, 256, 128], Gaussian heads, auxiliary decoder), built for a random data
description with NYUv2's shapes: rgb (3, H, W), depth (1, H, W), 40 classes. One step is what the
engine does: modality-dropout mask, encode, decode, loss (per-pixel cross-entropy with the side
outputs, KL, and the auxiliary-decoder HCR switched on as after its warm-up), backward, SGD update
with the config's optimizer settings. bf16 runs the forward pass under
`torch.autocast(dtype=torch.bfloat16)`, as Lightning's "bf16-mixed" precision does. Prints images
per second and peak memory per precision; `--out` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from training_step import training_throughput

from dmrnet.config import load_config
from dmrnet.data.base import DataSpec
from dmrnet.methods import Method, build_method
from dmrnet.modalities import ModalitySet
from dmrnet.tasks import build_task

CONFIG = (
    Path(__file__).resolve().parents[1] / "src" / "dmrnet" / "configs" / "nyuv2" / "dmrnet.yaml"
)
MODALITIES = ModalitySet(("rgb", "depth"))
NUM_CLASSES = 40


def build(args: argparse.Namespace, device: torch.device) -> Method:
    overrides = []
    if args.depth is not None:
        overrides.append(f"model.encoder.options.depth={args.depth}")
    if args.resnet_width is not None:
        overrides.append(f"model.encoder.options.width={args.resnet_width}")
    config = load_config(args.config, overrides)
    spec = DataSpec(
        name="random-rgbd",
        modalities=MODALITIES,
        input_shapes={"rgb": (3, args.height, args.width), "depth": (1, args.height, args.width)},
        task="segmentation",
        num_classes=NUM_CLASSES,
        ignore_index=255,
        extra={"holes": {"depth": 0.0}},
    )
    method = build_method(config.model, spec, build_task(spec)).to(device).train()
    hcr = method.hcr
    if hcr.enabled:  # as after the warm-up: the HCR (and the auxiliary decoder) is on
        hcr.hard.copy_(hcr.select(*hcr.statistics()))
        hcr.epoch.fill_(config.model.hcr.warmup_epochs)
    return method


def throughput(
    args: argparse.Namespace, precision: str, device: torch.device
) -> tuple[float, float]:
    torch.manual_seed(0)
    method = build(args, device)
    settings = load_config(args.config).train.optimizer
    optimizer = torch.optim.SGD(
        method.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=settings.nesterov,
        weight_decay=settings.weight_decay,
    )
    size = (args.height, args.width)
    inputs = {
        "rgb": torch.rand(args.batch_size, 3, *size, device=device),
        "depth": torch.rand(args.batch_size, 1, *size, device=device) * 5,
    }
    present = torch.ones(args.batch_size, len(MODALITIES), dtype=torch.bool, device=device)
    target = torch.randint(0, NUM_CLASSES, (args.batch_size, *size), device=device)
    return training_throughput(
        method, optimizer, inputs, present, target, precision, device, args.warmup, args.steps
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--config", type=Path, default=CONFIG, help="model section to build")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--depth", type=int, default=None, help="override the ResNet depth")
    parser.add_argument("--resnet-width", type=int, default=None, help="override the ResNet width")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    for precision in args.precisions:
        if precision not in ("fp32", "bf16"):
            parser.error(f"unknown precision {precision!r}; use fp32 or bf16")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} thread(s)"
    print(
        f"{args.config.name}: rgb-d {args.height} x {args.width}, batch {args.batch_size}, "
        f"{args.steps} timed steps on {name}"
    )
    results = {}
    for precision in args.precisions:
        rate, peak = throughput(args, precision, device)
        results[precision] = {
            "images_per_s": rate,
            "peak_memory_gib": None if peak != peak else peak,
        }
        memory = "n/a" if peak != peak else f"{peak:.2f} GiB"
        print(f"{precision}: {rate:.2f} images/s, peak memory {memory}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": name, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
