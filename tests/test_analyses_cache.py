"""The activation cache of the analyses: keyed by everything that determines the stored values
(the inputs themselves included), re-extracting a file whose provenance does not match, and
safe for several processes that add reductions to one file at once."""
import gzip
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from analyses.activations import InputSelection, cached_activations, extract_checkpoint
from repsim.store import ActivationFile
from training.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzipped idx file, as Fashion-MNIST ships them."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fashion_root(folder: Path, seed: int) -> Path:
    """A Fashion-MNIST folder of 40 train and 20 test random images (the seed picks them)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """Two data folders with different images, and a tiny network trained on the first."""
    folder = tmp_path_factory.mktemp("fashion")
    roots = [fashion_root(folder / f"root{seed}", seed) for seed in (1, 2)]
    ckpt = folder / "m.pt"
    train(TrainConfig(arch="resnet8", width=4, dataset="fashion-mnist", data_root=str(roots[0]),
                      epochs=1, batch_size=20, out=str(ckpt), progress=False))
    return ckpt, roots


def _open(ckpt, root, cache, **kwargs):
    return cached_activations(ckpt, InputSelection("test", None, 0, str(root)),
                              reductions=("gap",), cache=cache, progress=False, **kwargs)


def test_another_data_folder_is_extracted_not_served_from_the_cache(fashion, tmp_path):
    ckpt, (root1, root2) = fashion
    cache = tmp_path / "cache"
    with _open(ckpt, root1, cache) as first, _open(ckpt, root2, cache) as second:
        assert first.path != second.path
        assert first.meta["inputs_sha256"] != second.meta["inputs_sha256"]
        assert second.meta["data_root"] == str(root2.resolve())
        layer = second.layers[-1]
        assert not np.allclose(first.read(layer, "gap"), second.read(layer, "gap"))
        # the cached file holds what a direct extraction on root2 gives
        direct = extract_checkpoint(ckpt, tmp_path / "direct.h5",
                                    InputSelection("test", None, 0, str(root2)),
                                    reductions=("gap",), progress=False)
        with ActivationFile(direct) as f:
            for name in f.layers:
                assert np.array_equal(f.read(name, "gap"), second.read(name, "gap"))


def test_the_same_images_in_another_folder_reuse_the_cached_file(fashion, tmp_path):
    ckpt, (root1, _) = fashion
    cache, copy = tmp_path / "cache", tmp_path / "copy"
    shutil.copytree(root1, copy)
    with _open(ckpt, root1, cache) as first:
        path, made = first.path, first.path.stat().st_mtime_ns
    with _open(ckpt, copy, cache) as again:
        assert again.path == path and path.stat().st_mtime_ns == made


def test_a_cached_file_whose_provenance_differs_is_extracted_again(fashion, tmp_path, capsys):
    ckpt, (root1, _) = fashion
    cache = tmp_path / "cache"
    with _open(ckpt, root1, cache) as first:
        path, right = first.path, first.meta["inputs_sha256"]
    with h5py.File(path, "r+") as f:   # a file that claims other inputs
        f["model"].attrs["inputs_sha256"] = '"' + "0" * 64 + '"'
    capsys.readouterr()
    with _open(ckpt, root1, cache) as again:
        assert again.path == path and again.meta["inputs_sha256"] == right
    [line] = capsys.readouterr().err.strip().splitlines()
    assert str(path) in line and "inputs_sha256" in line and "extract" in line


WORKER = """
import sys, time
from pathlib import Path
from analyses.activations import InputSelection, cached_activations
ckpt, cache, reduction, go = sys.argv[1:]
Path(f"{go}.{reduction}").touch()           # imported: ready
while not Path(go).exists():
    time.sleep(0.001)
with cached_activations(ckpt, InputSelection("test", None, 0), reductions=(reduction,),
                        cache=cache, progress=False) as f:
    assert reduction in f.reductions, f.reductions
"""


def test_two_processes_adding_reductions_to_one_cached_file_keep_both(tiny_checkpoints,
                                                                      tmp_path):
    cache, go = tmp_path / "cache", tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(tiny_checkpoints["a"]),
                                 str(cache), reduction, str(go)], cwd=REPO,
                                stderr=subprocess.PIPE, text=True)
               for reduction in ("flatten", "gap")]
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.{r}").exists() for r in ("flatten", "gap")):
        assert time.monotonic() < deadline and all(w.poll() is None for w in workers)
        time.sleep(0.01)
    go.touch()   # both start at once
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr.read()
    [cached] = cache.iterdir()   # one file, no lock or temporary file left behind
    with ActivationFile(cached) as f:
        assert set(f.reductions) == {"flatten", "gap"}
