"""What every analysis command shares: user errors become one line, not a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def run_cli(parse_args: Callable[[list[str] | None], argparse.Namespace],
            run: Callable[[argparse.Namespace], object], argv: list[str] | None) -> None:
    """Parse ``argv`` and run; a bad input (ValueError, FileNotFoundError) exits with
    ``error: <message>`` and status 1."""
    try:
        run(parse_args(argv))
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
