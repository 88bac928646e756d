"""repsim.store: checksums catch damaged bytes on read, and a malformed or locked activation
file is refused on open with a message that names what is wrong (never advising to delete a
file that is only locked)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from repsim.store import (ActivationFile, ActivationFileError, ActivationWriter,
                          UncheckedFileWarning, layer_group)

N = 300
SHAPES = {"conv": (16, 16, 16), "fc": (5,)}  # conv flatten: 4096 floats, 64 rows a chunk


def write(path, compression=None):
    """A file of N random rows, two layers × (flatten, gap), in batches of 60."""
    rng = np.random.default_rng(0)
    with ActivationWriter(path, ["conv", "fc"], ["flatten", "gap"], meta={"split": "test"},
                          compression=compression) as writer:
        for start in range(0, N, 60):
            conv = rng.standard_normal((60, *SHAPES["conv"])).astype(np.float32)
            fc = rng.standard_normal((60, 5)).astype(np.float32)
            acts = {"conv": {"flatten": conv.reshape(60, -1), "gap": conv.mean(axis=(2, 3))},
                    "fc": {"flatten": fc, "gap": fc}}
            indices = np.arange(start, start + 60, dtype=np.int64)
            writer.append(acts, SHAPES, indices % 10, indices)
    return path


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    return write(tmp_path_factory.mktemp("acts") / "a.h5")


@pytest.fixture
def copy(valid, tmp_path):
    """A fresh copy of the valid file, to damage."""
    return shutil.copy(valid, tmp_path / "a.h5")


def datasets(h5: h5py.File) -> list[h5py.Dataset]:
    found = []
    h5.visititems(lambda name, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def flip_bytes_inside_chunk(path, dataset: str, chunk: int, at: int | None = None) -> None:
    """Invert 8 bytes of one stored chunk of ``dataset``, ``at`` bytes into it (default: the
    middle), as a bad disk would."""
    with h5py.File(path, "r") as h5:
        info = h5[dataset].id.get_chunk_info(chunk)
    offset = info.byte_offset + (info.size // 2 if at is None else at)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        block = fh.read(8)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in block))


# ---- item 4: a checksum per chunk ----

@pytest.mark.parametrize("compression", [None, "lzf", "gzip"])
def test_every_dataset_carries_a_checksum(tmp_path, compression):
    with h5py.File(write(tmp_path / "a.h5", compression), "r") as h5:
        found = datasets(h5)
        assert len(found) == 2 + 2 * 2
        assert all(d.fletcher32 for d in found)
        assert all(d.compression == compression for d in found)


@pytest.mark.parametrize("compression", [None, "lzf", "gzip"])
def test_flipped_bytes_in_a_layer_are_detected_on_read(tmp_path, compression):
    path = write(tmp_path / "a.h5", compression)
    with ActivationFile(path) as f:
        intact, intact_gap = f.read("conv", "flatten"), f.read("conv", "gap")
    flip_bytes_inside_chunk(path, f"{layer_group(0, 'conv')}/flatten", chunk=2)
    with ActivationFile(path) as f:  # opening reads no rows of a layer
        with pytest.raises(ActivationFileError,
                           match=r"a\.h5: layer 'conv' \(flatten\) fails its checksum.*"
                                 r"extract again"):
            f.read("conv", "flatten")
        np.testing.assert_array_equal(f.read("conv", "flatten", slice(0, 128)), intact[:128])
        np.testing.assert_array_equal(f.read("conv", "gap"), intact_gap)


def test_flipped_bytes_in_the_index_are_detected_on_open(copy):
    flip_bytes_inside_chunk(copy, "data/index", chunk=0, at=8 * (N // 2))  # an int64 row
    with pytest.raises(ActivationFileError, match=r"a\.h5: data/index fails its checksum"):
        ActivationFile(copy)


def version_1_copy(valid, path):
    """``valid`` as the previous format wrote it: the same datasets without checksums."""
    shutil.copy(valid, path)
    with h5py.File(path, "a") as h5:
        for dataset in datasets(h5):
            name, values, attrs = dataset.name, dataset[()], dict(dataset.attrs)
            chunks, compression = dataset.chunks, dataset.compression
            del h5[name]
            new = h5.create_dataset(name, data=values, chunks=chunks, compression=compression,
                                    maxshape=(None, *values.shape[1:]))
            new.attrs.update(attrs)
        h5.attrs["format_version"] = 1
    return path


def test_a_version_1_file_without_checksums_is_read_with_a_warning(valid, tmp_path):
    old = version_1_copy(valid, tmp_path / "old.h5")
    with pytest.warns(UncheckedFileWarning, match=r"old\.h5 .*no checksums.*extract .*again"):
        f = ActivationFile(old)
    with f, ActivationFile(valid) as new:
        for layer in new.layers:
            for reduction in new.reductions:
                np.testing.assert_array_equal(f.read(layer, reduction),
                                              new.read(layer, reduction))
        np.testing.assert_array_equal(f.indices, new.indices)


def test_a_current_file_with_a_dataset_lacking_its_checksum_is_refused(valid, tmp_path):
    path = version_1_copy(valid, tmp_path / "a.h5")
    with h5py.File(path, "a") as h5:
        h5.attrs["format_version"] = 2
    with pytest.raises(ActivationFileError, match=r"a\.h5: data/index has no checksum"):
        ActivationFile(path)


# ---- item 7: the structure is validated on open ----

def edit(path, change) -> None:
    with h5py.File(path, "a") as h5:
        change(h5)


def refused(path, match) -> None:
    with pytest.raises(ActivationFileError, match=match):
        ActivationFile(path)


@pytest.mark.parametrize("attr", ["layers", "reductions", "versions"])
def test_root_attribute_that_is_not_json_is_named(copy, attr):
    edit(copy, lambda h5: h5.attrs.modify(attr, "[\"conv\", tru"))
    refused(copy, rf"a\.h5: attribute '{attr}' of / is not valid JSON.*extract again")


def test_model_attribute_that_is_not_json_is_named(copy):
    edit(copy, lambda h5: h5["model"].attrs.modify("split", "{test"))
    refused(copy, r"a\.h5: attribute 'split' of /model is not valid JSON.*extract again")


@pytest.mark.parametrize("attr, value, match", [
    ("layers", json.dumps({"conv": 0}), r"attribute 'layers' of / must be a list of names"),
    ("reductions", json.dumps(["gap", 3]), r"attribute 'reductions' of / must be a list of n"),
    ("versions", json.dumps(["1.0"]), r"attribute 'versions' of / must be a JSON object"),
])
def test_root_attribute_of_the_wrong_type_is_named(copy, attr, value, match):
    edit(copy, lambda h5: h5.attrs.modify(attr, value))
    refused(copy, match)


def test_forged_header_without_datasets_is_refused(valid, tmp_path):
    path = tmp_path / "forged.h5"
    with h5py.File(valid, "r") as src, h5py.File(path, "w") as h5:
        h5.attrs.update(src.attrs)
    refused(path, r"forged\.h5: .*no /model group.*extract again")
    edit(path, lambda h5: h5.create_group("model"))
    refused(path, r"forged\.h5: data/index is missing.*extract again")


def test_layer_with_fewer_rows_than_the_index_is_refused(copy):
    edit(copy, lambda h5: h5[f"{layer_group(1, 'fc')}/gap"].resize(N - 7, axis=0))
    refused(copy, rf"layers/01_fc/gap has {N - 7} rows but data/index has {N}")


def test_labels_of_another_length_than_the_index_are_refused(copy):
    edit(copy, lambda h5: h5["data/label"].resize(N + 1, axis=0))
    refused(copy, rf"data/label has {N + 1} rows but data/index has {N}")


def test_indices_not_ascending_are_refused(copy):
    edit(copy, lambda h5: h5["data/index"].write_direct(np.array([5, 4], dtype=np.int64),
                                                         dest_sel=np.s_[10:12]))
    refused(copy, r"data/index is not strictly ascending")


def test_layer_dataset_of_the_wrong_shape_or_type_is_refused(copy):
    name = f"{layer_group(0, 'conv')}/gap"

    def replace(h5):
        attrs = dict(h5[name].attrs)
        del h5[name]
        h5.create_dataset(name, data=np.zeros(N, dtype=np.int64), fletcher32=True)
        h5[name].attrs.update(attrs)

    edit(copy, replace)
    refused(copy, r"layers/00_conv/gap must be an \(N, D\) float32 matrix, found shape "
                  r"\(300,\) int64")


@pytest.mark.parametrize("layers, match", [
    (["conv"], r"/layers holds \['01_fc'\], which attribute 'layers' does not list"),
    (["conv", "fc", "head"], r"group layers/02_head of layer 'head' is missing"),
    (["fc", "conv"], r"group layers/00_fc of layer 'fc' is missing"),
])
def test_layers_list_that_does_not_match_the_groups_is_refused(copy, layers, match):
    edit(copy, lambda h5: h5.attrs.modify("layers", json.dumps(layers)))
    refused(copy, match)


@pytest.mark.parametrize("reductions, match", [
    (["flatten"], r"layers/00_conv holds \['gap'\], which attribute 'reductions' does not"),
    (["flatten", "gap", "pool2"], r"layers/00_conv/pool2 is missing"),
])
def test_reductions_list_that_does_not_match_the_datasets_is_refused(copy, reductions, match):
    edit(copy, lambda h5: h5.attrs.modify("reductions", json.dumps(reductions)))
    refused(copy, match)


def test_layer_group_without_its_original_shape_is_refused(copy):
    edit(copy, lambda h5: h5[layer_group(1, "fc")].attrs.__delitem__("original_shape"))
    refused(copy, r"layers/01_fc has no 'original_shape' attribute")


def test_opening_reads_no_row_of_a_layer(valid, monkeypatch):
    read = []
    real_getitem = h5py.Dataset.__getitem__

    def spy(self, key, *args, **kwargs):
        read.append(self.name)
        return real_getitem(self, key, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    with ActivationFile(valid) as f:
        assert sorted(read) == ["/data/index", "/data/label"]
        f.read("fc", "gap")
    assert read[-1] == f"/{layer_group(1, 'fc')}/gap"


def test_file_locked_by_another_process_is_reported_as_in_use_not_damaged(copy, monkeypatch):
    """An HDF5 writer holds an exclusive flock on its file; hold one the same way."""
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    fd = os.open(copy, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ActivationFileError) as caught:
            ActivationFile(copy)
    finally:
        os.close(fd)
    message = str(caught.value)
    assert "a.h5 is in use by another process" in message
    assert "wait" in message and "HDF5_USE_FILE_LOCKING=FALSE" in message
    assert "delete" not in message and "damaged" not in message
    with ActivationFile(copy) as f:  # once released, it opens
        assert f.n == N
