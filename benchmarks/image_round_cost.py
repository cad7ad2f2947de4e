"""What a round of the ResNet18 presets costs on a device: the project's own loop, no Flower.

    python benchmarks/image_round_cost.py --device cuda            # cifar10_resnet18's sizes
    python benchmarks/image_round_cost.py --device cpu --images-per-client 256 --test-images 512

One client's round is `initmatters_core.training.train_steps` on a ResNet18 of the preset
(`initmatters_core.tasks.image.models.resnet18`, BatchNorm, ImageNet stem, 10 classes) for one
local epoch of mini-batch SGD (batch 64, lr 0.01, momentum 0.9, weight decay 5e-4) over the
client's images; the server's measurement is a forward pass over the test split (batch 512).
Images are random tensors of CIFAR-10's shape (the compute is the same; no dataset is needed,
so it runs where only torch and torchvision are installed); no augmentation. It prints the
seconds of each part (median of --rounds after one warm-up) and the preset's time if its clients
ran one after another on this device: rounds x (clients x client round + measurement) per run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from initmatters_core.tasks.image.models import resnet18  # noqa: E402
from initmatters_core.training import evaluate_loss, steps_per_epoch, train_steps  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clients", type=int, default=10, help="K of the preset")
    parser.add_argument("--images-per-client", type=int, default=4500,
                        help="CIFAR-10's 50000 train images less the 10%% proxy share, over 10 clients")
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="timed repetitions (after one warm-up)")
    parser.add_argument("--preset-rounds", type=int, default=50)
    parser.add_argument("--preset-runs", type=int, default=18)
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    shape = (3, args.image_size, args.image_size)
    train_x = torch.randn(args.images_per_client, *shape, generator=generator)
    train_y = torch.randint(0, 10, (args.images_per_client,), generator=generator)
    test_x = torch.randn(args.test_images, *shape, generator=generator)
    test_y = torch.randint(0, 10, (args.test_images,), generator=generator)
    if device.type == "cuda":  # the image task keeps a client's decoded images in memory; here on the device
        train_x, train_y, test_x, test_y = (t.to(device) for t in (train_x, train_y, test_x, test_y))
    model = resnet18(10, "batch", False, seed=0).to(device)
    steps = steps_per_epoch(args.images_per_client, args.batch_size)
    client, measure = [], []
    for repetition in range(args.rounds + 1):
        synchronize(device)
        started = time.perf_counter()
        train_steps(model, train_x, train_y, functional.cross_entropy, steps=steps, lr=0.01,
                    batch_size=args.batch_size, momentum=0.9, weight_decay=5e-4,
                    generator=torch.Generator().manual_seed(repetition), device=device, eval_batch_size=512)
        synchronize(device)
        middle = time.perf_counter()
        evaluate_loss(model, test_x, test_y, functional.cross_entropy, batch_size=512)
        synchronize(device)
        if repetition:  # the first repetition warms up (cuDNN autotuning, allocator)
            client.append(middle - started)
            measure.append(time.perf_counter() - middle)
    client_s, measure_s = statistics.median(client), statistics.median(measure)
    round_s = args.clients * client_s + measure_s
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"client round (1 epoch, {steps} steps of {args.batch_size} images, incl. the final train loss): "
          f"{client_s:.3f} s")
    print(f"server measurement ({args.test_images} test images): {measure_s:.3f} s")
    print(f"one round, {args.clients} clients in sequence: {round_s:.2f} s; one run of {args.preset_rounds} rounds: "
          f"{round_s * args.preset_rounds / 60:.1f} min; the preset's {args.preset_runs} runs: "
          f"{round_s * args.preset_rounds * args.preset_runs / 3600:.2f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
