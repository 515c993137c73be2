"""Training throughput of the paper-size audio-visual DMRNet
(src/dmrnet/configs/cremad/dmrnet.yaml), fp32 vs bf16, on random 224 x 224
frames and 3 s spectrograms.

    python benchmarks/gpu_av_throughput.py --device cuda            # the paper's size, batch 64
    python benchmarks/gpu_av_throughput.py --device cpu --image-size 32 --seconds 0.25 \
        --depth 10 --width 8 --batch-size 4 --steps 2 --warmup 1   # a quick check without GPU

The model is the config's `model` section (ResNet-18 audio and frame encoders, 512-d features and
embedding, HCR unimodal-max), built for a random data description: audio (257, 188) =
log-spectrogram of 3 s at 22.05 kHz with n_fft 512, hop 353 (the paper's CREMA-D front-end);
visual (1, 3, 224, 224) = one frame; 6 classes. One step is what the engine does: modality-dropout
mask, encode, decode, loss (task + KL + HCR, switched on as after the warm-up), backward, SGD
update. bf16 runs the forward pass under `torch.autocast(dtype=torch.bfloat16)`, as Lightning's
"bf16-mixed" precision does. Prints samples per second and peak memory per precision; `--out`
also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from training_step import training_throughput

from dmrnet.audio import AudioOptions
from dmrnet.config import load_config
from dmrnet.data.base import DataSpec
from dmrnet.methods import Method, build_method
from dmrnet.modalities import ModalitySet
from dmrnet.tasks import build_task

CONFIG = (
    Path(__file__).resolve().parents[1] / "src" / "dmrnet" / "configs" / "cremad" / "dmrnet.yaml"
)
MODALITIES = ModalitySet(("audio", "visual"))
NUM_CLASSES = 6


def input_shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    audio = AudioOptions(
        sample_rate=args.sample_rate, seconds=args.seconds, n_fft=args.n_fft, hop_length=args.hop
    )
    size = args.image_size
    return {"audio": audio.spectrogram_shape(), "visual": (args.frames, 3, size, size)}


def build(args: argparse.Namespace, device: torch.device) -> Method:
    overrides = []
    for modality in MODALITIES.names:
        if args.depth is not None:
            overrides.append(f"model.encoders.{modality}.options.depth={args.depth}")
        if args.width is not None:
            overrides.append(f"model.encoders.{modality}.options.width={args.width}")
    config = load_config(args.config, overrides)
    spec = DataSpec(
        name="random-audio-visual",
        modalities=MODALITIES,
        input_shapes=input_shapes(args),
        task="classification",
        num_classes=NUM_CLASSES,
    )
    method = build_method(config.model, spec, build_task(spec)).to(device).train()
    hcr = method.hcr
    if hcr.enabled:  # as after the warm-up: one unimodal combination is hard, HCR is on
        hcr.hard[0] = True
        hcr.epoch.fill_(config.model.hcr.warmup_epochs)
    return method


def throughput(
    args: argparse.Namespace, precision: str, device: torch.device
) -> tuple[float, float]:
    torch.manual_seed(0)
    method = build(args, device)
    # The paper's optimizer: SGD lr 1e-3, momentum 0.9, weight decay 1e-4.
    optimizer = torch.optim.SGD(method.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    shapes = input_shapes(args)
    inputs = {m: torch.randn(args.batch_size, *shapes[m], device=device) for m in shapes}
    present = torch.ones(args.batch_size, len(MODALITIES), dtype=torch.bool, device=device)
    target = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
    return training_throughput(
        method, optimizer, inputs, present, target, precision, device, args.warmup, args.steps
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--config", type=Path, default=CONFIG, help="model section to build")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--sample-rate", type=int, default=22050)
    parser.add_argument("--n-fft", type=int, default=512)
    parser.add_argument("--hop", type=int, default=353)
    parser.add_argument("--depth", type=int, default=None, help="override both encoders' depth")
    parser.add_argument("--width", type=int, default=None, help="override both encoders' width")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
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
    shapes = input_shapes(args)
    print(
        f"{args.config.name}: audio {shapes['audio']}, visual {shapes['visual']}, batch "
        f"{args.batch_size}, {args.steps} timed steps on {name}"
    )
    results = {}
    for precision in args.precisions:
        rate, peak = throughput(args, precision, device)
        results[precision] = {
            "samples_per_s": rate,
            "peak_memory_gib": None if peak != peak else peak,
        }
        memory = "" if peak != peak else f", peak memory {peak:.2f} GiB"  # NaN on CPU
        print(f"{precision}: {rate:8.1f} samples/s{memory}")
    if {"fp32", "bf16"} <= set(results):
        ratio = results["bf16"]["samples_per_s"] / results["fp32"]["samples_per_s"]
        print(f"bf16 / fp32: {ratio:.2f}x")
    if args.out is not None:
        record = {"device": name, "config": str(args.config), "shapes": shapes, **vars(args)}
        record = {k: str(v) if isinstance(v, Path) else v for k, v in record.items()}
        args.out.write_text(json.dumps({"setup": record, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
