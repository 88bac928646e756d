"""Training-step time of AugLocal, DGL, InfoPro and PredSim over BP's, beside the MAC ratio.

    python benchmarks/step_time.py [--arch resnet32] [--batch 64] [--repeats 7] [--threads 2]
                                   [--device cpu]

The methods (paper settings: ResNet-32 K=16, d=2, τ=0.5; ResNet-110 K=55, d=3, τ=0.5;
DGL, InfoPro and PredSim at the same K, ``training.local.paper_config``) train identically initialised copies of the network in one process; their
steps (zero_grad, forward/backward, SGD step) are interleaved over the repeats and the median
seconds compared. The MAC ratio is the forward multiply-accumulates of primary network plus
aux nets over the primary network's (conv and linear layers, counted with forward hooks): the
time ratio to expect if every MAC cost the same.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from training.data import dataset_info
from training.local import paper_config
from training.memory import forward_macs
from training.models import build_model

METHODS = ("bp", "auglocal", "dgl", "infopro", "predsim")
CIFAR10 = dataset_info("cifar10")  # InfoPro's decoders reconstruct inputs of its scale


def timed_step(step, optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of one full training step."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    step(x, y)
    optimizer.step()
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - start


def mac_ratio(step, device: torch.device) -> float:
    """Forward MACs per sample of one training step over the primary network's forward."""
    x, y = torch.randn(2, 3, 32, 32, device=device), torch.tensor([0, 1], device=device)
    primary = forward_macs(step.model, lambda: step.model(x))
    return forward_macs(step.trainable, lambda: step(x, y)) / primary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet32", choices=["resnet32", "resnet110"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    steps, optimizers, macs = {}, {}, {}
    for method in METHODS:
        torch.manual_seed(0)
        model = build_model(args.arch).to(device)
        steps[method] = paper_config(method, args.arch).build_step(
            model, num_classes=10, input_size=(3, 32, 32),
            normalisation=(CIFAR10.mean, CIFAR10.std))
        optimizers[method] = torch.optim.SGD(steps[method].trainable.parameters(), lr=0.01,
                                             momentum=0.9)
        macs[method] = mac_ratio(steps[method], device)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    seconds = {method: [] for method in METHODS}
    for method in METHODS:  # warm-up
        timed_step(steps[method], optimizers[method], x, y)
    for _ in range(args.repeats):
        for method in METHODS:
            seconds[method].append(timed_step(steps[method], optimizers[method], x, y))

    median = {method: statistics.median(s) for method, s in seconds.items()}
    print(f"{args.arch}, batch {args.batch}, {args.repeats} interleaved repeats, "
          f"{args.threads} threads, device {device}\n")
    print("| method | median step s | time / BP | forward MACs / BP |\n|---|---|---|---|")
    for method in METHODS:
        print(f"| {method} | {median[method]:.3f} | {median[method] / median['bp']:.2f} | "
              f"{macs[method]:.2f} |")


if __name__ == "__main__":
    main()
