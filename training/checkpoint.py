"""Self-describing checkpoints: one ``torch.save`` of a plain dict, and its readers.

Only tensors, numbers, strings, lists and dicts go in, so a checkpoint loads with
``torch.load(weights_only=True)`` and a file that would need arbitrary unpickling (and could
run code) is refused. Keys (built by :func:`checkpoint_dict`)::

    format, format_version   "auglocal-toolkit/checkpoint", 2
    arch                     {"name", "depth", "width", "in_channels", "num_classes"}
    method                   {"name": "bp" | "auglocal" | "dgl", "K", "aux_depth",
                              "pyramid_coeff"} (settings a method does not use are None)
    dataset                  DatasetInfo.to_dict() plus "subset"
    state_dict               the primary network
    aux_state_dict           auxiliary networks (local methods only)
    optimizer                optimiser state (to resume)
    layers                   ordered module names of the analysis layers
    metrics                  {"epochs": [per-epoch dicts], "test_acc", "train_seconds", ...}
    epoch, seed, config, versions

Readers: :func:`read_checkpoint` (everything, to resume), :func:`checkpoint_meta` (everything
but the weights, without reading them) and :func:`load_checkpoint` (the primary network in eval
mode plus that metadata). All three validate the file (format tag, version and the structure
of :data:`STRUCTURE`, naming every problem) and bring older format versions up to date in one
place (:func:`_validated`, :func:`_migrate`), so callers only ever see the current keys, of the
types they expect.

Format versions: 1 stored AugLocal's pyramid coefficient as ``method["tau"]``; 2 calls it
``method["pyramid_coeff"]``, the name of the ``--pyramid-coeff`` flag and of the
``TrainConfig`` and ``MethodConfig`` fields.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import signal
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import torch
import torchvision
from torch import nn

from training.models import ARCHS, ResNet, arch_depth, build_model
from training.precision import precision_label

FORMAT = "auglocal-toolkit/checkpoint"
FORMAT_VERSION = 2                 # the version this toolkit writes
READABLE_VERSIONS = (1, 2)         # the versions it reads (older ones via _migrate)
_KIND_NAMES = {dict: "a dict", list: "a list", str: "a str", int: "a whole number"}
_POSITIVE = (int, lambda v: v >= 1, "must be a whole number >= 1")
# What the readers require of a checkpoint (current keys): each key's type, a (type, test,
# rule) triple, or for a dict the entries it must hold. Optional keys (aux_state_dict,
# optimizer, config, versions) are checked by those who use them.
STRUCTURE = {
    "arch": {"name": str, "depth": _POSITIVE, "width": _POSITIVE, "in_channels": _POSITIVE,
             "num_classes": _POSITIVE},
    "method": {"name": str},
    "dataset": {"name": str},
    "state_dict": (dict, lambda d: all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                       for k, v in d.items()),
                   "must map names to tensors"),
    "layers": (list, lambda v: bool(v) and all(isinstance(x, str) for x in v),
               "must be a non-empty list of strings (module names)"),
    "metrics": {"epochs": (list, lambda v: all(isinstance(r, dict) for r in v),
                           "must be a list of dicts (one per epoch)")},
    "epoch": (int, lambda v: v >= 0, "must be a whole number >= 0"),
    "seed": int,
}
HEAVY_KEYS = ("state_dict", "aux_state_dict", "optimizer")  # left out of the metadata

# Settings a resumed run must share with the checkpoint it continues (keys of its "config").
RESUME_KEYS = ("method", "K", "aux_depth", "pyramid_coeff", "aux_rule", "arch", "width",
               "image_size", "dataset",
               "subset", "subset_seed", "epochs", "warmup_epochs", "batch_size", "lr",
               "momentum", "weight_decay", "seed", "aux_sampling", "aux_seed", "aux_config",
               "aux_loss", "lambda_x", "lambda_y", "beta")
# Resume keys added after format version 2, with the value a checkpoint written before them
# implies (the behaviour every run then had), so such checkpoints still resume.
IMPLIED_RESUME_VALUES = {"aux_sampling": "uniform", "aux_seed": None, "aux_config": "1c2f",
                         "aux_loss": "cross_entropy", "lambda_x": None, "lambda_y": None,
                         "beta": 0.99}

# Format version 1 → 2: old name → new name of keys in the "method" dict.
_V1_METHOD_KEYS = {"tau": "pyramid_coeff"}


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint of this toolkit; the message says why."""


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """Save under a temporary name in the same folder, then rename: never a half-written file.

    Interrupted by SIGINT or SIGTERM, or failing, it removes its temporary file (the process
    then ends as the signal asks); it also removes the temporary files that processes killed
    harder (SIGKILL, power loss) left for the same ``path``. An OSError (full disk, no
    permission) names ``path`` and the cause."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _sigterm_cleans_up():
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                           dir=path.parent)
                with os.fdopen(fd, "wb") as f:
                    torch.save(obj, f)
                os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; keep the usual ones
                os.replace(tmp, path)
            finally:  # ours, wherever an interruption struck, and any earlier debris
                _remove_stale_temporaries(path)
    except OSError as err:
        message = f"cannot write checkpoint {path}: {err.strerror or err}"
        raise (OSError(err.errno, message) if err.errno else OSError(message)) from err


class _Terminated(BaseException):
    """SIGTERM arrived while a checkpoint was being written (see :func:`_sigterm_cleans_up`)."""


@contextlib.contextmanager
def _sigterm_cleans_up():
    """Within the block, SIGTERM raises :class:`_Terminated`, so ``except``/``finally``
    clauses clean up as they do for SIGINT's KeyboardInterrupt; on leaving the block the
    previous handler is restored and, if SIGTERM arrived, sent again, so the process ends as
    it would have. Only where SIGTERM has its default action and in the main thread (the
    only one that may set handlers): an application's own handler is left in charge."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return
    arrived = []

    def terminate(signum, frame):
        arrived.append(signum)
        raise _Terminated

    try:
        signal.signal(signal.SIGTERM, terminate)
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if arrived:  # the block has cleaned up: end the process as the signal asked
            os.kill(os.getpid(), signal.SIGTERM)


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``.<name>.XXXXXXXX.tmp`` files (the names :func:`atomic_torch_save` writes
    under) that earlier writes of ``path`` left behind."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")
    with contextlib.suppress(OSError):  # best effort: never fails the write it follows
        for candidate in path.parent.iterdir():
            if pattern.fullmatch(candidate.name):
                candidate.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def arch_config(name: str, model: ResNet, in_channels: int, num_classes: int) -> dict:
    """The checkpoint's ``arch``: the registry name and every constructor argument (``width``:
    the first layer's channels, the base width of CIFAR and torchvision networks alike)."""
    return {"name": name, "depth": arch_depth(name),
            "width": model.layer_widths[0], "in_channels": in_channels,
            "num_classes": num_classes}


def checkpoint_dict(*, arch: dict, model: nn.Module, method: dict, dataset: dict,
                    aux_state_dict: dict | None, optimizer: dict, history: list[dict],
                    cost: dict, epoch: int, seed: int, config: dict) -> dict:
    """The dict a training run saves after each epoch (current format version).

    ``arch``: :func:`arch_config` of ``model``, the primary network (its ``state_dict`` and
    ``layer_names`` are stored); ``method``: ``MethodConfig.to_dict()``; ``dataset``:
    ``DatasetInfo.to_dict()`` plus ``"subset"``; ``aux_state_dict``: the aux nets' weights
    (None for BP); ``optimizer``: ``optimizer.state_dict()``; ``history``: one record per
    completed epoch, each with ``test_acc`` and ``epoch_seconds``; ``cost``: the run's cost
    metrics (merged into ``metrics``); ``epoch``: epochs completed; ``config``: the run's
    settings as a dict (``asdict(TrainConfig)``), which :func:`check_resume` compares.
    """
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "arch": arch,
        "method": method,
        "dataset": dataset,
        "state_dict": model.state_dict(),
        "aux_state_dict": aux_state_dict,
        "optimizer": optimizer,
        "layers": list(model.layer_names),
        "metrics": {"epochs": history, "test_acc": history[-1]["test_acc"] if history else None,
                    "train_seconds": sum(r["epoch_seconds"] for r in history), **cost},
        "epoch": epoch, "seed": seed,
        "config": config,
        "versions": {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
                     "python": sys.version.split()[0]},
    }


def check_resume(config: dict, ckpt: dict, path: str | Path) -> None:
    """Refuse to continue checkpoint ``ckpt`` (read from ``path``) under other settings.

    ``config``: the new run's settings as a dict (``asdict(TrainConfig)``); every key of
    :data:`RESUME_KEYS` must equal the one in ``ckpt["config"]`` (where a checkpoint predates a
    key, its :data:`IMPLIED_RESUME_VALUES` value, on either side). Raises ValueError naming each
    differing flag with both values.
    """
    saved = {**IMPLIED_RESUME_VALUES, **ckpt.get("config", {})}
    config = {**IMPLIED_RESUME_VALUES, **config}
    clashes = [f"--{k.replace('_', '-')} {config.get(k)!r} (checkpoint: {saved.get(k)!r})"
               for k in RESUME_KEYS if saved.get(k) != config.get(k)]
    if clashes:
        raise ValueError(f"--resume: {path} was trained with other settings: "
                         + "; ".join(clashes) + ". Use the same settings or a new --out.")


def _migrate(ckpt: dict) -> dict:
    """Bring a validated checkpoint of an older readable version to the current keys.

    Version 1 → 2: ``method["tau"]`` is renamed ``method["pyramid_coeff"]`` (order kept).
    ``format_version`` keeps the version the file was written with.
    """
    if ckpt["format_version"] == 1 and isinstance(ckpt.get("method"), dict):
        ckpt["method"] = {_V1_METHOD_KEYS.get(k, k): v for k, v in ckpt["method"].items()}
    return ckpt


def _read(path: str | Path, *, mmap: bool) -> dict:
    """The checkpoint dict at ``path``, validated and migrated to the current keys.

    ``mmap=True`` maps the file instead of reading tensor storage into memory: tensors are
    read only when their data is touched (see ``torch.load``)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file: name the .pt "
                              "file inside it")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train one with "
                                f"`python -m training.train ... --out {path}`")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not a torch.save archive)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} was refused: loading it would need arbitrary unpickling (it holds "
            "objects other than tensors, numbers, strings, lists and dicts), which can "
            "run code. Only checkpoints written by training.train are loaded."
        ) from err
    except Exception as err:  # torch.load fails on damaged archives with many error types
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint "
                              f"({type(err).__name__}: {err})") from err
    return _validated(ckpt, path)


def _validated(ckpt: object, path: Path) -> dict:
    """``ckpt`` as loaded from ``path``, checked (format tag, version, and the structure of
    :data:`STRUCTURE`) and migrated to the current keys; CheckpointError names each problem."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not a checkpoint of this toolkit "
                              f"(no format tag {FORMAT!r}); write one with training.train")
    if ckpt.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has checkpoint format version {ckpt.get('format_version')!r}; this "
            f"toolkit reads versions {', '.join(map(str, READABLE_VERSIONS))}. Use the "
            "toolkit version that wrote it."
        )
    ckpt = _migrate(ckpt)
    missing = sorted(STRUCTURE.keys() - ckpt.keys())
    problems = [f"it lacks the keys {missing}"] if missing else [
        problem for key, expected in STRUCTURE.items()
        for problem in _structure_problems(repr(key), ckpt[key], expected)]
    if not problems:
        problems = _consistency_problems(ckpt)
    if problems:
        raise CheckpointError(f"{path} is damaged or was not written by training.train: "
                              + "; ".join(problems))
    return ckpt


def _structure_problems(where: str, value: object, expected: object) -> list[str]:
    """What is wrong with ``value`` (found at ``where``) against ``expected``: a type, a
    predicate with its description ``(type, test, "must be ...")``, or a dict of the entries
    a dict must hold."""
    if isinstance(expected, dict):
        if not isinstance(value, dict):
            return [f"{where} has type {type(value).__name__}, expected a dict"]
        problems, name = [], where.strip("'")  # 'metrics' → metrics['epochs']
        for key, entry in expected.items():
            if key not in value:
                problems.append(f"{where} lacks {key!r}")
            else:
                problems += _structure_problems(f"{name}[{key!r}]", value[key], entry)
        return problems
    kind, test, rule = expected if isinstance(expected, tuple) else (expected, None, "")
    if not _is(value, kind):
        return [f"{where} has type {type(value).__name__}, expected {_KIND_NAMES[kind]}"]
    return [f"{where} {rule}"] if test is not None and not test(value) else []


def _is(value: object, kind: type) -> bool:
    """isinstance, except that a bool is not a whole number (True would pass as 1)."""
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _consistency_problems(ckpt: dict) -> list[str]:
    """Disagreements between well-typed keys."""
    recorded = len(ckpt["metrics"]["epochs"])
    if ckpt["epoch"] != recorded:
        return [f"'epoch' is {ckpt['epoch']} but metrics['epochs'] holds {recorded} epochs"]
    return []


def _without_weights(ckpt: dict) -> dict:
    return {k: v for k, v in ckpt.items() if k not in HEAVY_KEYS}


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, validated (format tag, version, :data:`STRUCTURE`), with the
    current key names whatever version wrote it; weights and optimiser state included."""
    return _read(path, mmap=False)


def checkpoint_meta(path: str | Path) -> dict:
    """A checkpoint's metadata: its dict without ``state_dict``, ``aux_state_dict`` and
    ``optimizer``, validated as by :func:`read_checkpoint`.

    Cheap: the file is memory-mapped, so the weights are never read into memory, and no
    model is built. The same dict as ``load_checkpoint(path)[1]``, except that an unknown
    architecture or weights that do not fit it are not detected here.
    """
    return _without_weights(_read(path, mmap=True))


def run_precision(ckpt: dict) -> str:
    """How the run of a checkpoint (or its metadata) computed: "bf16 + channels-last",
    "float32" (also for checkpoints older than the settings)."""
    config = ckpt.get("config", {})
    return precision_label(config.get("amp"), bool(config.get("channels_last")))


def model_from_arch(arch: dict) -> ResNet:
    """A fresh network of the checkpoint's ``arch``; refuses architectures not registered."""
    if arch.get("name") not in ARCHS:
        raise CheckpointError(f"checkpoint architecture {arch.get('name')!r} is unknown; this "
                              f"toolkit builds {', '.join(ARCHS)}")
    return build_model(arch["name"], width=arch["width"], in_channels=arch["in_channels"],
                       num_classes=arch["num_classes"])


def load_checkpoint(path: str | Path) -> tuple[ResNet, dict]:
    """Rebuild the primary network in eval mode: ``(model, meta)``.

    ``meta`` is the checkpoint dict without the weights and optimiser state (the same as
    :func:`checkpoint_meta`); ``meta["layers"]`` lists the module names of the analysis
    layers, in order.
    """
    ckpt = read_checkpoint(path)
    model = model_from_arch(ckpt["arch"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit {ckpt['arch']}: {err}") from err
    model.eval()
    return model, _without_weights(ckpt)
