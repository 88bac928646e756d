"""The memory-budget rule family (repsim.budget): the solver against a brute-force scan, the
CKA batch size against the definition, and the promised RSS growth in a fresh process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from repsim.budget import (
    FIXED_OVERHEAD,
    GROWTH_FACTOR,
    check_budget,
    format_bytes,
    largest_fitting,
)
from repsim.cka import minibatch_batch_size, minibatch_memory
from repsim.extract import extract
from repsim.probe import probe_block_rows, probe_memory, projection_block_rows
from repsim.projection import projection_memory

MIB = 2**20


@given(st.lists(st.integers(0, 50), min_size=1, max_size=40), st.integers(-5, 1300))
def test_largest_fitting_is_the_last_fitting_b_of_a_non_decreasing_rule(steps, budget):
    costs = np.cumsum(steps)  # memory(b) for b = 1 … len(steps), non-decreasing
    fitting = [b for b in range(1, len(costs) + 1) if costs[b - 1] <= budget]
    found = largest_fitting(lambda b: int(costs[b - 1]), budget, 1, len(costs))
    assert found == (max(fitting) if fitting else 0)


@settings(deadline=None, max_examples=150)
@given(st.lists(st.integers(1, 600), min_size=1, max_size=4),
       st.lists(st.integers(1, 600), min_size=1, max_size=4),
       st.integers(4, 900), st.integers(1, 40 * MIB))
def test_the_cka_batch_size_is_the_largest_that_fits_and_leaves_a_valid_last_batch(
        widths_a, widths_b, n, budget):
    def valid(b):
        return (n % b == 0 or n % b >= 4) and minibatch_memory(widths_a, widths_b, b) <= budget
    candidates = [b for b in range(4, n + 1) if valid(b)]
    if candidates:
        assert minibatch_batch_size(widths_a, widths_b, n, budget) == max(candidates)
    else:
        with pytest.raises(ValueError, match="max_memory"):
            minibatch_batch_size(widths_a, widths_b, n, budget)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "64"])
def test_a_budget_that_is_not_a_positive_int_is_refused(bad):
    with pytest.raises(ValueError, match=f"max_memory must be a positive number of bytes, got "
                                         f"{bad!r}"):
        check_budget(bad)


UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def parse_bytes(text):
    """'1.5 KiB' → 1536.0, the number of bytes the text says."""
    number, unit = text.split()
    return float(number) * UNITS[unit]


@given(st.integers(0, 2**45))
def test_format_bytes_keeps_three_significant_digits_in_the_unit_under_1000(n):
    text = format_bytes(n)
    number, unit = text.split()
    assert 0 <= float(number) < 1000
    assert len(number.replace(".", "").lstrip("0")) <= 3  # at most 3 significant digits
    assert parse_bytes(text) == pytest.approx(n, rel=5e-3, abs=0.5)
    assert unit == "B" or float(number) >= 0.9  # the smallest unit that keeps it under 1000


def mentioned(message, before):
    """The byte counts in a message, each written as '<before><number> <unit>'."""
    return [parse_bytes(f"{m[0]} {m[1]}") for m in
            re.findall(before + r"([\d.]+(?:e[+-]?\d+)?) (B|KiB|MiB|GiB|TiB)\b", message)]


@pytest.mark.parametrize("refuse, need", [
    (lambda: probe_block_rows(2, 10, 2, 100), lambda: probe_memory(2, 10, 2, 1)),
    (lambda: projection_block_rows(20, 2, 10, 2, 100),
     lambda: max(projection_memory(20, 2, 10, 1), probe_memory(2, 10, 2, 10))),
    (lambda: minibatch_batch_size([3], [2], 50, 100), lambda: minibatch_memory([3], [2], 4)),
])
def test_budget_errors_write_small_sizes_in_a_readable_unit(refuse, need):
    """'at least 0.0 MiB' said nothing: every rule writes the budget and the need it could not
    meet in the unit that shows their digits."""
    with pytest.raises(ValueError) as caught:
        refuse()
    message = str(caught.value)
    assert mentioned(message, "max_memory=") == [pytest.approx(100, rel=5e-3)]
    (said,) = mentioned(message, r"(?:at least |needs )")
    assert said == pytest.approx(need(), rel=5e-3) and said > 0


CHILD = """
import json, sys
import numpy as np
from repsim.cka import cka_matrix
from repsim.store import ActivationFile

def status(key):  # VmRSS now, VmHWM the peak; unlike ru_maxrss, not inherited from pytest
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024

budget = int(sys.argv[3])
x = np.random.default_rng(0).standard_normal((64, 8))
cka_matrix({"x": x}, {"y": x}, batch_size=16)  # lazy imports, BLAS buffers: not the rule's
with ActivationFile(sys.argv[1]) as a, ActivationFile(sys.argv[2]) as b:
    before = status("VmRSS")
    result = cka_matrix(a, b, max_memory=budget)
    peak = status("VmHWM")
print(json.dumps({"growth": peak - before, "batch_size": result.batch_size}))
"""


@pytest.fixture(scope="module")
def files_larger_than_the_budget(tmp_path_factory):
    """Two activation files of 3,000 rows × 2 layers × 2,048 float32 features (47 MiB each)."""
    folder = tmp_path_factory.mktemp("budget")
    inputs = torch.randn(3000, 16, generator=torch.Generator().manual_seed(0))
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(16, 2048), nn.Tanh()).eval()
        batches = ((inputs[i:i + 500], torch.zeros(500, dtype=torch.long),
                    torch.arange(i, i + 500)) for i in range(0, 3000, 500))
        paths.append(extract(model, batches, ["0", "1"], folder / f"{seed}.h5",
                             compression=None, progress=False))
    return paths


def test_minibatch_cka_keeps_the_budget_promise_in_a_fresh_process(files_larger_than_the_budget):
    budget = 8 * MIB
    size = sum(Path(p).stat().st_size for p in files_larger_than_the_budget)
    assert size > GROWTH_FACTOR * budget + FIXED_OVERHEAD  # holding the files would break it
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, files_larger_than_the_budget),
                          str(budget)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert 4 <= measured["batch_size"] < 3000
    assert measured["growth"] <= GROWTH_FACTOR * budget + FIXED_OVERHEAD, (
        f"RSS grew by {measured['growth'] / MIB:.1f} MiB for a {budget / MIB:.0f} MiB budget")
