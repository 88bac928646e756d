import math

import pytest

from training.schedule import WARMUP_START_LR, default_warmup_epochs, learning_rate


def paper_per_epoch(e, lr0, epochs, warmup):
    """The paper's per-epoch formula (docs/auglocal.md, section "Optimiser and learning-rate
    schedule"; warm-up generalised)."""
    cosine = 0.5 * lr0 * (1 + math.cos(math.pi * e / epochs))
    if e <= warmup:
        return cosine * (e - 1) / warmup + 0.01 * (warmup + 1 - e) / warmup
    return cosine


def test_warmup_starts_at_001_and_meets_the_cosine():
    lr = lambda t: learning_rate(t, lr=0.8, epochs=400, warmup_epochs=10)  # noqa: E731
    assert lr(0) == pytest.approx(WARMUP_START_LR)
    assert lr(10 - 1e-9) == pytest.approx(lr(10), rel=1e-6)
    ts = [i / 10 for i in range(100)]
    assert all(a < b for a, b in zip(map(lr, ts), map(lr, ts[1:])))


def test_cosine_decays_monotonically_to_zero():
    values = [learning_rate(t / 10, lr=0.1, epochs=5, warmup_epochs=0) for t in range(50)]
    assert values[0] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[-1] < 0.001


def test_is_the_papers_per_epoch_schedule_evaluated_per_iteration():
    ours = lambda t: learning_rate(t, lr=0.8, epochs=400, warmup_epochs=10)  # noqa: E731
    for e in range(1, 401):
        paper = paper_per_epoch(e, 0.8, 400, 10)
        if e <= 10:  # warm-up: the paper's epoch e is our t = e − 1, up to cos(π/400) terms
            assert ours(e - 1) == pytest.approx(paper, rel=1e-3)
        else:        # cosine: the paper's epoch-e value is ours at the end of epoch e
            assert ours(e) == pytest.approx(paper, abs=1e-12)
            assert ours(e - 1) >= paper


def test_default_warmup_is_a_tenth():
    assert default_warmup_epochs(2) == 0
    assert default_warmup_epochs(30) == 3
