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
    (``kind=float``) between ``low`` and ``high``, ends included unless ``*_open``."""

    kind: type
    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __str__(self) -> str:
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
    except RuntimeError:
        return f"--device {name!r} is not a torch device: use cpu, cuda or cuda:N"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return (f"--device {name!r}: no CUDA GPU is available here "
                    "(torch.cuda.is_available() is False); use --device cpu")
        if device.index is not None and device.index >= count:
            return (f"--device {name!r}: this machine has {count} GPUs "
                    f"(cuda:0 … cuda:{count - 1})")
    elif device.type != "cpu":
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as err:
            return f"--device {name!r} is not available here ({err}); use --device cpu"
    return None


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
        if not (os.access(path, os.W_OK) and path.stat().st_mode & 0o222):
            raise OutputError(f"{flag} {path} is read-only: make it writable (chmod u+w) "
                              f"or choose another {flag}")
    folder = path.absolute().parent
    while not folder.exists():   # the writer creates the missing folders below this one
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{flag} {path}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OutputError(f"{flag} {path}: cannot create files in {folder} "
                          f"({err.strerror or err}); choose another {flag} or make the "
                          "folder writable") from err


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
