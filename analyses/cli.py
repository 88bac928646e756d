"""What every analysis command shares: the options several commands take (declared once, in
:data:`SHARED`), parsing into a command's settings dataclass, ``--threads``, ``args.json``,
and errors as one line, not a traceback.

A command is a frozen ``Settings`` dataclass, ``run(settings)``, and ``parser()``: a
:class:`SettingsParser` whose ``parse_args(argv)`` builds the settings. It takes each option's
default (or that it is required) from the field of the same name, so the dataclass is the one
place a default is written; options several commands share come from :data:`SHARED`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from repsim.extract import ExtractError, parse_reduction
from repsim.store import sigterm_exits
from training.checks import Range, device_problem

S = TypeVar("S")


def mebibytes(text: str) -> int:
    """argparse type of ``--max-memory MIB``: a positive, finite number of MiB, as bytes."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value * 2**20 >= 1):
        raise argparse.ArgumentTypeError(f"must be a positive number of MiB, e.g. 512, got "
                                         f"{text!r}")
    return int(value * 2**20)


count = Range(int, 0, note="0: the whole split").parse  # type of --n, --n-train, --n-test
positive = Range(int, 1).parse                          # type of --threads, --batch-size


def device(text: str) -> str:
    """argparse type of ``--device``: a torch device this machine has (cpu, cuda, cuda:<i>,
    mps), kept as the name."""
    problem = device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def split_name(text: str) -> str:
    """argparse type of ``--split``: ``val`` names the test split (an image folder's val/)."""
    return "test" if text == "val" else text


def reduction(text: str) -> str:
    """argparse type of ``--reduction``: a name :func:`repsim.extract.parse_reduction` accepts,
    kept as the name."""
    try:
        parse_reduction(text)
    except ExtractError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


# The options of several commands: add_argument keywords without the default, which comes from
# the command's settings field. A command overrides what differs (help, nargs) by keyword.
SHARED: dict[str, dict[str, Any]] = {
    "n": {"type": count, "help": "inputs (%(default)s; 0: the whole split)"},
    "n_train": {"type": count, "help": "probe train inputs (%(default)s; 0: the whole split)"},
    "n_test": {"type": count, "help": "probe test inputs (%(default)s; 0: the whole split)"},
    "seed": {"type": int, "help": "which inputs when --n is a subset (%(default)s)"},
    "split": {"choices": ["train", "test", "val"], "type": split_name,
              "help": "dataset split (%(default)s; val: an image folder's val/, the same as test)"},
    "reduction": {"type": reduction,
                  "help": "flatten, gap or pool<k> (k >= 1) of each conv layer (%(default)s)"},
    "layers": {"nargs": "+", "help": "module names (default: each checkpoint's)"},
    "batch_size": {"type": positive, "help": "minibatch CKA (Nguyen et al. 2021) over batches "
                   "of this size; default: the full-batch estimator"},
    "max_memory": {"type": mebibytes, "metavar": "MIB"},
    "cache": {"help": "activation cache (%(default)s)"},
    "data_root": {"help": "dataset folder (see training.train --help)"},
    "device": {"type": device, "help": "torch device: cpu, cuda, cuda:1, ... (%(default)s)"},
    "threads": {"type": positive, "help": "torch CPU threads"},
    "level": {"type": Range(float, 0, 1, low_open=True, high_open=True).parse,
              "help": "level of every interval (%(default)s)"},
    "n_perm": {"type": Range(int, 0, note="0: no baseline").parse, "metavar": "N",
               "help": "compare every map with N shuffles of B's inputs: p-values, calibrated "
                       "score"},
    "overwrite": {"action": "store_true",
                  "help": "replace an existing --out (an earlier run's outputs as a whole); "
                          "an output that is an input is refused even so"},
}


class SettingsParser:
    """An argparse parser that builds a settings dataclass: ``add`` and ``shared`` declare
    options named after its fields, ``parse_args(argv)`` returns the dataclass."""

    def __init__(self, prog: str, description: str | None, settings: type[S]):
        self.parser = argparse.ArgumentParser(
            prog=prog, description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        self.settings = settings
        self.fields = {f.name: f for f in dataclasses.fields(settings)}

    def add(self, name: str, **spec: Any) -> None:
        """``--name`` (underscores as dashes) for the field ``name``, with its default."""
        field = self.fields[name]
        if field.default is dataclasses.MISSING:
            spec["required"] = True
        else:
            spec["default"] = field.default
        self.parser.add_argument("--" + name.replace("_", "-"), **spec)

    def shared(self, *names: str, **overrides: dict[str, Any]) -> None:
        """The :data:`SHARED` options ``names``; ``overrides[name]`` replaces keywords of one."""
        for name in names:
            self.add(name, **{**SHARED[name], **overrides.get(name, {})})

    def parse_args(self, argv: list[str] | None = None) -> S:
        """The settings ``argv`` names; a bad option exits with a usage error (status 2)."""
        values = vars(self.parser.parse_args(argv))
        return self.settings(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in values.items()})


def write_settings(settings: Any, folder: Path) -> Path:
    """``folder/args.json``: the settings a command ran with, as ``dataclasses.asdict``."""
    path = folder / "args.json"
    path.write_text(json.dumps(dataclasses.asdict(settings), indent=1))
    return path


def run_cli(parser: Callable[[], SettingsParser], run: Callable[[S], object],
            argv: list[str] | None) -> None:
    """Parse ``argv`` into a command's settings (``parser()``), apply ``settings.threads``
    (torch CPU threads) and ``run`` them.

    An expected failure, a bad input (ValueError and its subclasses: ActivationFileError,
    ProbeError, CheckpointError, ...) or one of the file system (OSError: a missing file, a
    folder where a file was expected, no permission, a full disk), exits with status 2 and
    ``error: <message>`` on one line of stderr, as a usage error does; any other exception is
    a bug and keeps its traceback. SIGTERM ends the command as Ctrl-C does, cleaning up.
    """
    try:
        with sigterm_exits():
            settings = parser().parse_args(argv)
            if settings.threads:
                torch.set_num_threads(settings.threads)
            run(settings)
    except (ValueError, OSError) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        sys.exit(2)
