import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads():
    """Two cores on CI: keep PyTorch from oversubscribing them."""
    torch.set_num_threads(2)
