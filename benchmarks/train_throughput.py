"""Images/s of our BP training loop against a bare PyTorch loop, same model and batches.

    python benchmarks/train_throughput.py [--arch resnet20] [--batches 30] [--repeats 3]
                                          [--amp bf16] [--channels-last]

Both loops run the same pre-built batches through identically initialised copies of the
model, interleaved over several repeats; the median images/s of each and their ratio are
printed. Our loop adds the schedule, metrics and a progress bar; the goal is ≥ 0.95. With
``--amp``/``--channels-last`` both loops compute in that precision and layout.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.nn import functional as F
from tqdm import tqdm

from training import data as datasets
from training.models import build_model
from training.precision import FULL, Precision
from training.step import BackpropStep
from training.train import TrainConfig, make_optimizer, train_epoch


def bare_loop(model, optimizer, batches, precision: Precision = FULL) -> float:
    """The textbook loop: seconds for one pass."""
    model.train()
    start = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = F.cross_entropy(model(precision.layout(x)), y)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def our_loop(model, optimizer, batches, precision: Precision = FULL) -> float:
    with tqdm(total=len(batches), leave=False, desc="ours") as bar:
        stats = train_epoch(BackpropStep(model, precision), optimizer, batches,
                            lr_at=lambda i: 0.1 * (1 - i / len(batches)),
                            device=torch.device("cpu"), progress=bar)
    return stats.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--amp", choices=["bf16"], help="bf16 autocast in both loops")
    p.add_argument("--channels-last", action="store_true", help="NHWC model and batches")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    precision = Precision(args.amp, args.channels_last)

    data = datasets.load_split("fashion-mnist", "train")
    batches = list(datasets.train_batches(data, args.batch_size, seed=0, epoch=0))
    batches = batches[:args.batches]
    torch.manual_seed(0)
    model = precision.layout(build_model(args.arch, width=args.width, in_channels=1))
    config = TrainConfig()
    runs = {"bare": bare_loop, "ours": our_loop}
    seconds = {name: [] for name in runs}
    our_loop(copy.deepcopy(model), make_optimizer(config, model.parameters()), batches[:3],
             precision)
    for _ in range(args.repeats):  # interleaved, so drifts of a noisy machine hit both
        for name, loop in runs.items():
            m = copy.deepcopy(model)
            seconds[name].append(loop(m, make_optimizer(config, m.parameters()), batches,
                                      precision))
    images = sum(len(y) for _, y in batches)
    rate = {name: images / statistics.median(s) for name, s in seconds.items()}
    print(f"{args.arch} width {args.width}, Fashion-MNIST 28×28, batch {args.batch_size}, "
          f"{args.amp or 'float32'}{' + channels-last' if args.channels_last else ''}, "
          f"{len(batches)} batches × {args.repeats} repeats, {args.threads} threads\n")
    print("| loop | images/s (median) |\n|---|---|")
    for name, r in rate.items():
        print(f"| {name} | {r:.0f} |")
    print(f"\nratio ours / bare: {rate['ours'] / rate['bare']:.3f} (goal ≥ 0.95)")


if __name__ == "__main__":
    main()
