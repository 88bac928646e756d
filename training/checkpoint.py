"""Self-describing checkpoints: one ``torch.save`` of a plain dict.

Only tensors, numbers, strings, lists and dicts go in, so a checkpoint loads with
``torch.load(weights_only=True)`` and a file that would need arbitrary unpickling (and could
run code) is refused. Keys::

    format, format_version   "auglocal-toolkit/checkpoint", 1
    arch                     {"name", "depth", "width", "in_channels", "num_classes"}
    method                   {"name": "bp" | "auglocal" | "dgl", ...its settings}
    dataset                  DatasetInfo.to_dict() plus "subset"
    state_dict               the primary network
    aux_state_dict           auxiliary networks (local methods only)
    optimizer                optimiser state (to resume)
    layers                   ordered module names of the analysis layers
    metrics                  {"epochs": [per-epoch dicts], ...}
    epoch, seed, config, versions
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from training.models import BLOCKS_PER_STAGE, ResNet, build_model

FORMAT = "auglocal-toolkit/checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint of this toolkit; the message says why."""


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """Save under a temporary name in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; keep the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def arch_config(name: str, model: ResNet, in_channels: int, num_classes: int) -> dict:
    return {"name": name, "depth": int(name.removeprefix("resnet")),
            "width": model.layer_widths[0], "in_channels": in_channels,
            "num_classes": num_classes}


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, validated: format tag, version and required keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train one with "
                                f"`python -m training.train ... --out {path}`")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not a torch.save archive)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} was refused: loading it would need arbitrary unpickling (it holds "
            "objects other than tensors, numbers, strings, lists and dicts), which can "
            "run code. Only checkpoints written by training.train are loaded."
        ) from err
    except Exception as err:  # torch.load fails on damaged archives with many error types
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint "
                              f"({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not a checkpoint of this toolkit "
                              f"(no format tag {FORMAT!r}); write one with training.train")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {ckpt.get('format_version')!r}; this "
            f"toolkit reads version {FORMAT_VERSION}. Use the toolkit version that wrote it."
        )
    missing = {"arch", "method", "dataset", "state_dict", "layers", "metrics"} - ckpt.keys()
    if missing:
        raise CheckpointError(f"{path} lacks the keys {sorted(missing)}: it is damaged")
    return ckpt


def model_from_arch(arch: dict) -> ResNet:
    if arch.get("name") not in BLOCKS_PER_STAGE:
        raise CheckpointError(f"checkpoint architecture {arch.get('name')!r} is unknown; this "
                              f"toolkit builds {', '.join(BLOCKS_PER_STAGE)}")
    return build_model(arch["name"], width=arch["width"], in_channels=arch["in_channels"],
                       num_classes=arch["num_classes"])


def load_checkpoint(path: str | Path) -> tuple[ResNet, dict]:
    """Rebuild the primary network in eval mode: ``(model, meta)``.

    ``meta`` is the checkpoint dict without the weights and optimiser state;
    ``meta["layers"]`` lists the module names of the analysis layers, in order.
    """
    ckpt = read_checkpoint(path)
    model = model_from_arch(ckpt["arch"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit {ckpt['arch']}: {err}") from err
    model.eval()
    heavy = {"state_dict", "aux_state_dict", "optimizer"}
    return model, {k: v for k, v in ckpt.items() if k not in heavy}
