"""Checks of a command's input made before any work: numeric ranges (also as argparse types,
so a bad number is refused while parsing), the device, and the output paths.

Each check raises with a message that names the option, the offending value and the fix.
Output paths are checked the way they will be written: a file that exists is kept unless the
caller may replace it, a directory or a read-only file is never an output, the folder (or the
nearest existing folder above it, which the writer creates the rest of) must take a new file,
and no output may be another output or one of the command's inputs.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch


class OutputError(ValueError):
    """An output path that cannot or must not be written; the message names it and why."""


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: whole numbers (``kind=int``) or finite reals
    (``kind=float``) between ``low`` and ``high``, ends included unless ``*_open``; ``note``
    explains a special value in messages, e.g. "0: the whole split"."""

    kind: type
    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def __str__(self) -> str:
        return self._bounds() + (f" ({self.note})" if self.note else "")

    def _bounds(self) -> str:
        if self.kind is int:
            return f"a whole number >= {self.low:g}"
        if self.high == math.inf:
            return f"a finite number {'>' if self.low_open else '>='} {self.low:g}"
        return (f"a finite number in {'(' if self.low_open else '['}{self.low:g}, "
                f"{self.high:g}{')' if self.high_open else ']'}")

    def admits(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if (self.kind is int and not isinstance(value, int)) or not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def parse(self, text: str) -> int | float:
        """The argparse ``type`` of an option in this range: the value, or an argparse error
        (exit status 2) that argparse prefixes with the option's name."""
        try:
            value = self.kind(text)
        except ValueError:
            value = None
        if not self.admits(value):
            raise argparse.ArgumentTypeError(f"must be {self}, got {text!r}")
        return value


def device_problem(name: str) -> str | None:
    """Why torch device ``name`` (``--device``) cannot be used here, or None if it can."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"--device {name!r} is not a torch device: use cpu, cuda, cuda:N or mps"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return (f"--device {name!r}: no CUDA GPU is available here "
                    "(torch.cuda.is_available() is False); use --device cpu")
        if device.index is not None and device.index >= count:
            return (f"--device {name!r}: this machine has {count} GPUs "
                    f"(cuda:0 … cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {name!r}: MPS is not available on this machine; use --device cpu"
    elif device.type not in ("cpu", "cuda", "mps"):
        return (f"--device {name!r}: device type {device.type!r} cannot run here; use cpu, "
                "cuda, cuda:N or mps")
    return None


def read_only(path: Path) -> bool:
    """No one may write ``path`` by its mode, or this process may not (root is held to the
    mode, as the user's statement that the path is not to be changed)."""
    return not (path.stat().st_mode & 0o222 and os.access(path, os.W_OK))


def check_writable(folder: Path, what: str) -> None:
    """Refuse ``what`` unless ``folder``, or its nearest existing parent where it does not
    exist yet (the writer creates the rest), is a folder in which a file can be created
    (tried, then removed)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{what}: {existing} is a file, not a folder")
    if read_only(existing):
        raise OutputError(f"{what}: cannot write in {existing}: it is read-only")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise OutputError(f"{what}: cannot write in {existing} ({err.strerror or err}); "
                          "choose another path or make the folder writable") from None


def check_output(path: str | Path, flag: str, *, replace: bool, fix: str) -> None:
    """Refuse output ``path`` (the value of option ``flag``) before any work if it cannot or
    must not be written. ``replace``: an existing file there may be replaced; ``fix``: what
    to do when it exists and may not be (FileExistsError). Other refusals: OutputError."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a directory: name a file in it instead")
    if path.exists():
        if not replace:
            raise FileExistsError(f"{flag} {path} exists: {fix}")
        if read_only(path):
            raise OutputError(f"{flag} {path} is read-only: make it writable (chmod u+w) "
                              f"or choose another {flag}")
    check_writable(path.absolute().parent, f"{flag} {path}")


def check_distinct(outputs: dict[str, Path], inputs: list[tuple[str, Path]]) -> None:
    """Refuse two outputs that are the same file (after resolving links and ``..``), and an
    output that is an input or lies inside an input folder.

    ``outputs``: option → path (e.g. ``{"--out": ..., "--log": ...}``); ``inputs``:
    (description, path) of every file or folder the command reads."""
    resolved = {flag: Path(path).resolve() for flag, path in outputs.items()}
    flags = list(outputs)
    for i, flag in enumerate(flags):
        for other in flags[:i]:
            if resolved[flag] == resolved[other]:
                raise OutputError(f"{flag} {outputs[flag]} is the same file as {other} "
                                  f"{outputs[other]}: give {flag} another name")
        for description, source in inputs:
            source = Path(source).resolve()
            if resolved[flag] == source or source in resolved[flag].parents:
                raise OutputError(f"{flag} {outputs[flag]} would write over {description} "
                                  f"{source}, which this run reads: choose another {flag}")
