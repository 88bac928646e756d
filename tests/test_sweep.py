"""analyses.sweep: the AugLocal ablation grid on a tiny setting, its table, plot and errors."""

import csv
import json

import numpy as np
import pytest

from analyses import sweep
from analyses.activations import activations_of
from repsim.cka import linear_cka
from training.checkpoint import checkpoint_meta

TINY = ["--arch", "resnet8", "--width", "4", "--dataset", "digits", "--subset", "128",
        "--epochs", "1", "--batch-size", "64", "--samplings", "uniform", "random",
        "--depths", "1", "2", "--n", "100", "--no-progress"]


def test_sweep_writes_one_row_per_run_with_ratios_and_cka(tmp_path):
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    sweep.main([*TINY, "--out", str(out), "--cache", str(cache)])
    assert {"sweep.csv", "sweep.png", "args.json", "runs"} <= {p.name for p in out.iterdir()}
    with (out / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["bp", "uniform_d1", "uniform_d2", "random_d1",
                                        "random_d2"]
    bp = rows[0]
    assert float(bp["memory_ratio"]) == 1 and float(bp["macs_ratio"]) == 1
    assert float(bp["cka_to_bp"]) == pytest.approx(1)
    for r in rows[1:]:
        assert 0 <= float(r["cka_to_bp"]) <= 1 and float(r["macs_ratio"]) > 1
        meta = checkpoint_meta(out / "runs" / f"auglocal_{r['run']}.pt")
        assert meta["method"]["aux_depth"] == int(r["aux_depth"])
        assert meta["method"].get("aux_sampling") == (None if r["sampling"] == "uniform"
                                                      else "random")
    # one row's CKA from the cached activations, computed apart
    kwargs = dict(n=100, reductions=("flatten",), cache=cache, progress=False)
    with activations_of(out / "runs" / "bp.pt", **kwargs) as a, \
            activations_of(out / "runs" / "auglocal_random_d2.pt", **kwargs) as b:
        expected = [linear_cka(a.read(layer, "flatten"), b.read(layer, "flatten"))
                    for layer in a.layers]
    np.testing.assert_allclose(json.loads(rows[4]["cka_layers"]), expected, atol=1e-9)
    assert float(rows[4]["cka_to_bp"]) == pytest.approx(np.mean(expected))


@pytest.mark.parametrize("argv, message", [
    (["--samplings", "sideways"], "invalid choice: 'sideways'"),
    (["--depths", "0"], "--depths [0]: give whole numbers >= 1"),
])
def test_bad_grids_are_refused(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([*argv, "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
