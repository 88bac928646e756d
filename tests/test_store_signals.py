"""repsim.store.ActivationWriter under signals and crashes: SIGTERM cleans up like SIGINT,
and the temporary files of writers that died are removed by the next write of the same target,
never those of a writer that still runs."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from repsim.store import ActivationFile, ActivationWriter

ROOT = Path(__file__).resolve().parents[1]

# Extracts a conv layer of random inputs to argv[1], slowly (one batch every 10 ms, for up to
# a minute), so the test can stop it while the temporary file is being written.
SLOW_EXTRACTION = """
import sys, time
import torch
from torch import nn
from repsim.extract import extract

def batches():
    for i in range(6000):
        time.sleep(0.01)
        yield torch.randn(10, 3, 16, 16), torch.zeros(10), torch.arange(10 * i, 10 * i + 10)

extract(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)).eval(), batches(), ["0"], sys.argv[1],
        progress=False)
"""

# Opens a writer on argv[1], appends one batch, says so, then waits for a line on stdin:
# "finish" closes the writer normally, "kill" dies by SIGKILL (no cleanup can run).
HELD_WRITER = """
import os, signal, sys
import numpy as np
from repsim.store import ActivationWriter

writer = ActivationWriter(sys.argv[1], ["fc"], ["flatten"])
rows = np.ones((3, 2), dtype=np.float32)
writer.append({"fc": {"flatten": rows}}, {"fc": (2,)}, np.zeros(3), np.arange(3))
print("appended", flush=True)
if sys.stdin.readline().strip() == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
with writer:
    pass
"""


def start(script: str, target: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(target)],
                            cwd=ROOT, **kwargs)


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def write_small(path: Path, value: float = 1.0) -> None:
    with ActivationWriter(path, ["fc"], ["flatten"]) as writer:
        writer.append({"fc": {"flatten": np.full((4, 2), value, dtype=np.float32)}},
                      {"fc": (2,)}, np.zeros(4), np.arange(4))


def test_sigterm_during_extraction_leaves_no_debris_and_the_previous_file_intact(tmp_path):
    target = tmp_path / "a.h5"
    write_small(target, 7.0)
    before = target.read_bytes()
    child = start(SLOW_EXTRACTION, target, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not temps(tmp_path) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert temps(tmp_path), f"the child wrote no temporary file (exit {child.poll()})"
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 128 + signal.SIGTERM, stderr.decode()
    assert b"Traceback" not in stderr
    assert temps(tmp_path) == []
    assert target.read_bytes() == before
    with ActivationFile(target) as f:
        np.testing.assert_array_equal(f.read("fc", "flatten"), np.full((4, 2), 7.0))


@pytest.fixture
def default_sigterm():
    """SIGTERM with its default action during the test, whatever the test runner set."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_handler_is_installed_while_writing_and_restored_after(tmp_path,
                                                                      default_sigterm):
    with ActivationWriter(tmp_path / "a.h5", ["fc"], ["flatten"]) as writer:
        assert callable(signal.getsignal(signal.SIGTERM))
        writer.append({"fc": {"flatten": np.ones((2, 2), np.float32)}}, {"fc": (2,)},
                      np.zeros(2), np.arange(2))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(ValueError), ActivationWriter(tmp_path / "b.h5", ["fc"], ["flatten"]):
        raise ValueError("failed")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_sigterm_handler_of_the_caller_is_left_alone(tmp_path):
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with ActivationWriter(tmp_path / "a.h5", ["fc"], ["flatten"]) as writer:
            assert signal.getsignal(signal.SIGTERM) is mine
            writer.append({"fc": {"flatten": np.ones((2, 2), np.float32)}}, {"fc": (2,)},
                          np.zeros(2), np.arange(2))
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_writer_outside_the_main_thread_works(tmp_path):
    errors = []

    def work():
        try:
            write_small(tmp_path / "a.h5")
        except BaseException as err:  # noqa: BLE001 -- reported to the main thread below
            errors.append(err)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors == []
    with ActivationFile(tmp_path / "a.h5") as f:
        assert f.n == 4


def test_next_write_removes_the_temporary_file_of_a_killed_writer_only(tmp_path):
    target = tmp_path / "a.h5"
    dead = start(HELD_WRITER, target, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    live = start(HELD_WRITER, target, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    other = start(HELD_WRITER, tmp_path / "b.h5", stdin=subprocess.PIPE,
                  stdout=subprocess.PIPE, text=True)
    try:
        for child in (dead, live, other):
            assert child.stdout.readline() == "appended\n"
        before = temps(tmp_path)
        dead.communicate("kill\n", timeout=60)
        assert dead.returncode == -signal.SIGKILL
        other.communicate("kill\n", timeout=60)
        assert temps(tmp_path) == before  # what a kill leaves behind
        write_small(target)
        left = temps(tmp_path)
        assert len(left) == 2 and [n for n in left if n.startswith(".b.h5.")]
        live.communicate("finish\n", timeout=60)  # its temporary file was not touched
        assert live.returncode == 0
    finally:
        for child in (dead, live, other):
            child.kill()
    assert [n for n in temps(tmp_path) if n.startswith(".a.h5.")] == []
    with ActivationFile(target) as f:
        np.testing.assert_array_equal(f.read("fc", "flatten"), np.ones((3, 2)))
