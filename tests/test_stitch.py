"""Model stitching: the library (repsim.stitch) on any model, and analyses.stitch end to end."""
import csv
import math

import pytest
import torch
from torch import nn

from analyses import stitch as stitch_cli
from repsim import stitch
from training.auglocal import layer_output_shapes
from training.checkpoint import load_checkpoint
from training.models import build_model


def _error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        stitch_cli.main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.rstrip("\n").splitlines()[-1]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model("resnet8", width=4, in_channels=1, num_classes=10).eval()
    with torch.no_grad():  # non-trivial BN statistics, so calibration matters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net


def _stitched(model, name, init, x):
    with torch.no_grad():
        h = stitch.layer_output(model, name, x)
    s = stitch.Stitch(h.shape[1], h.shape[1])
    stitch.init_stitch(s, init, h, h)
    return stitch.StitchedModel(model, name, model, name, s).eval()


@pytest.mark.parametrize("init", ["identity", "lstsq"])
def test_a_stitched_into_itself_at_start_is_a(model, init):
    """Identity stitch: exactly A; least squares of A's layer on itself: A up to the ridge."""
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
        for name in model.layer_names:
            got = _stitched(model, name, init, x)(x)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_only_the_stitch_trains(model):
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stitched = _stitched(model, "layers.s1b1", "identity", x)
    weight = stitched.stitch[0].weight.clone()
    losses = stitch.fit_stitch(stitched, [(x, y)], steps=3, lr=0.1)
    assert len(losses) == 3 and not stitched.stitch.training
    assert not torch.equal(stitched.stitch[0].weight, weight)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert list(stitched.state_dict()) == [f"stitch.{k}" for k in stitched.stitch.state_dict()]


def test_layer_output_stops_at_the_layer(model):
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = model.layers[:2](x)
        torch.testing.assert_close(stitch.layer_output(model, "layers.s1b1", x), expected)


def test_unknown_module_names_are_refused(model):
    with pytest.raises(stitch.StitchError, match="no module named 'layers.nope'"):
        stitch.named_module(model, "layers.nope")
    with pytest.raises(stitch.StitchError, match="no module named ''"):
        stitch.StitchedModel(model, "", model, "layers.stem", stitch.Stitch(4, 4))


class _Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 2, 1)

    def forward(self, x):
        return self.used(self.used(x[:, :1]).sum(1, keepdim=True)).mean((2, 3))


def test_a_module_that_does_not_run_once_is_refused():
    net = _Unused().eval()
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(stitch.StitchError, match="did not run"):
        stitch.layer_output(net, "unused", x)
    stitched = stitch.StitchedModel(_Unused(), "used", net, "used", stitch.Stitch(2, 2))
    with pytest.raises(stitch.StitchError, match="ran twice"):
        stitched(x)


def test_mismatched_shapes_are_refused(model):
    shapes = layer_output_shapes(model, (1, 8, 8))
    assert not stitch.stitchable(shapes[1], shapes[2])
    with pytest.raises(stitch.StitchError, match="same height and width"):
        stitch.check_stitchable("layers.s1b1", shapes[1], "layers.s2b1", shapes[2])
    wrong = stitch.StitchedModel(model, "layers.s1b1", model, "layers.s2b1", stitch.Stitch(4, 8))
    with pytest.raises(stitch.StitchError, match="the stitch gives"):
        wrong(torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize("call, message", [
    (lambda h: stitch.init_stitch(stitch.Stitch(4, 8), "identity", h), "as many channels"),
    (lambda h: stitch.init_stitch(stitch.Stitch(4, 4), "lstsq", h), "needs B's layer"),
    (lambda h: stitch.init_stitch(stitch.Stitch(4, 4), "zeros", h), "unknown stitch init"),
])
def test_bad_initialisations_are_refused(call, message):
    with pytest.raises(stitch.StitchError, match=message):
        call(torch.randn(2, 4, 3, 3))


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": -1, "lr": 0.1}, "steps must be"), ({"steps": 1, "lr": 0.0}, "lr must be"),
    ({"steps": 1, "lr": math.nan}, "lr must be"),
])
def test_bad_fit_settings_are_refused(model, kwargs, message):
    stitched = stitch.StitchedModel(model, "layers.stem", model, "layers.stem",
                                    stitch.Stitch(4, 4))
    with pytest.raises(stitch.StitchError, match=message):
        stitch.fit_stitch(stitched, [], **kwargs)
    with pytest.raises(stitch.StitchError, match="at least one training batch"):
        stitch.fit_stitch(stitched, [], steps=1, lr=0.1)


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_cli_a_into_a_with_an_identity_stitch_keeps_a_accuracy(tiny_checkpoints, tmp_path,
                                                               capsys):
    a = str(tiny_checkpoints["a"])
    out = tmp_path / "out"
    stitch_cli.main(["--a", a, "--b", a, "--init", "identity", "--steps", "10",
                     "--n-train", "256", "--n-test", "300", "--out", str(out)])
    rows = _rows(out / "stitch.csv")
    model, meta = load_checkpoint(a)
    assert [r["layer_a"] for r in rows] == meta["layers"] == [r["layer_b"] for r in rows]
    for r in rows:
        assert float(r["a_acc"]) == float(r["b_acc"])
        assert float(r["b_low"]) <= float(r["stitched_acc"]) <= float(r["b_high"])
    assert {"stitch.csv", "stitch.png", "args.json"} <= {p.name for p in out.iterdir()}
    printed = capsys.readouterr().out
    assert "a.pt (A) into a.pt (B)" in printed and "identity stitch, 10 steps" in printed


def test_cli_grid_skips_pairs_of_other_resolution(tiny_checkpoints, tmp_path, capsys):
    a, b = str(tiny_checkpoints["a"]), str(tiny_checkpoints["b"])
    out = tmp_path / "grid"
    stitch_cli.main(["--a", a, "--b", b, "--grid", "--steps", "1", "--n-train", "128",
                     "--n-test", "100", "--out", str(out)])
    rows = _rows(out / "stitch.csv")
    shapes = layer_output_shapes(load_checkpoint(a)[0], (1, 8, 8))
    assert len(rows) == len(shapes) ** 2
    for r in rows:
        same = shapes[int(r["i"])][1:] == shapes[int(r["j"])][1:]
        assert math.isnan(float(r["stitched_acc"])) != same
    assert (out / "stitch.png").exists()
    assert "no stitch (shapes)" in capsys.readouterr().out


def test_cli_refuses_unknown_layers_and_other_datasets(tiny_checkpoints, tmp_path, capsys):
    a = str(tiny_checkpoints["a"])
    message = _error(capsys, ["--a", a, "--b", a, "--layers", "layers.nope",
                              "--out", str(tmp_path / "x")])
    assert "no module named 'layers.nope'" in message
    ckpt = torch.load(a, weights_only=True)
    ckpt["dataset"]["name"] = "fashion-mnist"
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    message = _error(capsys, ["--a", a, "--b", str(other), "--out", str(tmp_path / "y")])
    assert "stitch networks of one dataset" in message


def test_layer_pairs_need_equal_depths_without_grid():
    assert stitch_cli.layer_pairs(["x", "y"], ["u", "v", "w"], grid=True)[-1] == (1, 2)
    with pytest.raises(ValueError, match="pass --grid"):
        stitch_cli.layer_pairs(["x", "y"], ["u", "v", "w"], grid=False)


@pytest.mark.parametrize("field, value, message", [
    ("init", "zeros", "--init must be"), ("steps", -1, "--steps must be"),
    ("batch_size", 0, "--batch-size must be"), ("lr", -1.0, "--lr must be"),
    ("level", 1.5, "level must be"),
])
def test_bad_settings_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        stitch_cli.Settings(a="a.pt", b="b.pt", **{field: value})
