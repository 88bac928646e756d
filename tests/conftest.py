from pathlib import Path

import pytest
import torch

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
