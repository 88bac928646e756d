"""What the large-data benchmarks (``cka_large``, ``probe_large``) share: peak-memory
measurement in child processes and a scratch folder for their files.

Each measured run happens in a fresh child process: Linux carries ``ru_maxrss`` across
``fork``/``exec``, so a parent that never imports PyTorch stays small and each child's peak
is its own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

MIB = 2**20


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(module: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run ``python -m module args`` from the repository root in a fresh process; the JSON of
    its last output line."""
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                         env={**os.environ, **(env or {})},
                         cwd=Path(__file__).resolve().parents[1])
    if out.returncode:
        sys.exit(f"python -m {module} {' '.join(args)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextmanager
def scratch_folder(folder: str | None, keep: bool, prefix: str,
                   names: Sequence[str]) -> Iterator[Path]:
    """The folder a benchmark writes ``names`` into: ``folder`` (created if missing) or a new
    temporary one. On exit, unless ``keep``, those files are deleted, and a temporary folder
    with them; nothing else in a given folder is touched."""
    path = Path(folder) if folder else Path(tempfile.mkdtemp(prefix=prefix))
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        if not keep:
            for name in names:
                (path / name).unlink(missing_ok=True)
            if not folder:
                path.rmdir()
