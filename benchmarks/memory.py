"""Peak memory of one training step of each local method, as ratios to BP, at the paper's settings.

    python benchmarks/memory.py [--archs resnet32 resnet110] [--batches 128 1024] [--quick]
                                [--methods bp auglocal dgl infopro predsim] [--device cpu]
                                [--threads 2]

Each (architecture, batch, method) runs one step (SGD with Nesterov momentum) on random
32×32×3 inputs and reports, via ``training.memory.measure_step_memory``, the peak of tensors
held for backward and the step's total (that peak + parameters + gradients + momentum); on a
GPU also ``torch.cuda.max_memory_allocated``. Settings: ResNet-32 K=16, d=2, τ=0.5;
ResNet-110 K=55, d=3, τ=0.5; DGL, InfoPro and PredSim at the same K. Goal: AugLocal's total ≤ 0.5 × BP's on
ResNet-110. ``--quick`` keeps batch 128 only (ResNet-110 at batch 1024 takes minutes on CPU).
The torchvision ImageNet networks (``--archs tv_resnet34 tv_resnet101 --batches 32``) run on
224×224 inputs with 1000 classes at the authors' ImageNet settings (K=17 and K=34, d=4, no
K − d reduction, constant depth).
"""

from __future__ import annotations

import argparse
import gc
import sys

import torch

from training.data import dataset_info
from training.local import METHODS, paper_config
from training.memory import MemoryReport, measure_step_memory
from training.models import build_model

MIB = 2**20


def measure(method: str, arch: str, batch: int, device: torch.device) -> MemoryReport:
    """One training step of ``method`` on ``arch`` with a (batch, 3, S, S) random batch
    (S = 224 and 1000 classes for the torchvision networks, else 32 and 10)."""
    size, classes = (224, 1000) if arch.startswith("tv_") else (32, 10)
    torch.manual_seed(0)
    model = build_model(arch, num_classes=classes).to(device)
    cifar = dataset_info("cifar10")  # InfoPro's decoders reconstruct inputs of its scale
    step = paper_config(method, arch).build_step(model, num_classes=classes,
                                                 input_size=(3, size, size),
                                                 normalisation=(cifar.mean, cifar.std))
    optimizer = torch.optim.SGD(step.trainable.parameters(), lr=0.1, momentum=0.9,
                                nesterov=True, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    return measure_step_memory(step, optimizer, x, y)


def table(rows: list[tuple[str, int, str, MemoryReport]]) -> str:
    """Markdown table; ratios are to the BP row of the same architecture and batch."""
    base = {(arch, batch): r for arch, batch, method, r in rows if method == "bp"}
    cuda = any(r.cuda_peak_bytes is not None for *_, r in rows)
    head = ["arch", "batch", "method", "saved MiB", "saved / BP", "total MiB", "total / BP"]
    head += ["CUDA peak MiB", "CUDA / BP"] if cuda else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ratio(value, key, field):
        bp = base.get(key)
        return f"{value / getattr(bp, field):.2f}" if bp else "–"

    for arch, batch, method, r in rows:
        key = (arch, batch)
        cells = [arch, str(batch), method,
                 f"{r.saved_peak_bytes / MIB:.0f}", ratio(r.saved_peak_bytes, key,
                                                           "saved_peak_bytes"),
                 f"{r.total_peak_bytes / MIB:.0f}", ratio(r.total_peak_bytes, key,
                                                           "total_peak_bytes")]
        if cuda:
            cells += [f"{r.cuda_peak_bytes / MIB:.0f}",
                      ratio(r.cuda_peak_bytes, key, "cuda_peak_bytes")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["resnet32", "resnet110"],
                   choices=["resnet32", "resnet110", "tv_resnet34", "tv_resnet101"])
    p.add_argument("--batches", nargs="+", type=int, default=[128, 1024])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--quick", action="store_true", help="batch 128 only")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = [128] if args.quick else args.batches

    rows = []
    for arch in args.archs:
        for batch in batches:
            for method in args.methods:
                print(f"{arch} batch {batch} {method} …", file=sys.stderr, flush=True)
                rows.append((arch, batch, method, measure(method, arch, batch, device)))
                gc.collect()
    print(table(rows))


if __name__ == "__main__":
    main()
