import pickle

import pytest
import torch

from training import CheckpointError, load_checkpoint
from training.checkpoint import FORMAT, atomic_torch_save, read_checkpoint


@pytest.fixture
def trained(tiny_checkpoints):
    return tiny_checkpoints["a"]


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


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*--out .*nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_checkpoints_get_the_usual_file_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        atomic_torch_save({"a": 1}, tmp_path / "x.pt")
    finally:
        os.umask(mask)
    assert (tmp_path / "x.pt").stat().st_mode & 0o777 == 0o644


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_torch_file_without_the_format_tag(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a checkpoint of this toolkit"):
        load_checkpoint(path)


def _rewrite(src, dst, **changes):
    ckpt = torch.load(src, weights_only=True)
    ckpt.update(changes)
    torch.save(ckpt, dst)
    return dst


def test_unknown_format_version(trained, tmp_path):
    path = _rewrite(trained, tmp_path / "v99.pt", format_version=99)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)


def test_unknown_architecture(trained, tmp_path):
    ckpt = torch.load(trained, weights_only=True)
    path = _rewrite(trained, tmp_path / "arch.pt", arch={**ckpt["arch"], "name": "vgg11"})
    with pytest.raises(CheckpointError, match="'vgg11' is unknown"):
        load_checkpoint(path)


def test_missing_keys_are_reported(tmp_path):
    path = tmp_path / "partial.pt"
    torch.save({"format": FORMAT, "format_version": 1}, path)
    with pytest.raises(CheckpointError, match="lacks the keys.*'arch'"):
        read_checkpoint(path)


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


def test_code_running_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": _Payload(marker)}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        load_checkpoint(path)
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


def test_truncated_checkpoint_is_refused(trained, tmp_path):
    path = tmp_path / "cut.pt"
    path.write_bytes(trained.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a"):
        load_checkpoint(path)
