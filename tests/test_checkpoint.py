import pickle

import pytest
import torch

import training.checkpoint as checkpoint
from training import CheckpointError, checkpoint_meta, load_checkpoint
from training.checkpoint import (FORMAT, FORMAT_VERSION, arch_config, atomic_torch_save,
                                 check_resume, checkpoint_dict, read_checkpoint)
from training.models import ResNet, build_model


@pytest.fixture
def trained(tiny_checkpoints):
    return tiny_checkpoints["a"]


@pytest.fixture(params=[load_checkpoint, checkpoint_meta, read_checkpoint],
                ids=["load_checkpoint", "checkpoint_meta", "read_checkpoint"])
def reader(request):
    """Each public reader: they share one validation, so every refusal holds for all."""
    return request.param


def test_round_trip_reproduces_the_logits_exactly(trained):
    raw = torch.load(trained, weights_only=True)
    model, meta = load_checkpoint(trained)
    assert not model.training
    reference = type(model)(1, width=4, in_channels=1, num_classes=10)
    reference.load_state_dict(raw["state_dict"])
    reference.eval()
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert meta["layers"] == model.layer_names
    assert meta["arch"] == {"name": "resnet8", "depth": 8, "width": 4, "in_channels": 1,
                            "num_classes": 10}
    assert meta["method"]["name"] == "bp" and meta["dataset"]["name"] == "digits"
    assert "state_dict" not in meta and "optimizer" not in meta


def test_missing_file(tmp_path, reader):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*--out .*nope\.pt"):
        reader(tmp_path / "nope.pt")


def test_checkpoints_get_the_usual_file_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        atomic_torch_save({"a": 1}, tmp_path / "x.pt")
    finally:
        os.umask(mask)
    assert (tmp_path / "x.pt").stat().st_mode & 0o777 == 0o644


def test_text_file_is_not_a_checkpoint(tmp_path, reader):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        reader(path)


def test_torch_file_without_the_format_tag(tmp_path, reader):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a checkpoint of this toolkit"):
        reader(path)


def _rewrite(src, dst, **changes):
    ckpt = torch.load(src, weights_only=True)
    ckpt.update(changes)
    torch.save(ckpt, dst)
    return dst


def test_unknown_format_version(trained, tmp_path, reader):
    path = _rewrite(trained, tmp_path / "v99.pt", format_version=99)
    with pytest.raises(CheckpointError, match="format version 99.*reads versions 1, 2"):
        reader(path)


def test_unknown_architecture(trained, tmp_path):
    ckpt = torch.load(trained, weights_only=True)
    path = _rewrite(trained, tmp_path / "arch.pt", arch={**ckpt["arch"], "name": "vgg11"})
    with pytest.raises(CheckpointError, match="'vgg11' is unknown"):
        load_checkpoint(path)


@pytest.mark.parametrize("version", [1, FORMAT_VERSION])
def test_missing_keys_are_reported(tmp_path, reader, version):
    path = tmp_path / "partial.pt"
    torch.save({"format": FORMAT, "format_version": version}, path)
    with pytest.raises(CheckpointError, match="lacks the keys.*'arch'"):
        reader(path)


def test_weights_that_do_not_fit_the_architecture(trained, tmp_path):
    ckpt = torch.load(trained, weights_only=True)
    path = _rewrite(trained, tmp_path / "wide.pt", arch={**ckpt["arch"], "width": 8})
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint(path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_code_running_pickle_is_refused_without_running(tmp_path, reader):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": _Payload(marker)}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        reader(path)
    assert not marker.exists()


def test_atomic_save_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "x.pt"
    atomic_torch_save({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"a": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_truncated_checkpoint_is_refused(trained, tmp_path, reader):
    path = tmp_path / "cut.pt"
    path.write_bytes(trained.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a"):
        reader(path)


def test_checkpoint_meta_is_load_checkpoints_meta_without_building_a_model(trained,
                                                                          monkeypatch):
    _, expected = load_checkpoint(trained)

    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint_meta built a model")

    monkeypatch.setattr(checkpoint, "model_from_arch", refuse)
    monkeypatch.setattr(checkpoint, "build_model", refuse)
    monkeypatch.setattr(ResNet, "__init__", refuse)
    meta = checkpoint_meta(trained)
    assert meta == expected
    assert list(meta) == list(expected)  # the same keys in the same order
    assert not {"state_dict", "aux_state_dict", "optimizer"} & meta.keys()


def test_checkpoint_meta_maps_the_file_instead_of_reading_the_weights(trained, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    checkpoint_meta(trained)
    assert [(c.get("mmap"), c.get("weights_only")) for c in calls] == [(True, True)]


def test_checkpoint_dict_round_trips_through_the_readers(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet8", width=4, in_channels=1, num_classes=10)
    history = [{"epoch": 1, "test_acc": 0.5, "epoch_seconds": 2.0},
               {"epoch": 2, "test_acc": 0.75, "epoch_seconds": 3.0}]
    ckpt = checkpoint_dict(
        arch=arch_config("resnet8", model, 1, 10), model=model,
        method={"name": "bp", "K": None, "aux_depth": None, "pyramid_coeff": None},
        dataset={"name": "digits", "subset": None}, aux_state_dict=None,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
        history=history, cost={"macs_per_image": 123}, epoch=2, seed=7, config={"lr": 0.1})
    path = tmp_path / "made.pt"
    atomic_torch_save(ckpt, path)
    loaded, meta = load_checkpoint(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert meta["format_version"] == FORMAT_VERSION and meta["layers"] == model.layer_names
    assert meta["metrics"] == {"epochs": history, "test_acc": 0.75, "train_seconds": 5.0,
                               "macs_per_image": 123}
    assert (meta["epoch"], meta["seed"], meta["config"]) == (2, 7, {"lr": 0.1})
    assert meta == checkpoint_meta(path)


def test_check_resume_names_every_differing_setting():
    saved = {"config": {"lr": 0.1, "aux_depth": 2, "seed": 0}}
    check_resume({"lr": 0.1, "aux_depth": 2, "seed": 0}, saved, "run.pt")
    with pytest.raises(ValueError, match=r"--resume: run\.pt was trained with other settings: "
                       r"--aux-depth 3 \(checkpoint: 2\); --lr 0\.2 \(checkpoint: 0\.1\)\. "
                       r"Use the same settings or a new --out\."):
        check_resume({"lr": 0.2, "aux_depth": 3, "seed": 0}, saved, "run.pt")


def _as_version_1(src, dst):
    """``src`` as format version 1 wrote it: the pyramid coefficient under method["tau"]."""
    ckpt = torch.load(src, weights_only=True)
    ckpt["format_version"] = 1
    ckpt["method"] = {("tau" if k == "pyramid_coeff" else k): v
                      for k, v in ckpt["method"].items()}
    torch.save(ckpt, dst)
    return dst


@pytest.mark.parametrize("method", [
    {"name": "bp", "K": None, "aux_depth": None, "pyramid_coeff": None},
    {"name": "auglocal", "K": 4, "aux_depth": 2, "pyramid_coeff": 0.5},
])
def test_version_1_checkpoints_are_read_with_the_current_keys(trained, tmp_path, method):
    current = _rewrite(trained, tmp_path / "v2.pt", method=method)
    old = _as_version_1(current, tmp_path / "v1.pt")
    assert "tau" in torch.load(old, weights_only=True)["method"]
    _, meta = load_checkpoint(old)
    _, expected = load_checkpoint(current)
    assert meta["format_version"] == 1  # the version the file was written with
    assert meta["method"] == expected["method"] == method
    assert list(meta["method"]) == list(method)
    assert {k: v for k, v in meta.items() if k != "format_version"} == \
        {k: v for k, v in expected.items() if k != "format_version"}
    assert checkpoint_meta(old) == meta
    assert read_checkpoint(old)["method"] == method
