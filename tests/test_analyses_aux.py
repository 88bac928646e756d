"""analyses.aux: each local module's aux net beside the linear probe of its layer."""
import csv
import json
import math

import pytest
import torch
from torch import nn

from analyses import aux as aux_cli
from analyses.activations import InputSelection, select_inputs
from training import data as datasets
from training.aux_nets import aux_logits, aux_predictions, load_local
from training.checkpoint import load_checkpoint
from training.train import TrainConfig, train

N_TEST = 150


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """AugLocal (aux nets on layers 0, 1), DGL (on 0, 1, 2) and BP, resnet8 on digits."""
    folder = tmp_path_factory.mktemp("aux")
    paths = {}
    for method, extra in (("auglocal", {"K": 4, "aux_depth": 1}), ("dgl", {"K": 4}),
                          ("bp", {})):
        paths[method] = folder / f"{method}.pt"
        train(TrainConfig(method=method, arch="resnet8", width=4, dataset="digits", epochs=1,
                          subset=128, batch_size=64, out=str(paths[method]), progress=False,
                          **extra))
    return paths


@pytest.fixture(scope="module")
def run(checkpoints, tmp_path_factory):
    """One CLI run on the local checkpoints: (output folder, rows by (method, layer))."""
    folder = tmp_path_factory.mktemp("aux-run")
    out = folder / "out"
    aux_cli.main(["--ckpt", str(checkpoints["auglocal"]), str(checkpoints["dgl"]),
                  "--n-train", "200", "--n-test",
                  str(N_TEST), "--out", str(out), "--cache", str(folder / "cache")])
    with (out / "aux.csv").open() as f:
        rows = {(r["method"], r["layer"]): r for r in csv.DictReader(f)}
    return out, rows


def _test_inputs():
    inputs = select_inputs({"name": "digits"}, InputSelection("test", N_TEST, 0))
    x, y, _ = next(datasets.eval_batches(inputs, len(inputs)))
    return x, y


@pytest.mark.parametrize("method", ["auglocal", "dgl"])
def test_aux_accuracy_is_a_hand_run_forward_of_the_aux_net(method, checkpoints, run):
    network = load_local(str(checkpoints[method]))
    x, y = _test_inputs()
    for key, net in network.aux.items():
        i = int(key)
        with torch.no_grad():
            predicted = net(network.model.layers[:i + 1](x)).argmax(1)
        row = run[1][(method, network.meta["layers"][i])]
        assert float(row["aux_acc"]) == pytest.approx(float((predicted == y).double().mean()))
        assert float(row["aux_low"]) <= float(row["aux_acc"]) <= float(row["aux_high"])
        assert int(row["aux_params"]) == sum(p.numel() for p in net.parameters())


def test_final_accuracy_is_the_networks_on_the_same_inputs(checkpoints, run):
    x, y = _test_inputs()
    for method in ("auglocal", "dgl"):
        model, meta = load_checkpoint(checkpoints[method])
        with torch.no_grad():
            accuracy = float((model(x).argmax(1) == y).double().mean())
        rows = [run[1][(method, layer)] for layer in meta["layers"]]
        assert all(float(r["final_acc"]) == pytest.approx(accuracy) for r in rows)


def test_rows_say_what_trains_each_layer(run):
    rows = run[1]
    losses = {m: [r["local_loss"] for (method, _), r in rows.items() if method == m]
              for m in ("auglocal", "dgl")}
    assert losses["auglocal"] == [aux_cli.AUX] * 2 + [aux_cli.LAST] * 2
    assert losses["dgl"] == [aux_cli.AUX] * 3 + [aux_cli.LAST]
    no_aux = [r for r in rows.values() if r["local_loss"] != aux_cli.AUX]
    assert all(math.isnan(float(r["aux_acc"])) and r["aux_params"] == "0" for r in no_aux)
    assert all(0 <= float(r["probe_acc"]) <= 1 for r in rows.values())


def test_cli_writes_table_json_plot_and_prints(run, checkpoints, capsys):
    out, rows = run
    assert {"aux.csv", "aux.json", "aux.png", "args.json"} <= {p.name for p in out.iterdir()}
    records = json.loads((out / "aux.json").read_text())["rows"]
    assert len(records) == len(rows) == 8
    assert json.loads((out / "args.json").read_text())["n_test"] == N_TEST


def test_bp_shows_probes_only(checkpoints, tmp_path, capsys):
    out = tmp_path / "o"
    aux_cli.main(["--ckpt", str(checkpoints["bp"]), "--n-train", "200", "--n-test", "100",
                  "--out", str(out), "--cache", str(tmp_path / "cache")])
    with (out / "aux.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["local_loss"] for r in rows] == [aux_cli.BACKPROP] * 4
    assert all(math.isnan(float(r["aux_acc"])) and 0 <= float(r["probe_acc"]) <= 1
               for r in rows)
    printed = capsys.readouterr().out
    assert "a backprop network has no aux nets: linear probes only" in printed
    assert "none (backprop)" in printed


def test_local_loss_of_a_layer_inside_a_module():
    assert aux_cli.local_loss(1, [0, 2], backprop=False) == "aux net of layer 2"
    assert aux_cli.local_loss(2, [0, 2], backprop=False) == aux_cli.AUX
    assert aux_cli.local_loss(3, [0, 2], backprop=False) == aux_cli.LAST


def test_a_local_checkpoint_without_aux_weights_is_refused(checkpoints, tmp_path, capsys):
    ckpt = torch.load(checkpoints["dgl"], weights_only=True)
    del ckpt["aux_state_dict"]
    path = tmp_path / "noaux.pt"
    torch.save(ckpt, path)
    with pytest.raises(SystemExit) as info:
        aux_cli.main(["--ckpt", str(path), "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    assert "without auxiliary weights" in capsys.readouterr().err


def test_a_missing_checkpoint_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        aux_cli.main(["--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")])
    assert "does not exist" in capsys.readouterr().err


def test_an_aux_net_that_is_not_a_classifier_is_refused():
    h = torch.randn(4, 3, 2, 2)
    with pytest.raises(ValueError, match=r"not logits \(4, 12\).* `classifier` attribute"):
        aux_logits(nn.Identity(), h, layer=2, num_classes=12)
    model = nn.Module()
    model.layers = nn.Sequential(nn.Identity())
    with pytest.raises(ValueError, match="aux net of layer 0 returns tuple"):
        aux_predictions(model, nn.ModuleDict({"0": _Pair()}), h, num_classes=12)
    with pytest.raises(ValueError, match=r"returns Tensor \(4, 12\), not logits \(4, 10\)"):
        aux_logits(nn.Flatten(), h, layer=0, num_classes=10)   # features, not 10 classes


def test_an_aux_net_with_a_classifier_part_is_scored_by_it():
    h = torch.randn(4, 3, 2, 2)
    net = _Pair()
    net.classifier = nn.Flatten()
    torch.testing.assert_close(aux_logits(net, h, layer=0, num_classes=12), h.flatten(1))


class _Pair(nn.Module):
    """Not a classifier: returns two tensors."""

    def forward(self, h):
        return h, h.flatten(1)


@pytest.mark.parametrize("kwargs, message", [
    ({"ckpt": ()}, "at least one checkpoint"), ({"level": 1.0}, "level must be"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        aux_cli.Settings(**{"ckpt": ("a.pt",), **kwargs})
