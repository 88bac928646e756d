from pathlib import Path

import numpy as np
import pytest
import torch

from repsim.extract import extract
from repsim.store import ActivationFile
from training.train import TrainConfig, train


@pytest.fixture(autouse=True)
def _few_threads():
    """Two cores on CI: keep PyTorch from oversubscribing them."""
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Two tiny BP networks on digits that differ only in their seed: {"a": path, "b": path}."""
    folder = tmp_path_factory.mktemp("tiny")
    paths = {}
    for name, seed in (("a", 0), ("b", 1)):
        paths[name] = folder / f"{name}.pt"
        train(TrainConfig(arch="resnet8", width=4, dataset="digits", epochs=2, batch_size=64,
                          seed=seed, out=str(paths[name]), progress=False))
    return paths


@pytest.fixture
def read_sizes(monkeypatch) -> list[int]:
    """Rows returned by each ``ActivationFile.read`` during the test, in call order."""
    sizes = []
    real_read = ActivationFile.read

    def spy(self, layer, reduction, rows=None):
        out = real_read(self, layer, reduction, rows)
        sizes.append(len(out))
        return out

    monkeypatch.setattr(ActivationFile, "read", spy)
    return sizes


@pytest.fixture(scope="session")
def write_blob_files():
    """A function that writes activation files of a model on in-memory splits."""
    return _write_blob_files


def _write_blob_files(folder: Path, model: torch.nn.Module, layers: list[str],
                      splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Path]:
    """Activation files (``flatten``) of ``model`` on in-memory splits {split: (x (N, F), y (N,))}:
    {split: path}; meta names dataset "blobs" and the split."""
    paths = {}
    for split, (x, y) in splits.items():
        x = torch.as_tensor(x, dtype=torch.float32)
        batches = [(x[i:i + 64], torch.as_tensor(y[i:i + 64]),
                    torch.arange(i, min(i + 64, len(x)))) for i in range(0, len(x), 64)]
        paths[split] = extract(model.eval(), batches, layers, folder / f"{split}.h5",
                               reductions=("flatten",), progress=False,
                               meta={"dataset": "blobs", "split": split})
    return paths
