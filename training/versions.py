"""The oldest torch this toolkit runs on, checked when :mod:`training` is imported (its
``__init__`` imports this module first).

Checkpoints are read with ``torch.load(weights_only=True)`` so that a file needing arbitrary
unpickling (which can run code) is refused. That guard is bypassable before torch 2.6
(CVE-2025-32434) and before 2.10 (CVE-2026-24747), so older releases are refused outright.
``pyproject.toml`` and ``environment.yml`` state the same floor (a test checks they agree).
"""

from __future__ import annotations

import torch
from torch.torch_version import TorchVersion

TORCH_FLOOR = "2.10"        # the first release fixed for CVE-2026-24747
TORCHVISION_FLOOR = "0.25"  # the torchvision release built for it


def check_torch(version: str) -> None:
    """Raise ImportError when torch ``version`` (e.g. ``torch.__version__``) is older than
    :data:`TORCH_FLOOR`; pre-releases of the floor (``2.10.0a0``) count as older."""
    if TorchVersion(version) < TORCH_FLOOR:
        raise ImportError(
            f"torch {version} is installed, but this toolkit needs torch >= {TORCH_FLOOR}: "
            "before it, torch.load(weights_only=True), which refuses code-running "
            "checkpoints, can be bypassed (CVE-2026-24747, CVE-2025-32434). Upgrade with "
            f"pip install 'torch>={TORCH_FLOOR}' 'torchvision>={TORCHVISION_FLOOR}'"
        )


check_torch(torch.__version__)
