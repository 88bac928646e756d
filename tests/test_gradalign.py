"""Gradient alignment of local and end-to-end gradients: its exact cases and analyses.gradalign."""
import csv
import math

import numpy as np
import pytest
import torch
from torch import nn

from analyses import gradalign
from training.aux_nets import fresh_local_step, gradient_alignment, load_local
from training.checkpoint import CheckpointError
from training.local import LocalStep, MethodConfig
from training.models import build_model
from training.train import TrainConfig, train


def _model():
    torch.manual_seed(0)
    return build_model("resnet8", width=4, in_channels=1, num_classes=10).double()


def _batches(k=3, n=16):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 1, 8, 8, generator=gen, dtype=torch.float64),
             torch.randint(0, 10, (n,), generator=gen)) for _ in range(k)]


def test_the_last_module_is_aligned_exactly():
    """DGL with K = 3 puts aux nets on layers 0 and 1; layers 2, 3 and the head form the last
    module, whose loss is the output loss itself."""
    model = _model()
    step = MethodConfig("dgl", K=3).build_step(model, num_classes=10, input_size=(1, 8, 8))
    cosines = gradient_alignment(step, model, _batches())
    assert cosines.shape == (3, 4)
    np.testing.assert_allclose(cosines[:, 2:], 1.0, rtol=0, atol=1e-12)
    assert np.all(np.abs(cosines[:, :2]) < 0.99)


def test_an_aux_net_that_is_the_rest_of_the_network_is_aligned_exactly():
    model = _model()
    rest = nn.Sequential(*model.layers[1:], model.head)  # the same modules: shared weights
    cosines = gradient_alignment(LocalStep(model, nn.ModuleDict({"0": rest})), model,
                                 _batches())
    np.testing.assert_allclose(cosines, 1.0, rtol=0, atol=1e-12)


def test_alignment_leaves_weights_statistics_and_gradients_as_they_were():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = fresh_local_step(model, "auglocal", seed=0, num_classes=10, input_size=(1, 8, 8))
    gradient_alignment(step, model, _batches(k=2))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in step.trainable.parameters())


def test_fresh_aux_nets_are_seeded_and_leave_the_global_generator_alone():
    model = _model()
    state = torch.get_rng_state()
    steps = [fresh_local_step(model, "dgl", seed=s, num_classes=10, input_size=(1, 8, 8))
             for s in (3, 3, 4)]
    assert torch.equal(torch.get_rng_state(), state)
    weights = [s.aux["0"][1].weight for s in steps]  # the first 1×1 conv of layer 0's aux net
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    assert sorted(steps[0].aux) == ["0", "1", "2"]  # one module per layer, the last: output
    with pytest.raises(ValueError, match="fresh aux nets are one of dgl, auglocal"):
        fresh_local_step(model, "infopro", seed=0, num_classes=10, input_size=(1, 8, 8))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gradalign")
    paths = {"auglocal": folder / "al.pt", "bp": folder / "bp.pt"}
    for method, extra in (("auglocal", {"K": 3, "aux_depth": 1}), ("bp", {})):
        train(TrainConfig(method=method, arch="resnet8", width=4, dataset="digits", epochs=1,
                          subset=128, batch_size=64, out=str(paths[method]), progress=False,
                          **extra))
    return paths


def test_cli_writes_curves_table_and_plot(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    gradalign.main(["--ckpt", str(checkpoints["auglocal"]), str(checkpoints["bp"]),
                    "--batches", "3", "--batch-size", "16", "--out", str(out)])
    assert {"gradalign.csv", "gradalign_batches.csv", "gradalign.png", "args.json"} <= {
        p.name for p in out.iterdir()}
    with (out / "gradalign.csv").open() as f:
        rows = list(csv.DictReader(f))
    local = [r for r in rows if r["method"] == "auglocal"]
    # K = 3, aux_depth = 1: one aux net, on layer 0; layers 1… form the last module
    assert [float(r["mean"]) == pytest.approx(1.0, abs=1e-5) for r in local] == \
        [False, True, True, True]
    bp = [r for r in rows if r["method"] == "bp"]
    assert "fresh dgl aux nets (seed 0)" in bp[0]["model"] and len(bp) == 4
    with (out / "gradalign_batches.csv").open() as f:
        batches = list(csv.DictReader(f))
    assert len(batches) == 3 * len(rows)
    first = [float(b["cosine"]) for b in batches
             if b["model"] == rows[0]["model"] and b["layer"] == rows[0]["layer"]]
    assert float(rows[0]["mean"]) == pytest.approx(np.mean(first))
    assert float(rows[0]["low"]) < float(rows[0]["mean"]) < float(rows[0]["high"])
    printed = capsys.readouterr().out
    assert "Student-t over batches" in printed and "fresh dgl aux nets" in printed


def test_cli_bp_aux_flag_chooses_the_fresh_aux_nets(checkpoints, tmp_path):
    settings = gradalign.Settings(ckpt=(str(checkpoints["bp"]),), batches=2, batch_size=8,
                                  bp_aux="auglocal", aux_seed=3, out=str(tmp_path / "o"))
    result = gradalign.run(settings)[0]
    assert "fresh auglocal aux nets (seed 3)" in result.model
    assert not math.isnan(result.mean[0])


def test_a_local_checkpoint_without_aux_weights_is_refused(checkpoints, tmp_path, capsys):
    ckpt = torch.load(checkpoints["auglocal"], weights_only=True)
    ckpt["aux_state_dict"] = None
    path = tmp_path / "noaux.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="without auxiliary weights"):
        load_local(str(path))
    with pytest.raises(SystemExit):
        gradalign.main(["--ckpt", str(path), "--batches", "2", "--out", str(tmp_path / "o")])
    assert "without auxiliary weights" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--batches", "1"], "--batches"), (["--bp-aux", "infopro"], "--bp-aux"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_bad_options_are_refused(argv, message, checkpoints, capsys):
    with pytest.raises(SystemExit) as info:
        gradalign.main(["--ckpt", str(checkpoints["bp"]), *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, message", [
    ({"batches": 1}, "at least 2"), ({"batch_size": 0}, "--batch-size must be"),
    ({"bp_aux": "x"}, "--bp-aux must be"), ({"ckpt": ()}, "at least one checkpoint"),
    ({"level": 0}, "level must be"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gradalign.Settings(**{"ckpt": ("a.pt",), **kwargs})


def test_more_batches_than_the_split_holds_are_refused(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit):
        gradalign.main(["--ckpt", str(checkpoints["bp"]), "--batches", "2", "--batch-size",
                        "5000", "--out", str(tmp_path / "o")])
    assert "ask for fewer" in capsys.readouterr().err
