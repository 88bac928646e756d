"""Reconstruction decoders (repsim.decoder) and information along depth
(analyses.information)."""
import csv
import json
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.datasets import load_digits
from sklearn.metrics import log_loss
from torch import nn

from analyses import information as information_cli
from repsim.decoder import Decoder, DecoderError, DecoderSettings, reconstruct_layers
from repsim.probe import LinearProbe

FEW = DecoderSettings(steps=3, batch_size=8, n_show=2)


@pytest.fixture(scope="module")
def digits():
    """(train (1000, 1, 8, 8), test (200, 1, 8, 8)) digit images in [0, 1]."""
    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16
    return x[:1000], x[1000:1200]


def _bottleneck_model():
    """An identity layer, then a fixed random projection of each 8×8 image to 2×2 numbers,
    then those 4 numbers as a vector."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(identity=nn.Identity(),
                                     squeeze=nn.Conv2d(1, 1, 4, stride=4, bias=False),
                                     flat=nn.Flatten()))


def test_identity_layer_reconstructs_better_than_a_random_bottleneck(digits):
    train, test = digits
    table = reconstruct_layers(_bottleneck_model(), ["identity", "squeeze", "flat"], train,
                               test, settings=DecoderSettings(steps=120, n_show=4))
    identity, squeeze, flat = table.rows
    assert identity.psnr > squeeze.psnr + 6 and identity.psnr > flat.psnr + 6  # dB
    assert identity.mse_high < squeeze.mse_low
    assert identity.mse < table.baseline_mse / 5
    assert (identity.shape, squeeze.shape, flat.shape) == ("1x8x8", "1x2x2", "4")
    assert table.originals.shape == (4, 1, 8, 8) and table.pictures["flat"].shape == (4, 1, 8, 8)
    assert np.allclose(table.originals, test[:4].numpy())


def test_scores_agree_with_the_reported_pictures_and_a_numpy_baseline(digits):
    train, test = digits
    table = reconstruct_layers(_bottleneck_model(), ["identity"], train, test[:40],
                               settings=DecoderSettings(steps=3, batch_size=8, n_show=40))
    [row] = table.rows
    errors = ((table.pictures["identity"] - test[:40].numpy()) ** 2).reshape(40, -1).mean(1)
    assert row.mse == pytest.approx(errors.mean(), rel=1e-5)
    assert row.psnr == pytest.approx(10 * math.log10(1 / errors.mean()), rel=1e-5)
    assert row.mse_low < row.mse < row.mse_high and row.psnr_low < row.psnr < row.psnr_high
    mean_image = train.numpy().mean(0)
    baseline = ((test[:40].numpy() - mean_image) ** 2).mean()
    assert table.baseline_mse == pytest.approx(baseline, rel=1e-5)


def test_unnormalise_sets_the_units_of_the_error(digits):
    train, test = digits
    model = _bottleneck_model()
    plain = reconstruct_layers(model, ["identity"], train, test, settings=FEW)
    scaled = reconstruct_layers(model, ["identity"], (train - 0.3) / 0.4, (test - 0.3) / 0.4,
                                settings=FEW, unnormalise=lambda x: x * 0.4 + 0.3)
    assert scaled.baseline_mse == pytest.approx(plain.baseline_mse, rel=1e-5)
    assert np.allclose(scaled.originals, plain.originals, atol=1e-6)


def test_the_same_seed_gives_the_same_decoders(digits):
    train, test = digits
    runs = [reconstruct_layers(_bottleneck_model(), ["squeeze"], train, test, settings=FEW)
            for _ in range(2)]
    assert runs[0].rows == runs[1].rows
    other = reconstruct_layers(_bottleneck_model(), ["squeeze"], train, test,
                               settings=DecoderSettings(steps=3, batch_size=8, seed=1))
    assert other.rows != runs[0].rows


def test_decoder_maps_conv_and_vector_outputs_to_the_image_shape():
    for in_shape, h in (((5, 3, 3), torch.zeros(2, 5, 3, 3)), ((7,), torch.zeros(2, 7))):
        assert Decoder(in_shape, (3, 10, 10), 4)(h).shape == (2, 3, 10, 10)


# --- refusals --------------------------------------------------------------------------------

def test_refuses_an_unknown_layer(digits):
    with pytest.raises(DecoderError, match="'squeez' is not a module.*squeeze"):
        reconstruct_layers(_bottleneck_model(), ["squeez"], *digits, settings=FEW)
    with pytest.raises(DecoderError, match="non-empty list"):
        reconstruct_layers(_bottleneck_model(), [], *digits, settings=FEW)


def test_refuses_a_layer_output_that_is_neither_a_map_nor_a_vector(digits):
    model = nn.Sequential(OrderedDict(seq=nn.Flatten(2)))   # (B, 1, 64)
    with pytest.raises(DecoderError, match=r"got \(1, 64\)"):
        reconstruct_layers(model, ["seq"], *digits, settings=FEW)


def test_refuses_bad_images(digits):
    train, test = digits
    model = _bottleneck_model()
    with pytest.raises(DecoderError, match=r"train images must be a \(N, C, H, W\) tensor"):
        reconstruct_layers(model, ["identity"], train[:, 0], test, settings=FEW)
    with pytest.raises(DecoderError, match="pass images of one dataset"):
        reconstruct_layers(model, ["identity"], train, test[:, :, :4], settings=FEW)
    with pytest.raises(DecoderError, match="5 train images are fewer than batch_size 8"):
        reconstruct_layers(model, ["identity"], train[:5], test, settings=FEW)
    with pytest.raises(DecoderError, match="1 test image"):
        reconstruct_layers(model, ["identity"], train, test[:1], settings=FEW)


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "steps must be a positive int"), ("hidden", 2.5, "hidden must be"),
    ("lr", -1.0, "lr must be a positive number"), ("n_show", -1, "n_show must be"),
    ("level", 1.5, "level must be")])
def test_decoder_settings_refuse_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        DecoderSettings(**{field: value})


# --- label information -------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 4])
def test_probe_cross_entropy_matches_sklearn_log_loss(k):
    rng = np.random.default_rng(k)
    x, y = rng.standard_normal((120, 5)), np.arange(120) % k
    x[:, 0] += y
    probe = LinearProbe(Cs=(1.0,), cv=2).fit(x[:80], y[:80])
    scores = probe.decision_function(x[80:])
    proba = softmax(np.stack([np.zeros_like(scores), scores], 1) if k == 2 else scores, axis=1)
    assert information_cli.cross_entropy(probe, x[80:], y[80:]) == pytest.approx(
        log_loss(y[80:], proba, labels=probe.classes_), rel=1e-6)


def test_prior_cross_entropy_is_the_entropy_of_matching_frequencies():
    y = np.array([0, 0, 1, 2])
    expected = -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
    assert information_cli.prior_cross_entropy(y, y) == pytest.approx(expected)


# --- the command -----------------------------------------------------------------------------

def test_information_cli_writes_tables_plots_and_pictures(tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    a, b = (str(tiny_checkpoints[k]) for k in "ab")
    information_cli.main(["--ckpt", f"bp={a},{b}", "--n-train", "200", "--n-test", "60",
                          "--steps", "4", "--n-show", "3", "--out", str(out),
                          "--cache", str(tmp_path / "cache")])
    assert {p.name for p in out.iterdir()} >= {"information.csv", "information_groups.csv",
                                               "information.json", "information.png",
                                               "reconstructions", "args.json"}
    assert {p.name for p in (out / "reconstructions").iterdir()} == {"a.png", "b.png"}
    with (out / "information.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and rows[0]["shape"] == "4x8x8" and rows[3]["shape"] == "16x2x2"
    for row in rows:
        assert float(row["prior_ce"]) == pytest.approx(math.log(10), rel=1e-6)   # balanced
        assert float(row["label_bits"]) == pytest.approx(
            (float(row["prior_ce"]) - float(row["probe_ce"])) / math.log(2))
        assert float(row["psnr"]) == pytest.approx(10 * math.log10(1 / float(row["mse"])))
        assert float(row["probe_low"]) <= float(row["probe_acc"]) <= float(row["probe_high"])
    record = json.loads((out / "information.json").read_text())
    assert record["decoder"]["steps"] == 4 and record["probe_reduction"] == "gap"
    assert record["groups"]["bp"]["psnr"]["interval"] == "Student-t over 2 seeds"
    printed = capsys.readouterr().out
    assert "information along depth" in printed and "seed groups" in printed


def test_information_cli_refuses_an_unknown_layer(tiny_checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        information_cli.main(["--ckpt", str(tiny_checkpoints["a"]), "--layers", "layers.s9b9",
                              "--n-train", "200", "--n-test", "60", "--steps", "2",
                              "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")])
    assert info.value.code == 2
    assert "'layers.s9b9' is not a module" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_information_cli_refuses_bad_budgets(tmp_path, capsys):
    for flag, value in (("--steps", "0"), ("--lr", "0"), ("--folds", "1")):
        with pytest.raises(SystemExit) as info:
            information_cli.main(["--ckpt", "a.pt", flag, value])
        assert info.value.code == 2
        assert flag in capsys.readouterr().err


def test_report_sections_link_the_files_they_ran(tiny_checkpoints, tmp_path, monkeypatch):
    from analyses import report, report_sections

    monkeypatch.setattr(report_sections, "REPORT_INFORMATION",
                        {"n_train": 200, "n_test": 60, "steps": 2})
    settings = report.Settings(ckpt=(str(tiny_checkpoints["a"]), str(tiny_checkpoints["b"])),
                               n_train=300, n_test=120, cache=str(tmp_path / "cache"))
    out = tmp_path / "report"
    out.mkdir()
    text = "\n".join(report_sections.depth_sections(settings, out, out))
    for link in ("geometry/geometry.png", "information/information.png",
                 "information/reconstructions/a.png"):
        assert f"]({link})" in text and (out / link).exists()
    with (out / "geometry" / "geometry.csv").open() as f:
        stem = next(r for r in csv.DictReader(f) if r["layer"] == "layers.stem"
                    and r["model"].endswith("(a.pt)"))
    assert f"| stem | {float(stem['participation_ratio']):.3g} / " \
           f"{float(stem['ncc_acc']):.3g} |" in text
