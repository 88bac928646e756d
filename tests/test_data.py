import gzip
import struct

import numpy as np
import pytest
import torch

from training import data as ds


def _write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_root(folder, n_train=20, n_test=10):
    """``folder`` laid out like Debian's package, holding random train and test images."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz",
                   rng.integers(0, 256, (n, 28, 28)))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


@pytest.fixture
def tiny_fashion_root(tmp_path):
    """A folder laid out like Debian's package, holding 20 random train and 10 test images."""
    return write_fashion_root(tmp_path)


def test_idx_reader_returns_what_was_written(tiny_fashion_root):
    split = ds.load_split("fashion-mnist", "test", data_root=tiny_fashion_root)
    with gzip.open(tiny_fashion_root / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(bytearray(f.read()[16:]), np.uint8).reshape(10, 1, 28, 28)
    assert torch.equal(split.images, torch.from_numpy(raw))
    assert split.labels.tolist() == list(range(10))
    assert split.indices.tolist() == list(range(10))


@pytest.mark.skipif(not ds.FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist missing")
def test_debian_fashion_mnist_has_the_published_sizes():
    train = ds.load_split("fashion-mnist", "train")
    test = ds.load_split("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    mean = train.images.float().mean().item() / 255
    assert mean == pytest.approx(ds.DATASETS["fashion-mnist"].mean[0], abs=1e-3)


def test_digits_split_is_disjoint_and_complete():
    train, test = ds.load_split("digits", "train"), ds.load_split("digits", "test")
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (1, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) <= 255


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "short"])
def test_damaged_fashion_mnist_file_is_named_with_the_fix(tiny_fashion_root, damage):
    victim = tiny_fashion_root / "train-images-idx3-ubyte.gz"
    raw = victim.read_bytes()
    if damage == "truncated":
        victim.write_bytes(raw[:len(raw) // 2])
    elif damage == "not gzip":
        victim.write_bytes(b"<html>404</html>")
    else:  # a complete gzip stream whose idx payload lacks rows the header promises
        with gzip.open(victim) as f:
            payload = f.read()
        with gzip.open(victim, "wb") as f:
            f.write(payload[:-28 * 28])
    with pytest.raises(ds.DatasetError, match=f"(?s){victim}.*(truncated|damaged).*"
                       "apt-get install --reinstall dataset-fashion-mnist"):
        ds.load_split("fashion-mnist", "train", data_root=tiny_fashion_root)


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(ds.DatasetError, match="apt-get install dataset-fashion-mnist"):
        ds.load_split("fashion-mnist", "train", data_root=tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "svhn", "stl10"])
def test_torchvision_datasets_need_a_local_root(name, tmp_path):
    with pytest.raises(ds.DatasetError, match="needs --data-root"):
        ds.load_split(name, "train")
    with pytest.raises(ds.DatasetError, match=f"{name} not found under"):
        ds.load_split(name, "test", data_root=tmp_path)


def test_unknown_names_are_refused():
    with pytest.raises(ds.DatasetError, match="unknown dataset 'mnist'"):
        ds.load_split("mnist", "train")
    with pytest.raises(ds.DatasetError, match="unknown split 'val'"):
        ds.load_split("digits", "val")


def test_balanced_subset_is_balanced_seeded_and_sorted():
    labels = torch.arange(1000) % 10
    a = ds.balanced_subset(labels, 105, seed=3)
    assert len(a) == len(set(a.tolist())) == 105
    assert torch.equal(a, torch.sort(a).values)
    counts = torch.bincount(labels[a], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert torch.equal(a, ds.balanced_subset(labels, 105, seed=3))
    assert not torch.equal(a, ds.balanced_subset(labels, 105, seed=4))


def test_subset_keeps_dataset_indices(tiny_fashion_root):
    split = ds.load_split("fashion-mnist", "train", data_root=tiny_fashion_root)
    rows = ds.balanced_subset(split.labels, 10, seed=0)
    sub = ds.take(split, rows)
    assert torch.equal(sub.indices, rows)
    assert [idx.tolist() for _, _, idx in ds.eval_batches(sub, 4)] == \
        [rows[:4].tolist(), rows[4:8].tolist(), rows[8:].tolist()]


def test_subset_errors():
    labels = torch.tensor([0] * 50 + [1] * 2)
    with pytest.raises(ds.DatasetError, match="out of range"):
        ds.balanced_subset(labels, 0, seed=0)
    with pytest.raises(ds.DatasetError, match="class 1, which has only 2"):
        ds.balanced_subset(labels, 20, seed=0)


def test_random_crop_takes_a_window_of_the_padded_image():
    info = ds.DATASETS["fashion-mnist"]
    images = torch.randint(0, 256, (16, 1, 6, 6), dtype=torch.uint8)
    out = ds.augment(images, info, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    p = info.crop_padding
    padded = torch.nn.functional.pad(images, (p, p, p, p))
    for img, crop in zip(padded, out):
        windows = [img[:, i:i + 6, j:j + 6] for i in range(2 * p + 1) for j in range(2 * p + 1)]
        assert any(torch.equal(w, crop) or torch.equal(w.flip(-1), crop) for w in windows)


def test_no_augmentation_for_digits_is_identity():
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    out = ds.augment(images, ds.DATASETS["digits"], torch.Generator().manual_seed(0))
    assert torch.equal(out, images)


def test_train_batches_depend_only_on_seed_and_epoch():
    data = ds.load_split("digits", "train")
    first = [y for _, y in ds.train_batches(data, 100, seed=0, epoch=0)]
    again = [y for _, y in ds.train_batches(data, 100, seed=0, epoch=0)]
    other = [y for _, y in ds.train_batches(data, 100, seed=0, epoch=1)]
    assert len(first) == len(data) // 100
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_rank_shares_interleave_into_the_one_process_batches():
    """Under torchrun, rank r of N gets rows r, r + N, … of each global batch, augmented as a
    one-process run augments them (crop and flip draws included)."""
    info = ds.DATASETS["cifar10"]
    n = 40
    data = ds.ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8),
                       torch.arange(n) % 10, torch.arange(n), info)
    whole = list(ds.train_batches(data, 12, seed=3, epoch=1))
    shares = [list(ds.train_batches(data, 12, seed=3, epoch=1, rank=r, world_size=3))
              for r in range(3)]
    assert all(len(s) == len(whole) for s in shares)
    for i, (x, y) in enumerate(whole):
        for r in range(3):
            assert torch.equal(shares[r][i][0], x[r::3]) and torch.equal(shares[r][i][1], y[r::3])


def test_batch_larger_than_the_set_is_refused():
    data = ds.load_split("digits", "test")
    with pytest.raises(ds.DatasetError, match="batch size 5000 exceeds"):
        next(ds.train_batches(data, 5000, seed=0, epoch=0))


def test_normalise_uses_mean_and_std():
    info = ds.DATASETS["fashion-mnist"]
    x = ds.normalise(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8), info)
    assert torch.allclose(x, torch.full_like(x, (1 - info.mean[0]) / info.std[0]))
