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


def test_a_directory_is_named_a_directory(tmp_path, reader):
    folder = tmp_path / "run.pt"
    folder.mkdir()
    with pytest.raises(CheckpointError, match=r"run\.pt is a directory, not a checkpoint file"):
        reader(folder)


def _without(key):
    return lambda ckpt: {k: v for k, v in ckpt.items() if k != key}


def _with(key, value):
    return lambda ckpt: {**ckpt, key: value}


def _with_entry(key, entry, value):
    return lambda ckpt: {**ckpt, key: {**ckpt[key], entry: value}}


@pytest.mark.parametrize("damage, problem", [
    (_without("epoch"), r"lacks the keys \['epoch'\]"),
    (_without("seed"), r"lacks the keys \['seed'\]"),
    (_with("dataset", "digits"), r"'dataset' has type str, expected a dict"),
    (_with("metrics", {}), r"'metrics' lacks 'epochs'"),
    (_with("metrics", {"epochs": "none"}), r"metrics\['epochs'\] has type str, expected a list"),
    (_with("layers", "layers.0"), r"'layers' has type str, expected a list"),
    (_with("layers", [1, 2]), r"'layers' must be a non-empty list of strings"),
    (_with("layers", []), r"'layers' must be a non-empty list of strings"),
    (_with("epoch", "2"), r"'epoch' has type str, expected a whole number"),
    (_with("epoch", True), r"'epoch' has type bool, expected a whole number"),
    (_with("epoch", 5), r"'epoch' is 5 but metrics\['epochs'\] holds 2 epochs"),
    (_with("arch", [8]), r"'arch' has type list, expected a dict"),
    (_with_entry("arch", "width", 0), r"arch\['width'\] must be a whole number >= 1"),
    (_with_entry("arch", "width", 4.0), r"arch\['width'\] has type float, expected a whole number"),
    (_with_entry("method", "name", 3), r"method\['name'\] has type int, expected a str"),
    (_with_entry("dataset", "name", None), r"dataset\['name'\] has type NoneType, expected a str"),
    (_with("state_dict", [1]), r"'state_dict' has type list, expected a dict"),
    (_with("state_dict", {"w": 1.0}), r"'state_dict' must map names to tensors"),
    (_with("metrics", {"epochs": [1, 2]}), r"metrics\['epochs'\] must be a list of dicts"),
])
def test_malformed_checkpoints_name_what_is_wrong(trained, tmp_path, reader, damage, problem):
    path = tmp_path / "bad.pt"
    torch.save(damage(torch.load(trained, weights_only=True)), path)
    with pytest.raises(CheckpointError, match=rf"bad\.pt is damaged.*{problem}"):
        reader(path)


def test_every_problem_is_named_at_once(trained, tmp_path, reader):
    ckpt = torch.load(trained, weights_only=True)
    path = tmp_path / "bad.pt"
    torch.save({**ckpt, "dataset": 1, "layers": "x"}, path)
    with pytest.raises(CheckpointError, match="'dataset' has type int.*; 'layers' has type str"):
        reader(path)


def test_a_successful_save_removes_stale_temporary_files_of_its_target(tmp_path):
    stale = [tmp_path / ".x.pt.a1b2c3d4.tmp", tmp_path / ".x.pt.zz_9zz_9.tmp"]
    others = [tmp_path / ".y.pt.a1b2c3d4.tmp",        # another target's
              tmp_path / ".x.pt.v2.a1b2c3d4.tmp",     # target x.pt.v2's
              tmp_path / ".x.pt.notes.tmp",           # not a temporary name
              tmp_path / "x.pt.a1b2c3d4.tmp"]
    for p in stale + others:
        p.write_bytes(b"debris")
    atomic_torch_save({"a": 1}, tmp_path / "x.pt")
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)
    assert torch.load(tmp_path / "x.pt", weights_only=True) == {"a": 1}


def test_a_failed_save_names_the_path_and_the_cause(tmp_path, monkeypatch):
    real_save = torch.save

    def save_to_a_full_disk(obj, f):
        with open("/dev/full", "wb") as full:
            real_save(obj, full)

    monkeypatch.setattr(torch, "save", save_to_a_full_disk)
    with pytest.raises(OSError, match=r"cannot write checkpoint .*x\.pt: No space left"):
        atomic_torch_save({"a": torch.zeros(10_000)}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []
