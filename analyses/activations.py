"""Checkpoint → activation file, through a cache the analyses share.

The inputs of a split are chosen by ``(n, seed)`` alone (a seeded class-balanced subset,
rows in ascending dataset order), so two checkpoints extracted with the same ``--n`` and
``--seed`` hold the same inputs in the same order and can be compared row by row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from repsim.extract import extract
from repsim.store import ActivationFile
from training import data as datasets
from training.checkpoint import load_checkpoint

DEFAULT_CACHE = Path("acts")


@dataclass(frozen=True)
class InputSelection:
    split: str = "test"
    n: int | None = 2000        # inputs (None: the whole split)
    seed: int = 0               # which inputs, when n is smaller than the split
    data_root: str | None = None
    batch_size: int = 250


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def select_inputs(name: str, selection: InputSelection) -> datasets.ImageSet:
    """The rows of a split that ``selection`` names: all, or a seeded balanced subset."""
    split = datasets.load_split(name, selection.split, data_root=selection.data_root)
    if selection.n is None or selection.n >= len(split):
        return split
    return datasets.take(split, datasets.balanced_subset(split.labels, selection.n,
                                                         selection.seed))


def extract_checkpoint(ckpt: str | Path, out: str | Path, selection: InputSelection, *,
                       reductions: Sequence[str], layers: Sequence[str] | None = None,
                       device: str = "cpu", progress: bool = True,
                       checkpoint_sha256: str | None = None) -> Path:
    """Extract a checkpoint's layers (default: all of ``meta["layers"]``) on its dataset.

    ``checkpoint_sha256`` is the file's SHA-256 when the caller has it already (the cache
    key does); it is computed here otherwise.
    """
    model, meta = load_checkpoint(ckpt)
    model.to(device)
    inputs = select_inputs(meta["dataset"]["name"], selection)
    provenance = {
        "checkpoint": str(ckpt), "checkpoint_sha256": checkpoint_sha256 or sha256(ckpt),
        "dataset": meta["dataset"]["name"], "split": selection.split, "n": len(inputs),
        "seed": selection.seed, "arch": meta["arch"], "method": meta["method"],
        "epoch": meta["epoch"], "test_acc": meta["metrics"].get("test_acc"),
    }
    # lzf saves little on flattened conv maps but costs ~3× the forward pass (see
    # benchmarks/extract_throughput.py), so the cache stores those uncompressed.
    compression = None if "flatten" in reductions else "lzf"
    return extract(model, datasets.eval_batches(inputs, selection.batch_size),
                   layers or meta["layers"], out, reductions=tuple(reductions), meta=provenance,
                   compression=compression, device=device, progress=progress)


def cached_activations(ckpt: str | Path, selection: InputSelection, *,
                       reductions: Sequence[str], layers: Sequence[str] | None = None,
                       cache: str | Path = DEFAULT_CACHE, device: str = "cpu",
                       progress: bool = True) -> ActivationFile:
    """Open the activation file of ``ckpt``, extracting it first unless the cache has it.

    One file per (checkpoint SHA-256, split, n, seed, layers), so a retrained checkpoint is
    re-extracted; a cached file lacking a requested reduction is re-extracted with the
    union of its reductions and the requested ones.
    """
    checkpoint_sha256 = sha256(ckpt)  # read once: the key and the file's provenance
    key = json.dumps([checkpoint_sha256, selection.split, selection.n, selection.seed,
                      None if layers is None else list(layers)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(cache) / f"{Path(ckpt).stem}__{selection.split}__{digest}.h5"
    wanted = set(reductions)
    if path.exists():
        acts = ActivationFile(path)
        if wanted <= set(acts.reductions):
            return acts
        wanted |= set(acts.reductions)
        acts.close()
    extract_checkpoint(ckpt, path, selection, reductions=tuple(sorted(wanted)), layers=layers,
                       device=device, progress=progress, checkpoint_sha256=checkpoint_sha256)
    return ActivationFile(path)


def open_activations(source: str | Path, selection: InputSelection, **kwargs) -> ActivationFile:
    """An ``.h5`` activation file as it is, or a checkpoint through the cache."""
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist: pass a checkpoint written by "
                                "training.train or an activation file (.h5)")
    if source.suffix in (".h5", ".hdf5"):
        return ActivationFile(source)
    return cached_activations(source, selection, **kwargs)


def activations_of(ckpt: str | Path, split: str = "test", *, n: int = 2000, seed: int = 0,
                   reductions: Sequence[str] = ("flatten", "gap"),
                   layers: Sequence[str] | None = None, cache: str | Path = DEFAULT_CACHE,
                   data_root: str | None = None, batch_size: int = 250, device: str = "cpu",
                   progress: bool = True) -> ActivationFile:
    """The activation file of a checkpoint on one split of its dataset, as the commands make it.

    ``n`` inputs (0: the whole split) chosen by ``seed``, the same rows for every checkpoint;
    ``reductions`` of ``layers`` (default: the checkpoint's). Goes through the shared cache
    (``cache``), so the file holds the provenance the commands record (checkpoint path and
    SHA-256, dataset, split, n, seed, arch, method, epoch, test accuracy) and is reused by
    them. An ``.h5`` activation file is opened as it is. Close the result (or use ``with``).
    """
    selection = InputSelection(split, n or None, seed, data_root, batch_size)
    return open_activations(ckpt, selection, reductions=tuple(reductions), layers=layers,
                            cache=cache, device=device, progress=progress)


def check_distinct_names(sources: Sequence[str]) -> None:
    """Outputs are named after file stems: refuse two inputs that would share a name."""
    stems = [Path(s).stem for s in sources]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise ValueError(f"several inputs are named {clashes} (file names without folder and "
                         "suffix name the outputs); give each input a distinct file name")


def model_label(acts: ActivationFile) -> str:
    """A short name for legends and axes: the method and file stem, e.g. 'auglocal (al.pt)'."""
    method = acts.meta.get("method", {})
    name = method.get("name", "model") if isinstance(method, dict) else str(method)
    source = Path(acts.meta.get("checkpoint", acts.path)).name
    return f"{name} ({source})"
