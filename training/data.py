"""Datasets by name, held in memory as uint8 tensors, with batched augmentation.

Every split is an :class:`ImageSet`: ``images`` (N, C, H, W) uint8, ``labels`` (N,) int64 and
the dataset's :class:`DatasetInfo`. Batches are cut, augmented and normalised on whole
tensors (no per-image PIL transforms), so the data side costs little next to the model.
Nothing is downloaded: Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package,
``digits`` from scikit-learn, CIFAR-10/SVHN/STL-10 from a local ``--data-root``.

``imagefolder`` (ImageNet and its like) is the exception: too large for memory, a split is a
:class:`FolderSet` (file list and labels, from torchvision's ``ImageFolder``) whose images are
decoded and augmented per image in DataLoader workers (RandomResizedCrop + flip for training,
Resize → CenterCrop for evaluation, ImageNet normalisation). :func:`train_batches`,
:func:`eval_batches`, :func:`take` and :func:`balanced_subset` accept both kinds;
:func:`in_memory` decodes a (small) folder split into an :class:`ImageSet` for the analyses.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "test")
FOLDER_SPLITS = {"train": "train", "test": "val", "val": "val"}  # split → image-folder subfolder
IMAGENET_SIZE = 224     # the side of the training crops and evaluation centre crops
RESIZE_RATIO = 256 / 224  # evaluation: resize the short side to size·256/224, crop the centre


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    image_size: int             # pixels per side (square images)
    num_classes: int
    mean: tuple[float, ...]     # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    crop_padding: int           # train-time random-crop padding in pixels (0: no crop)
    pad_mode: str               # "constant" (zeros) or "reflect"
    hflip: bool                 # train-time random horizontal flip

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


# Augmentation per docs/auglocal.md, section "Augmentation"; Fashion-MNIST and digits are ours.
DATASETS = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 28, 10, (0.2860,), (0.3530,),
                                 2, "constant", True),
    "digits": DatasetInfo("digits", 1, 8, 10, (0.3050,), (0.3810,), 0, "constant", False),
    "cifar10": DatasetInfo("cifar10", 3, 32, 10, (125.3 / 255, 123.0 / 255, 113.9 / 255),
                           (63.0 / 255, 62.1 / 255, 66.7 / 255), 4, "reflect", True),
    "svhn": DatasetInfo("svhn", 3, 32, 10, (0.5,) * 3, (0.5,) * 3, 2, "constant", False),
    "stl10": DatasetInfo("stl10", 3, 96, 10, (0.5,) * 3, (0.5,) * 3, 4, "constant", True),
    # ImageNet's normalisation; 1000 classes until a folder says otherwise (dataset_info);
    # augmentation: RandomResizedCrop + flip (no padded crop), see _folder_transform
    "imagefolder": DatasetInfo("imagefolder", 3, IMAGENET_SIZE, 1000, (0.485, 0.456, 0.406),
                               (0.229, 0.224, 0.225), 0, "constant", True),
}


class DatasetError(ValueError):
    """A dataset that cannot be found or read; the message says where the files must go."""


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor   # (N, C, H, W) uint8
    labels: torch.Tensor   # (N,) int64
    indices: torch.Tensor  # (N,) int64: each row's index in the full split
    info: DatasetInfo

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class FolderSet:
    """A split of an image folder, decoded lazily: ``files[i]`` is row i's image path."""
    files: tuple[str, ...]  # (N,) image paths
    labels: torch.Tensor    # (N,) int64: index of the class folder (sorted names)
    indices: torch.Tensor   # (N,) int64: each row's index in the full split
    info: DatasetInfo       # image_size: the side of the crops fed to the model
    workers: int = 0        # DataLoader worker processes
    pin_memory: bool = False  # page-locked batches (for a CUDA device)

    def __len__(self) -> int:
        return len(self.labels)


def dataset_info(name: str, data_root: str | Path | None = None,
                 image_size: int | None = None) -> DatasetInfo:
    """The dataset's :class:`DatasetInfo`. ``imagefolder``: the class count of the folder at
    ``data_root`` (checked by :func:`folder_classes`; ImageNet's 1000 without one) and crops
    of ``image_size`` (default 224); other datasets have a fixed size."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    info = DATASETS[name]
    if name != "imagefolder":
        if image_size not in (None, info.image_size):
            raise DatasetError(f"image size {image_size} for {name}, whose images are "
                               f"{info.image_size}×{info.image_size}; only imagefolder crops "
                               "to a chosen size")
        return info
    if image_size is not None and image_size < 8:
        raise DatasetError(f"image size {image_size} is too small for an image folder; "
                           "use at least 8 (224 for ImageNet)")
    classes = len(folder_classes(Path(data_root))) if data_root is not None else info.num_classes
    return replace(info, num_classes=classes, image_size=image_size or info.image_size)


def load_split(name: str, split: str, *, data_root: str | Path | None = None,
               image_size: int | None = None, workers: int = 0,
               pin_memory: bool = False) -> ImageSet | FolderSet:
    """Load a whole split ("train" or "test") of a named dataset into memory.

    ``imagefolder``: a :class:`FolderSet` of ``data_root/train`` or ``data_root/val``
    (``split`` "test" or "val"), cropped to ``image_size``, loaded by ``workers`` DataLoader
    processes into page-locked memory when ``pin_memory``."""
    if name == "imagefolder":
        return _folder_split(data_root, split, image_size, workers, pin_memory)
    info = dataset_info(name, image_size=image_size)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose 'train' or 'test'")
    if name == "fashion-mnist":
        images, labels = _read_fashion_mnist(Path(data_root or FASHION_MNIST_DIR), split)
    elif name == "digits":
        images, labels = _read_digits(split)
    else:
        images, labels = _read_torchvision(name, split, data_root)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(images)),
                    torch.from_numpy(labels.astype(np.int64)), torch.arange(len(labels)), info)


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped) as an array: magic 0x0000 08 <ndim>, big-endian int32 dims.

    A file that is not gzip, ends early or holds other than its header promises raises
    DatasetError naming it and the fix."""
    try:
        with gzip.open(path, "rb") as f:
            raw = bytearray(f.read())  # writable, so torch can share it without a copy
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise _damaged(path, f"truncated or damaged ({err})") from err
    ndim = raw[3] if len(raw) >= 4 and raw[:3] == b"\0\0\x08" else 0
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise _damaged(path, "damaged: no idx header of unsigned bytes")
    dims = np.frombuffer(raw, ">i4", count=ndim, offset=4)
    if len(raw) - 4 - 4 * ndim != np.prod(dims, dtype=np.int64):
        raise _damaged(path, f"damaged: its header promises {'×'.join(map(str, dims))} bytes, "
                             f"it holds {len(raw) - 4 - 4 * ndim}")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _damaged(path: Path, problem: str) -> DatasetError:
    return DatasetError(
        f"{path} is {problem}. Restore the original file: `apt-get install --reinstall "
        "dataset-fashion-mnist` for Debian's copy, or download it again into --data-root")


def _fashion_mnist_files(root: Path, split: str) -> tuple[Path, Path]:
    """(images, labels) idx files of a split under ``root``."""
    prefix = "train" if split == "train" else "t10k"
    return root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"


def _read_fashion_mnist(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = _fashion_mnist_files(root, split)
    if not (image_file.exists() and label_file.exists()):
        raise DatasetError(
            f"Fashion-MNIST not found: expected {image_file.name} and {label_file.name} in "
            f"{root}. Install Debian's package (`apt-get install dataset-fashion-mnist`, as "
            "`make setup` does when run as root) or pass --data-root pointing at a folder "
            "with the gzipped idx files."
        )
    return _read_idx(image_file)[:, None], _read_idx(label_file)


def _read_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits (values 0-16), split 80/20 stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)[:, None]
    train_idx, test_idx = train_test_split(np.arange(len(images)), test_size=0.2,
                                           stratify=digits.target, random_state=0)
    rows = np.sort(train_idx if split == "train" else test_idx)
    return images[rows], digits.target[rows]


def _read_torchvision(name: str, split: str, data_root) -> tuple[np.ndarray, np.ndarray]:
    import torchvision.datasets as tvd

    if data_root is None:
        raise DatasetError(f"dataset {name!r} needs --data-root: a local folder holding the "
                           "torchvision files (nothing is downloaded)")
    files = _torchvision_files(name, Path(data_root))
    expected = files[-1] if split == "test" else files[0]  # svhn: one file per split
    try:
        if name == "cifar10":
            ds = tvd.CIFAR10(data_root, train=split == "train", download=False)
            return ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets)
        ds = (tvd.SVHN if name == "svhn" else tvd.STL10)(data_root, split=split, download=False)
        return ds.data, np.asarray(ds.labels)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise DatasetError(
            f"{name} not found under {data_root}: put the torchvision files there "
            f"(expected {expected}), e.g. by running torchvision's "
            f"{name.upper()}(root, download=True) on a machine with internet"
        ) from err


def _torchvision_files(name: str, root: Path) -> tuple[Path, ...]:
    """The files or folders under ``root`` torchvision reads ``name`` from (train first)."""
    return {"cifar10": (root / "cifar-10-batches-py",),
            "svhn": (root / "train_32x32.mat", root / "test_32x32.mat"),
            "stl10": (root / "stl10_binary",)}[name]


def source_paths(name: str, data_root: str | Path | None = None) -> list[Path]:
    """The files and folders :func:`load_split` reads dataset ``name`` from (both splits);
    empty for datasets bundled with a library. Outputs must never be written onto them."""
    dataset_info(name)
    if name == "fashion-mnist":
        root = Path(data_root or FASHION_MNIST_DIR)
        return [path for split in SPLITS for path in _fashion_mnist_files(root, split)]
    if name == "digits" or data_root is None:
        return []
    if name == "imagefolder":
        return [Path(data_root) / sub for sub in ("train", "val")]
    return list(_torchvision_files(name, Path(data_root)))


def folder_classes(root: Path) -> list[str]:
    """The class names of image folder ``root`` (sorted, as ``ImageFolder`` numbers them),
    after checking that train/ and val/ exist, hold the same class folders, and that every
    class folder holds at least one image file; DatasetError names what is wrong."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    layout = "an image folder needs train/<class>/<image> and val/<class>/<image>"
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist; {layout}")
    found = {}
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DatasetError(f"image folder {root} has no {sub}/ subfolder; {layout}")
        found[sub] = sorted(d.name for d in (root / sub).iterdir() if d.is_dir())
        if not found[sub]:
            raise DatasetError(f"{root / sub} holds no class folders; {layout}")
        empty = [f"{sub}/{c}" for c in found[sub]
                 if not any(f.name.lower().endswith(IMG_EXTENSIONS)
                            for f in (root / sub / c).rglob("*"))]
        if empty:
            raise DatasetError(f"class folders without images in {root}: {', '.join(empty[:5])}"
                               f"; add images (extensions {', '.join(IMG_EXTENSIONS)}) or "
                               "remove those folders from both train/ and val/")
    if found["train"] != found["val"]:
        only = {sub: sorted(set(found[sub]) - set(found[other]))
                for sub, other in (("train", "val"), ("val", "train"))}
        raise DatasetError(f"train/ and val/ of {root} hold different classes (only in "
                           f"train/: {only['train'][:5]}, only in val/: {only['val'][:5]}); "
                           "both must have the same class folders")
    return found["train"]


def _folder_split(data_root: str | Path | None, split: str, image_size: int | None,
                  workers: int, pin_memory: bool) -> FolderSet:
    from torchvision.datasets import ImageFolder

    if data_root is None:
        raise DatasetError("dataset 'imagefolder' needs --data-root: a folder with train/ and "
                           "val/, one subfolder per class in each")
    if split not in FOLDER_SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose 'train', or 'val' (or 'test') for "
                           "the val/ folder")
    info = dataset_info("imagefolder", data_root, image_size)
    samples = ImageFolder(str(Path(data_root) / FOLDER_SPLITS[split]), allow_empty=True).samples
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return FolderSet(tuple(path for path, _ in samples), labels, torch.arange(len(samples)),
                     info, workers, pin_memory)


def balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices (n,) sorted ascending of a seeded class-balanced subset of ``labels`` (N,).

    Each class gets n // C rows; the remainder goes one each to the first classes."""
    classes = torch.unique(labels)
    if not 0 < n <= len(labels):
        raise DatasetError(f"a class-balanced subset of {n} images is out of range: the split has "
                           f"{len(labels)} images")
    gen = torch.Generator().manual_seed(seed)
    per_class = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    picks = []
    for c, k in zip(classes, per_class):
        members = torch.nonzero(labels == c).flatten()
        if k > len(members):
            raise DatasetError(f"a class-balanced subset of {n} images asks for {k} images of "
                               f"class {int(c)}, which has only {len(members)}; choose a "
                               "smaller subset")
        picks.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.sort(torch.cat(picks)).values


def take(data: ImageSet | FolderSet, rows: torch.Tensor) -> ImageSet | FolderSet:
    if isinstance(data, FolderSet):
        return replace(data, files=tuple(data.files[i] for i in rows.tolist()),
                       labels=data.labels[rows], indices=data.indices[rows])
    return ImageSet(data.images[rows], data.labels[rows], data.indices[rows], data.info)


def decode_image(path: str):
    """The RGB PIL image at ``path``; DatasetError naming the file when it cannot be decoded
    (a damaged or non-image file stops the run: delete or re-encode it)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as err:  # PIL.UnidentifiedImageError and truncated files are OSErrors
        raise DatasetError(f"{path} cannot be decoded as an image ({err}); delete it or "
                           "replace it with a readable image") from err


def _folder_transform(info: DatasetInfo, train: bool):
    """torchvision's ImageNet pipeline at crop size S = ``info.image_size``: training
    RandomResizedCrop(S) → horizontal flip; evaluation Resize(S·256/224) → CenterCrop(S);
    then uint8 (C, S, S)."""
    from torchvision.transforms import v2

    size = info.image_size
    steps = ([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()] if train
             else [v2.Resize(round(size * RESIZE_RATIO), antialias=True), v2.CenterCrop(size)])
    return v2.Compose([v2.PILToTensor(), *steps])


class _FolderImages(torch.utils.data.Dataset):
    """Row i of a :class:`FolderSet` → (uint8 image (C, S, S), label, dataset index).

    Training crops and flips draw from a generator seeded by (seed, epoch, dataset index), so
    a row's augmentation depends on neither the worker count nor the batch order."""

    def __init__(self, data: FolderSet, train: bool, seed: int = 0, epoch: int = 0):
        self.data, self.train, self.base = data, train, (seed * 100_003 + epoch) * 10_000_019
        self.transform = _folder_transform(data.info, train)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int, int]:
        image = decode_image(self.data.files[row])
        index = int(self.data.indices[row])
        with torch.random.fork_rng(devices=[]):  # v2 transforms draw from the global RNG
            torch.manual_seed((self.base + index) % 2**63)
            image = self.transform(image)
        return image, int(self.data.labels[row]), index


def _folder_loader(data: FolderSet, batches: list[list[int]], train: bool, seed: int = 0,
                   epoch: int = 0) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(_FolderImages(data, train, seed, epoch),
                                       batch_sampler=batches, num_workers=data.workers,
                                       pin_memory=data.pin_memory)


def _in_order(n: int, batch_size: int) -> list[list[int]]:
    """Rows 0 … n − 1 in batches of ``batch_size`` (the last one may be smaller)."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def in_memory(data: ImageSet | FolderSet, batch_size: int = 256) -> ImageSet:
    """An image folder's rows decoded and centre-cropped into an :class:`ImageSet` (the
    evaluation view of each image); an ImageSet as it is. Memory: N × 3 × S² bytes."""
    if isinstance(data, ImageSet):
        return data
    images = [x for x, _, _ in _folder_loader(data, _in_order(len(data), batch_size), False)]
    size = data.info.image_size
    return ImageSet(torch.cat(images) if images else torch.empty(0, 3, size, size,
                                                                  dtype=torch.uint8),
                    data.labels, data.indices, data.info)


def normalise(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 (B, C, H, W) → float32 normalised with the dataset's mean and std."""
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def augment(images: torch.Tensor, info: DatasetInfo, gen: torch.Generator) -> torch.Tensor:
    """Random crop with padding and random horizontal flip of a uint8 batch (B, C, H, W)."""
    b, _, h, w = images.shape
    out = images
    if info.crop_padding:
        p = info.crop_padding
        padded = F.pad(images.float(), (p, p, p, p), mode=info.pad_mode)
        top = torch.randint(0, 2 * p + 1, (b, 1), generator=gen) + torch.arange(h)
        left = torch.randint(0, 2 * p + 1, (b, 1), generator=gen) + torch.arange(w)
        rows = torch.arange(b)[:, None, None]
        # (B, H, W, C) gathered with one advanced index, then back to (B, C, H, W)
        out = padded.permute(0, 2, 3, 1)[rows, top[:, :, None], left[:, None, :]]
        out = out.permute(0, 3, 1, 2).to(torch.uint8)
    if info.hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out.contiguous()


def train_batches(data: ImageSet | FolderSet, batch_size: int, *, seed: int, epoch: int,
                  rank: int = 0, world_size: int = 1
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled, augmented, normalised batches (x (B, C, H, W) float32, y (B,) int64).

    The order and the augmentation depend only on (seed, epoch), so a resumed run sees the
    same batches. The last incomplete batch is dropped (BatchNorm and equal-size steps).
    With ``world_size > 1`` each rank takes an interleaved share (rows rank, rank + world_size,
    …) of every global batch, augmented exactly as in a one-process run: the whole global
    batch is augmented (the same random draws on every rank) and the share taken after.
    An image folder's batches come from a DataLoader over the same rows (see
    :class:`_FolderImages` for its augmentation).
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(data), generator=gen)
    n_batches = len(data) // batch_size
    if n_batches == 0:
        raise DatasetError(f"batch size {batch_size} exceeds the {len(data)} training images")
    if isinstance(data, FolderSet):
        shares = [order[i * batch_size:(i + 1) * batch_size][rank::world_size].tolist()
                  for i in range(n_batches)]
        for images, labels, _ in _folder_loader(data, shares, True, seed, epoch):
            yield normalise(images, data.info), labels
        return
    for i in range(n_batches):
        rows = order[i * batch_size:(i + 1) * batch_size]
        images = augment(data.images[rows], data.info, gen)[rank::world_size]
        yield normalise(images, data.info), data.labels[rows[rank::world_size]]


def eval_batches(data: ImageSet | FolderSet, batch_size: int
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Unaugmented batches in order: (x float32, y int64, dataset indices int64); an image
    folder's centre-cropped."""
    if isinstance(data, FolderSet):
        for images, labels, indices in _folder_loader(data, _in_order(len(data), batch_size),
                                                      train=False):
            yield normalise(images, data.info), labels, indices
        return
    for start in range(0, len(data), batch_size):
        rows = slice(start, start + batch_size)
        yield normalise(data.images[rows], data.info), data.labels[rows], data.indices[rows]
