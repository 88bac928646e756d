"""Training-step time of AugLocal, DGL, InfoPro and PredSim over BP's, beside the MAC ratio,
in float32 and bf16 autocast + channels-last, at one or more thread counts.

    python benchmarks/step_time.py [--arch resnet32] [--batch 64] [--repeats 7] [--threads 2]
                                   [--device cpu] [--dataset cifar10|fashion-mnist]
                                   [--precisions fp32 bf16-cl]
    python benchmarks/step_time.py --dataset fashion-mnist --batch 128 --threads 1 2 \
        --precisions fp32 bf16-cl          # the README's precision table

The methods (paper settings: ResNet-32 K=16, d=2, τ=0.5; ResNet-110 K=55, d=3, τ=0.5;
DGL, InfoPro and PredSim at the same K, ``training.local.paper_config``) train identically initialised copies of the network in one process; their
steps (zero_grad, forward/backward, SGD step) are interleaved over the repeats and the median
seconds compared. The MAC ratio is the forward multiply-accumulates of primary network plus
aux nets over the primary network's (conv and linear layers, counted with forward hooks): the
time ratio to expect if every MAC cost the same. Every (thread count, precision, method) is
interleaved in each repeat, so a drift of a noisy machine hits all of them; the table gives
images/s and the bf16 over float32 time ratio per method and thread count.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from training.data import dataset_info
from training.local import paper_config
from training.memory import forward_macs
from training.models import build_model
from training.precision import FULL, Precision

METHODS = ("bp", "auglocal", "dgl", "infopro", "predsim")
PRECISIONS = {"fp32": FULL, "bf16-cl": Precision("bf16", channels_last=True)}


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


def mac_ratio(step, shape: tuple[int, int, int], device: torch.device) -> float:
    """Forward MACs per sample of one training step over the primary network's forward."""
    x, y = torch.randn(2, *shape, device=device), torch.tensor([0, 1], device=device)
    primary = forward_macs(step.model, lambda: step.model(x))
    return forward_macs(step.trainable, lambda: step(x, y)) / primary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet32", choices=["resnet32", "resnet110"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, nargs="+", default=[2], help="CPU thread counts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "fashion-mnist"],
                   help="input shape and normalisation (InfoPro's decoders use them)")
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=list(PRECISIONS))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    info = dataset_info(args.dataset)
    shape = (info.channels, info.image_size, info.image_size)

    runs, macs = {}, {}  # (precision, method) -> (step, optimiser)
    for method in METHODS:
        for name in args.precisions:
            precision = replace(PRECISIONS[name], device_type=device.type)
            torch.manual_seed(0)
            model = precision.layout(build_model(args.arch, in_channels=info.channels)
                                     .to(device))
            step = paper_config(method, args.arch).build_step(
                model, num_classes=10, input_size=shape, normalisation=(info.mean, info.std),
                precision=precision)
            runs[name, method] = step, torch.optim.SGD(step.trainable.parameters(), lr=0.01,
                                                       momentum=0.9)
        macs[method] = mac_ratio(runs[args.precisions[0], method][0], shape, device)
    x = torch.randn(args.batch, *shape, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    inputs = {name: PRECISIONS[name].layout(x) for name in args.precisions}
    seconds = {(t, *key): [] for t in args.threads for key in runs}
    for threads in args.threads:  # warm-up
        torch.set_num_threads(threads)
        for (name, method), (step, optimizer) in runs.items():
            timed_step(step, optimizer, inputs[name], y)
    for _ in range(args.repeats):
        for threads in args.threads:
            torch.set_num_threads(threads)
            for (name, method), (step, optimizer) in runs.items():
                seconds[threads, name, method].append(timed_step(step, optimizer,
                                                                 inputs[name], y))

    median = {key: statistics.median(s) for key, s in seconds.items()}
    first = args.precisions[0]
    print(f"{args.arch}, {args.dataset} {'×'.join(map(str, shape))}, batch {args.batch}, "
          f"{args.repeats} interleaved repeats, device {device}\n")
    header = " | ".join(f"{name} images/s" for name in args.precisions)
    ratios = " | ".join(f"{name} / {first} time" for name in args.precisions[1:])
    print(f"| threads | method | {header} | {ratios + ' | ' if ratios else ''}time / BP "
          f"({first}) | forward MACs / BP |")
    print("|---" * (4 + 2 * len(args.precisions) - 1) + "|")
    for threads in args.threads:
        for method in METHODS:
            seconds = {name: median[threads, name, method] for name in args.precisions}
            cells = [f"{args.batch / seconds[name]:.0f}" for name in args.precisions]
            cells += [f"{seconds[name] / seconds[first]:.2f}" for name in args.precisions[1:]]
            cells += [f"{seconds[first] / median[threads, first, 'bp']:.2f}",
                      f"{macs[method]:.2f}"]
            print(f"| {threads} | {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
