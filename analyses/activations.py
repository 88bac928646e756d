"""Checkpoint → activation file, through a cache the analyses share.

The inputs of a split are chosen by ``(n, seed)`` alone (a seeded class-balanced subset,
rows in ascending dataset order), so two checkpoints extracted with the same ``--n`` and
``--seed`` hold the same inputs in the same order and can be compared row by row.

A cached file is keyed by everything that determines its values (:meth:`Extraction.key`):
the checkpoint's SHA-256, the SHA-256 of the chosen inputs themselves (so another
``--data-root``, or changed files in it, is extracted anew, while the same images in another
folder are not), split, n, seed and layers; the batch size and device only change how the
values are computed. Every activation file records that key in its provenance.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from analyses.paths import SOURCE_HINT, check_input_file, exclusive, new_folders
from repsim.extract import extract
from repsim.store import ActivationFile
from training import data as datasets
from training.checks import Range
from training.checkpoint import checkpoint_meta, load_checkpoint

DEFAULT_CACHE = Path("acts")


@dataclass(frozen=True)
class InputSelection:
    split: str = "test"
    n: int | None = 2000        # inputs (None: the whole split)
    seed: int = 0               # which inputs, when n is smaller than the split
    data_root: str | None = None
    batch_size: int = 250       # inputs per forward pass (does not change the values)

    def __post_init__(self):
        for name, value, accepted in (("n", self.n, Range(int, 1, note="None: the whole split")),
                                      ("batch_size", self.batch_size, Range(int, 1))):
            if value is not None and not accepted.admits(value):
                raise ValueError(f"{name} must be {accepted}, got {value!r}")


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def select_inputs(dataset: dict, selection: InputSelection) -> datasets.ImageSet:
    """The rows of a split of a checkpoint's ``dataset`` (its metadata: ``name`` and, for an
    image folder, the ``image_size`` its rows are centre-cropped to) that ``selection`` names:
    all, or a seeded balanced subset, in memory."""
    split = datasets.load_split(dataset["name"], selection.split, data_root=selection.data_root,
                                image_size=dataset.get("image_size"))
    if selection.n is not None and selection.n < len(split):
        split = datasets.take(split, datasets.balanced_subset(split.labels, selection.n,
                                                              selection.seed))
    return datasets.in_memory(split)


def inputs_sha256(inputs: datasets.ImageSet) -> str:
    """SHA-256 of what the model is fed: the images (N, C, H, W) uint8 with their shape, the
    labels and dataset indices (N,) int64, and the normalisation (``inputs.info``)."""
    digest = hashlib.sha256(json.dumps([list(inputs.images.shape),
                                        inputs.info.to_dict()]).encode())
    for tensor in (inputs.images, inputs.labels, inputs.indices):
        digest.update(tensor.contiguous().numpy())
    return digest.hexdigest()


@dataclass(frozen=True)
class Extraction:
    """One checkpoint on chosen inputs, before its activations are computed."""
    ckpt: Path
    checkpoint_sha256: str
    meta: dict                     # the checkpoint's metadata (training.checkpoint_meta)
    selection: InputSelection
    inputs: datasets.ImageSet      # the chosen rows
    inputs_sha256: str             # inputs_sha256(inputs)
    layers: tuple[str, ...]        # module names: those asked for, or the checkpoint's

    def key(self) -> dict:
        """What determines the values: the cache key, recorded in the file's provenance
        (``layers`` as the file's own layer list)."""
        return {"checkpoint_sha256": self.checkpoint_sha256,
                "inputs_sha256": self.inputs_sha256, "split": self.selection.split,
                "n": len(self.inputs), "seed": self.selection.seed, "layers": list(self.layers)}

    def provenance(self) -> dict:
        """The file's ``/model`` attributes: the key and what describes the model."""
        data_root = self.selection.data_root
        return {
            "checkpoint": str(self.ckpt), "checkpoint_sha256": self.checkpoint_sha256,
            "dataset": self.meta["dataset"]["name"],
            "data_root": None if data_root is None else str(Path(data_root).resolve()),
            "split": self.selection.split, "n": len(self.inputs), "seed": self.selection.seed,
            "inputs_sha256": self.inputs_sha256, "arch": self.meta["arch"],
            "method": self.meta["method"], "epoch": self.meta["epoch"],
            "test_acc": self.meta["metrics"].get("test_acc"),
        }


def prepare(ckpt: str | Path, selection: InputSelection, layers: Sequence[str] | None = None,
            checkpoint_sha256: str | None = None) -> Extraction:
    """Read a checkpoint's metadata (no model is built) and choose its dataset's inputs.

    ``checkpoint_sha256`` is the file's SHA-256 when the caller has it already; it is
    computed here otherwise."""
    meta = checkpoint_meta(ckpt)
    dataset = meta["dataset"]
    inputs = select_inputs(dataset, selection)
    return Extraction(Path(ckpt), checkpoint_sha256 or sha256(ckpt), meta, selection, inputs,
                      inputs_sha256(inputs), tuple(layers or meta["layers"]))


def run_extraction(job: Extraction, out: str | Path, *, reductions: Sequence[str],
                   device: str = "cpu", progress: bool = True) -> Path:
    """Build the checkpoint's model on ``device`` and write its activations to ``out``."""
    model, _ = load_checkpoint(job.ckpt)
    model.to(device)
    # lzf saves little on flattened conv maps but costs ~3× the forward pass (see
    # benchmarks/extract_throughput.py), so the cache stores those uncompressed.
    compression = None if "flatten" in reductions else "lzf"
    return extract(model, datasets.eval_batches(job.inputs, job.selection.batch_size),
                   job.layers, out, reductions=tuple(reductions), meta=job.provenance(),
                   compression=compression, device=device, progress=progress)


def extract_checkpoint(ckpt: str | Path, out: str | Path, selection: InputSelection, *,
                       reductions: Sequence[str], layers: Sequence[str] | None = None,
                       device: str = "cpu", progress: bool = True) -> Path:
    """Extract a checkpoint's layers (default: all of ``meta["layers"]``) on its dataset."""
    return run_extraction(prepare(ckpt, selection, layers), out, reductions=reductions,
                          device=device, progress=progress)


def cached_activations(ckpt: str | Path, selection: InputSelection, *,
                       reductions: Sequence[str], layers: Sequence[str] | None = None,
                       cache: str | Path = DEFAULT_CACHE, device: str = "cpu",
                       progress: bool = True) -> ActivationFile:
    """Open the activation file of ``ckpt``, extracting it first unless the cache has it.

    One file per :meth:`Extraction.key`, so a retrained checkpoint or other inputs are
    extracted anew. A cached file lacking a requested reduction is re-extracted with the
    union of its reductions and the requested ones; one whose provenance differs from the
    key (written by an older version, or edited) is re-extracted, with a line on stderr.
    Processes sharing a cache take turns on a file (:func:`analyses.paths.exclusive`), so
    none loses the reductions another adds.
    """
    job = prepare(ckpt, selection, layers, sha256(ckpt))  # hashed once: key and provenance
    key = job.key()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache) / f"{Path(ckpt).stem}__{selection.split}__{digest}.h5"
    with new_folders(path.parent), exclusive(path):
        wanted = set(reductions)
        if path.exists():
            with ActivationFile(path) as acts:
                have, mismatch = set(acts.reductions), _mismatch(acts, key)
            if mismatch:
                print(f"re-extracting {path}: {mismatch}", file=sys.stderr)
            elif wanted <= have:
                return ActivationFile(path)
            else:
                wanted |= have
        run_extraction(job, path, reductions=tuple(sorted(wanted)), device=device,
                       progress=progress)
    return ActivationFile(path)


def _mismatch(acts: ActivationFile, key: dict) -> str | None:
    """What in the provenance of ``acts`` differs from ``key``, in words; None if nothing."""
    found = {**{name: acts.meta.get(name) for name in key}, "layers": acts.layers}
    for name, value in key.items():
        if found[name] != value:
            return f"its provenance has {name} {found[name]!r}, but {value!r} was asked for"
    return None


def open_activations(source: str | Path, selection: InputSelection, **kwargs) -> ActivationFile:
    """An ``.h5`` activation file as it is, or a checkpoint through the cache."""
    source = check_input_file(source, SOURCE_HINT)
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
    SHA-256, dataset, data folder, split, n, seed, the inputs' SHA-256, arch, method, epoch,
    test accuracy) and is reused by them. An ``.h5`` activation file is opened as it is.
    Close the result (or use ``with``).
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
