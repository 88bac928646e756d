"""What every analysis command shares: ``--threads``, ``--max-memory`` in MiB, and errors as
one line, not a traceback."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

import torch


def run_cli(parse_args: Callable[[list[str] | None], argparse.Namespace],
            run: Callable[[argparse.Namespace], object], argv: list[str] | None) -> None:
    """Parse ``argv``, apply ``--threads`` (torch CPU threads) and run; a bad input
    (ValueError, FileNotFoundError) exits with ``error: <message>`` and status 1."""
    try:
        args = parse_args(argv)
        if args.threads:
            torch.set_num_threads(args.threads)
        run(args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")


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
