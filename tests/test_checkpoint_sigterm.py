"""Fault injection: SIGTERM while a checkpoint is being written leaves no temporary file and
the previous checkpoint intact; the process still ends as SIGTERM asks."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from training.checkpoint import atomic_torch_save

ROOT = Path(__file__).resolve().parents[1]

# Saves ~256 MiB to argv[1] in many records, so the write lasts long enough to be interrupted.
SAVER = textwrap.dedent("""
    import sys
    import torch
    from training.checkpoint import atomic_torch_save
    big = {f"t{i}": torch.ones(1 << 20) for i in range(64)}
    print("ready", flush=True)
    atomic_torch_save(big, sys.argv[1])
    print("saved", flush=True)
""")


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_sigterm_during_a_save_leaves_no_debris_and_the_previous_file(tmp_path):
    target = tmp_path / "run.pt"
    previous = {"epoch": 1, "w": torch.arange(5.0)}
    atomic_torch_save(previous, target)
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(target)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.PIPE, text=True)
    try:
        assert saver.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 60
        while not temporaries(tmp_path):   # the moment the temporary file appears
            assert saver.poll() is None and time.monotonic() < deadline
        saver.send_signal(signal.SIGTERM)
        saver.wait(timeout=60)
    finally:
        saver.kill()
    assert saver.returncode == -signal.SIGTERM   # it still ends as SIGTERM asks
    assert "saved" not in saver.stdout.read()
    assert temporaries(tmp_path) == [] and [p.name for p in tmp_path.iterdir()] == ["run.pt"]
    loaded = torch.load(target, weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], previous["w"])
