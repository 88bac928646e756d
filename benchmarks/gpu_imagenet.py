"""ResNet-34 on a 224×224 image folder: images/s and peak GPU memory of BP, AugLocal and DGL,
fp32 against bf16 (issue 18).

    python benchmarks/gpu_imagenet.py --root /tmp/imgs [--make 2560] [--steps 200]
        [--batch-size 128] [--methods bp auglocal dgl] [--amp none bf16] [--device cuda]

``--make N`` first writes N random 256×256 JPEGs in 10 classes under ``root/train`` and
``root/val`` (a stand-in for ImageNet; nothing here can download it). Each (precision, method)
trains the paper's ImageNet setting (``training.local.paper_config``: K = 17, d = 4, no K − d
reduction, constant depth; DGL at K = 17) through the toolkit's own image-folder loader
(RandomResizedCrop 224, 8 workers, pinned memory) with channels-last, SGD with Nesterov
momentum; after ``--warmup`` steps it times ``--steps`` steps and reads
``torch.cuda.max_memory_allocated`` over them. The table ends with AugLocal's and DGL's peak
memory as a fraction of BP's at the same precision, next to the paper's ~0.6 (a ~40 % saving
at the same batch size).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training import data as datasets
from training.local import paper_config
from training.models import build_model
from training.precision import Precision

MIB = 2**20
PAPER_RATIO = 0.6  # AugLocal's memory / BP's on ImageNet ResNet-34 (≈ 40 % saving)


def make_folder(root: Path, n: int, classes: int = 10, size: int = 256) -> None:
    """``n`` training and ``n // 10`` validation JPEGs of random pixels in ``classes`` folders."""
    rng = np.random.default_rng(0)
    for sub, count in (("train", n), ("val", max(n // 10, classes))):
        for i in range(count):
            folder = root / sub / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def measure(method: str, amp: str | None, args, device: torch.device) -> dict:
    """Images/s and peak CUDA memory of ``args.steps`` training steps of ``method``."""
    split = datasets.load_split("imagefolder", "train", data_root=args.root,
                                workers=args.workers, pin_memory=device.type == "cuda")
    precision = Precision(amp, True, device.type)
    torch.manual_seed(0)
    model = precision.layout(build_model("tv_resnet34", num_classes=split.info.num_classes)
                             .to(device))
    step = paper_config(method, "tv_resnet34").build_step(
        model, num_classes=split.info.num_classes, input_size=(3, 224, 224),
        precision=precision)
    optimizer = torch.optim.SGD(step.trainable.parameters(), lr=0.1, momentum=0.9,
                                nesterov=True, weight_decay=1e-4)
    step.trainable.train()
    batches = itertools.chain.from_iterable(
        datasets.train_batches(split, args.batch_size, seed=0, epoch=e) for e in itertools.count())
    seen, start = 0, None
    for i, (x, y) in enumerate(batches):
        if i == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start, seen = time.perf_counter(), 0
        if i == args.warmup + args.steps:
            break
        x = precision.layout(x.to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        step(x, y.to(device, non_blocking=True))
        precision.step(optimizer)
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"images_per_s": seen / seconds, "peak_bytes": peak}


def table(rows: list[tuple[str, str, dict]]) -> str:
    bp = {amp: r for amp, method, r in rows if method == "bp"}
    lines = ["| precision | method | images/s | max_memory_allocated MiB | memory / BP | "
             "paper |", "|---|---|---|---|---|---|"]
    for amp, method, r in rows:
        peak = r["peak_bytes"]
        base = bp.get(amp, {}).get("peak_bytes")
        ratio = f"{peak / base:.2f}" if peak and base else "–"
        paper = f"~{PAPER_RATIO}" if method == "auglocal" else ""
        lines.append(f"| {amp} | {method} | {r['images_per_s']:.0f} | "
                     f"{peak / MIB if peak else float('nan'):.0f} | {ratio} | {paper} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--make", type=int, default=0, help="first write N random training JPEGs")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--methods", nargs="+", default=["bp", "auglocal", "dgl"])
    p.add_argument("--amp", nargs="+", default=["none", "bf16"], choices=["none", "bf16", "fp16"])
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    if args.make:
        make_folder(args.root, args.make)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    rows = []
    for amp in args.amp:
        for method in args.methods:
            print(f"{amp} {method} …", file=sys.stderr, flush=True)
            rows.append((amp, method, measure(method, None if amp == "none" else amp, args,
                                              device)))
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(table(rows), file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
