"""Image folders (``--dataset imagefolder``): training, checkpoints and analyses, bad folders."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from analyses import cka as cka_cli
from analyses import extract as extract_cli
from analyses import probe as probe_cli
from repsim.store import ActivationFile
from training import data as datasets
from training.checkpoint import load_checkpoint
from training.train import TrainConfig, train
from training.train import main as train_main
from training.tv_models import TVResNet, TVVGG


def make_folder(root: Path, classes=("cat", "dog"), n_train=8, n_val=4, size=64) -> Path:
    """train/<class>/<i>.png and val/<class>/<i>.png of random colour images."""
    rng = np.random.default_rng(0)
    for sub, n in (("train", n_train), ("val", n_val)):
        for c in classes:
            (root / sub / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / sub / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def checkpoints(folder, tmp_path_factory) -> dict[str, Path]:
    """A tv_resnet18 (width 4, 32×32 crops) per method, one epoch on the folder (DGL's step
    on these networks: tests/test_tv_models.py)."""
    out = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for method in ("bp", "auglocal"):
        paths[method] = out / f"{method}.pt"
        train(TrainConfig(method=method, arch="tv_resnet18", width=4, dataset="imagefolder",
                          data_root=str(folder), image_size=32, workers=0, epochs=1,
                          batch_size=8, out=str(paths[method]), progress=False))
    return paths


def test_checkpoints_load_as_the_torchvision_network(checkpoints):
    for method, path in checkpoints.items():
        model, meta = load_checkpoint(path)
        assert isinstance(model, TVResNet) and meta["method"]["name"] == method
        assert meta["dataset"]["image_size"] == 32 and meta["dataset"]["num_classes"] == 2
        assert meta["layers"] == model.layer_names and len(meta["layers"]) == 9
    assert load_checkpoint(checkpoints["auglocal"])[1]["method"]["aux_rule"] == "imagenet"


@pytest.mark.parametrize("split", ["test", "val"])
def test_extract_reads_the_val_folder(checkpoints, folder, tmp_path, split):
    out = tmp_path / "acts.h5"
    extract_cli.main(["--ckpt", str(checkpoints["auglocal"]), "--out", str(out), "--n", "0",
                      "--data-root", str(folder), "--split", split])
    with ActivationFile(out) as acts:
        assert len(acts.layers) == 9 and acts.meta["split"] == "test"
        assert np.array_equal(acts.labels, [0] * 4 + [1] * 4)  # val/cat, then val/dog


def test_cka_and_probe_run_on_folder_checkpoints(checkpoints, folder, tmp_path):
    a, b = str(checkpoints["bp"]), str(checkpoints["auglocal"])
    common = ["--data-root", str(folder), "--cache", str(tmp_path / "cache")]
    cka_cli.main(["--a", a, "--b", b, "--n", "0", "--out", str(tmp_path / "cka"), *common])
    assert (tmp_path / "cka" / "args.json").exists()
    probe_cli.main(["--ckpt", a, b, "--n-train", "0", "--n-test", "0",
                    "--out", str(tmp_path / "probe"), *common])
    with (tmp_path / "probe" / "probe.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2 * 9


def test_vgg_trains_on_the_folder(folder, tmp_path):
    out = tmp_path / "vgg.pt"
    train(TrainConfig(arch="tv_vgg11_bn", width=8, dataset="imagefolder", data_root=str(folder), image_size=32, workers=0,
                      epochs=1, batch_size=8, out=str(out), progress=False))
    assert isinstance(load_checkpoint(out)[0], TVVGG)


def test_batches_do_not_depend_on_the_worker_count(folder):
    def batches(workers):
        split = datasets.load_split("imagefolder", "train", data_root=folder, image_size=32,
                                    workers=workers)
        return list(datasets.train_batches(split, 4, seed=3, epoch=1))

    for (x0, y0), (x1, y1) in zip(batches(0), batches(2)):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_epochs_draw_other_crops_and_evaluation_is_fixed(folder):
    split = datasets.load_split("imagefolder", "train", data_root=folder, image_size=32)
    first, second = (next(datasets.train_batches(split, 16, seed=0, epoch=e))[0] for e in (0, 1))
    assert not torch.equal(first, second)
    centre = datasets.in_memory(split)
    assert centre.images.shape == (16, 3, 32, 32) and centre.images.dtype == torch.uint8
    assert torch.equal(centre.images, datasets.in_memory(split).images)


def test_val_and_test_name_the_val_folder(folder):
    val = datasets.load_split("imagefolder", "val", data_root=folder)
    test = datasets.load_split("imagefolder", "test", data_root=folder)
    assert val.files == test.files and all("/val/" in f for f in val.files)
    assert val.info.image_size == 224  # ImageNet's crop unless asked otherwise


def _error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        train_main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def _train_on(root: Path, capsys, tmp_path) -> str:
    return _error(["--arch", "tv_resnet18", "--width", "4", "--dataset", "imagefolder",
                   "--data-root", str(root), "--image-size", "32", "--workers", "0",
                   "--epochs", "1", "--batch-size", "4", "--out", str(tmp_path / "x.pt"),
                   "--no-progress"], capsys)


@pytest.mark.parametrize("missing", ["train", "val"])
def test_folder_without_a_split_is_refused(tmp_path, capsys, missing):
    root = make_folder(tmp_path / "f", n_train=1, n_val=1, size=8)
    for f in (root / missing).rglob("*.png"):
        f.unlink()
    for d in sorted((root / missing).rglob("*"), reverse=True):
        d.rmdir()
    (root / missing).rmdir()
    assert f"has no {missing}/ subfolder" in _train_on(root, capsys, tmp_path)


def test_empty_class_folder_is_refused(tmp_path, capsys):
    root = make_folder(tmp_path / "f", n_train=1, n_val=1, size=8)
    (root / "train" / "bird").mkdir()
    (root / "val" / "bird").mkdir()
    (root / "val" / "bird" / "notes.txt").write_text("not an image")
    message = _train_on(root, capsys, tmp_path)
    assert "class folders without images" in message and "train/bird" in message


def test_mismatched_classes_are_refused(tmp_path, capsys):
    root = make_folder(tmp_path / "f", n_train=1, n_val=1, size=8)
    make_folder(root, classes=("emu",), n_train=1, n_val=0, size=8)
    (root / "val" / "emu").rmdir()
    message = _train_on(root, capsys, tmp_path)
    assert "hold different classes" in message and "only in train/: ['emu']" in message


def test_undecodable_image_stops_the_run_naming_it(tmp_path):
    root = make_folder(tmp_path / "f", n_train=4, n_val=1, size=8)
    bad = root / "train" / "dog" / "2.png"
    bad.write_bytes(b"not a png at all")
    split = datasets.load_split("imagefolder", "train", data_root=root, image_size=8)
    with pytest.raises(datasets.DatasetError, match=f"{bad} cannot be decoded as an image"):
        list(datasets.train_batches(split, 8, seed=0, epoch=0))


def test_missing_folder_and_data_root_are_refused(tmp_path):
    with pytest.raises(datasets.DatasetError, match="does not exist"):
        datasets.dataset_info("imagefolder", tmp_path / "nowhere")
    with pytest.raises(datasets.DatasetError, match="needs --data-root"):
        datasets.load_split("imagefolder", "train")


def test_bad_split_and_image_size_are_refused(folder):
    with pytest.raises(datasets.DatasetError, match="unknown split 'dev'"):
        datasets.load_split("imagefolder", "dev", data_root=folder)
    with pytest.raises(datasets.DatasetError, match="only imagefolder crops"):
        datasets.dataset_info("cifar10", image_size=64)
    with pytest.raises(datasets.DatasetError, match="image size 4 is too small"):
        datasets.dataset_info("imagefolder", folder, 4)
