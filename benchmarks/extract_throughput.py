"""Throughput of ``repsim.extract`` against plain forward passes over the same batches.

    python -m benchmarks.extract_throughput [--images 2000] [--batch 250] [--repeats 3]

Hooks every layer of a CIFAR ResNet-32 (width 16; torchvision's resnet18 if ``training`` is
not importable) on random 32×32 inputs, and prints a markdown table: images/s of the plain
forward (eval, ``inference_mode``), of extraction with ``gap`` and with ``flatten`` (lzf, and
``flatten`` uncompressed: lzf costs more CPU than the forward pass on such maps), their
throughput ratio to the forward run by wall-clock and by process CPU time (the latter is
steadier when other jobs share the cores), the file size, and what the per-chunk checksums
(fletcher32, on by default) cost: each extraction also runs without them, and the last column
is its time with checksums over its time without (wall-clock / CPU). Each repeat runs the
jobs in a new seeded order and the best of ``--repeats`` counts, so background load hurts
every row alike. Goal: ``gap`` ≥ 0.9.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from repsim.extract import extract
from repsim.store import ActivationWriter


# (reduction, compression) of each timed extraction, each with and without checksums
EXTRACTIONS = (("gap", "lzf"), ("flatten", "lzf"), ("flatten", None))
UNCHECKED = ", no checksums"  # suffix of the name of a run without checksums


@dataclass(frozen=True)
class Row:
    name: str
    images_per_s: float  # by wall-clock time
    cpu_s_per_image: float  # process CPU time, less sensitive to other load on the machine
    file_bytes: int | None  # None for the forward baseline


def build(arch: str) -> tuple[nn.Module, list[str], str]:
    """The model in eval mode, the module names to hook, and what it is."""
    try:
        from training.models import build_model
    except ImportError:
        import torchvision

        model = torchvision.models.resnet18(weights=None)
        layers = ["conv1", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0",
                  "layer3.1", "layer4.0", "layer4.1"]
        return model.eval(), layers, "torchvision resnet18 (training not importable)"
    model = build_model(arch, width=16, in_channels=3, num_classes=10)
    return model.eval(), list(model.layer_names), f"{arch}, width 16"


def make_batches(images: int, batch: int, seed: int = 0) -> list:
    """(inputs (B, 3, 32, 32), labels (B,), indices (B,)) batches of random images."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(images, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (images,), generator=gen)
    idx = torch.arange(images)
    return [(x[i:i + batch], y[i:i + batch], idx[i:i + batch]) for i in range(0, images, batch)]


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def forward_all(model: nn.Module, batches: list) -> None:
    with torch.inference_mode():
        for inputs, _, _ in batches:
            model(inputs)


def extraction(model: nn.Module, batches: list, layers: list[str], path: Path, reduction: str,
               compression: str | None, checksums: bool):
    """A job that extracts ``layers`` to ``path``, with or without the writer's checksums."""
    def job() -> None:
        with mock.patch.object(ActivationWriter, "fletcher32", checksums):
            extract(model, batches, layers, path, reductions=(reduction,),
                    compression=compression, progress=False)
    return job


def run(model: nn.Module, layers: list[str], images: int, batch: int, repeats: int,
        folder: Path) -> list[Row]:
    batches = make_batches(images, batch)
    forward_all(model, batches[:1])  # warm-up: first-call allocations
    path = folder / "acts.h5"
    jobs = {"forward": lambda: forward_all(model, batches)}
    for reduction, compression in EXTRACTIONS:
        for checksums in (True, False):
            name = f"{reduction} ({compression}){'' if checksums else UNCHECKED}"
            jobs[name] = extraction(model, batches, layers, path, reduction, compression,
                                    checksums)
    wall = {name: float("inf") for name in jobs}
    cpu = dict(wall)
    sizes: dict[str, int] = {}
    for r in range(repeats):
        for name in random.Random(r).sample(list(jobs), len(jobs)):
            seconds, cpu_seconds = timed(jobs[name])
            wall[name], cpu[name] = min(wall[name], seconds), min(cpu[name], cpu_seconds)
            if path.exists():
                sizes[name] = path.stat().st_size
                path.unlink()
            os.sync()  # no run pays for the kernel writing back the previous run's file
    return [Row(name, images / wall[name], cpu[name] / images, sizes.get(name)) for name in jobs]


def checksum_cost(row: Row, by_name: dict[str, Row]) -> str:
    """'wall / CPU' time of ``row`` over that of the same run without checksums, or –."""
    unchecked = by_name.get(row.name + UNCHECKED)
    if unchecked is None:
        return "–"
    return (f"{unchecked.images_per_s / row.images_per_s:.2f} / "
            f"{row.cpu_s_per_image / unchecked.cpu_s_per_image:.2f}")


def table(rows: list[Row]) -> str:
    forward = rows[0]
    by_name = {row.name: row for row in rows}
    lines = ["| run | images/s | ratio to forward | ratio by CPU time | file size (MB) | "
             "checksum cost (wall / CPU) |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        size = "–" if row.file_bytes is None else f"{row.file_bytes / 1e6:.1f}"
        lines.append(f"| {row.name} | {row.images_per_s:.0f} | "
                     f"{row.images_per_s / forward.images_per_s:.2f} | "
                     f"{forward.cpu_s_per_image / row.cpu_s_per_image:.2f} | {size} | "
                     f"{checksum_cost(row, by_name)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet32")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (a temp dir)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, layers, label = build(args.arch)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        rows = run(model, layers, args.images, args.batch, args.repeats, Path(folder))
    print(f"{label}, {len(layers)} hooked layers, {args.images} random 32×32 images, "
          f"batch {args.batch}, "
          f"best of {args.repeats}, torch threads {torch.get_num_threads()}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
