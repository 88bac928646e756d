"""repsim.store.ActivationFile: partial reads agree with full reads, and damaged, incomplete
or foreign files are refused."""

from __future__ import annotations

import pickle
import shutil

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from repsim.extract import extract
from repsim.store import ActivationFile, ActivationFileError

N = 530  # rows: more than one 256-row chunk of the (N, 1024) flatten dataset, not a multiple


@pytest.fixture(scope="module")
def acts_path(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(N, 3, 16, 16)
    batches = [(x[i:i + 100], torch.arange(i, min(i + 100, N)) % 10,
                torch.arange(i, min(i + 100, N))) for i in range(0, N, 100)]
    return extract(model, batches, ["0", "1"], tmp_path_factory.mktemp("acts") / "a.h5",
                   reductions=("flatten", "gap"), meta={"dataset": "random"}, progress=False)


@pytest.fixture(scope="module")
def acts(acts_path):
    with ActivationFile(acts_path) as f:
        yield f


@pytest.fixture(scope="module")
def full(acts):
    return acts.read("0", "flatten")


def test_properties(acts):
    assert acts.layers == ["0", "1"]
    assert acts.reductions == ["flatten", "gap"]
    assert acts.n == N
    assert acts.shape("0", "flatten") == (N, 4 * 16 * 16)
    assert acts.shape("1", "gap") == (N, 4)
    np.testing.assert_array_equal(acts.indices, np.arange(N))
    np.testing.assert_array_equal(acts.labels, np.arange(N) % 10)
    assert acts.meta == {"dataset": "random"}
    assert "n=530" in repr(acts)


@settings(max_examples=40, deadline=None)
@given(start=st.one_of(st.none(), st.integers(-N - 5, N + 5)),
       stop=st.one_of(st.none(), st.integers(-N - 5, N + 5)),
       step=st.one_of(st.none(), st.integers(1, 300)))
def test_row_slice_equals_slice_of_full_read(acts, full, start, stop, step):
    rows = slice(start, stop, step)
    np.testing.assert_array_equal(acts.read("0", "flatten", rows), full[rows])


@pytest.mark.parametrize("block_rows", [1, 97, 256, N, 10 * N])
def test_iter_blocks_concatenated_equals_full_read(acts, full, block_rows):
    blocks = list(acts.iter_blocks("0", "flatten", block_rows))
    assert all(len(b) <= block_rows for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), full)


def test_relu_layer_is_the_conv_layer_clipped_at_zero(acts, full):
    np.testing.assert_array_equal(acts.read("1", "flatten"), np.maximum(full, 0))


def test_pickles_as_its_path_and_reopens(acts, full):
    clone = pickle.loads(pickle.dumps(acts))
    try:
        np.testing.assert_array_equal(clone.read("0", "flatten"), full)
    finally:
        clone.close()


def test_unknown_layer_or_reduction_lists_the_stored_ones(acts):
    with pytest.raises(ActivationFileError, match=r"layer '2' is not in .*\['0', '1'\]"):
        acts.read("2", "gap")
    with pytest.raises(ActivationFileError, match=r"reduction 'pool2' .*\['flatten', 'gap'\]"):
        acts.shape("0", "pool2")
    with pytest.raises(ActivationFileError, match=r"layer 'x' is not in"):
        acts.iter_blocks("x", "gap", 10)


def test_bad_rows_or_block_rows_are_refused(acts):
    with pytest.raises(ActivationFileError, match=r"rows must be a slice.*got list"):
        acts.read("0", "gap", [1, 2])
    with pytest.raises(ActivationFileError, match=r"block_rows must be a positive int, got 0"):
        acts.iter_blocks("0", "gap", 0)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.h5 does not exist.*repsim\.extract"):
        ActivationFile(tmp_path / "nope.h5")


def copy_with_root_attrs(src, dst, **attrs):
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as h5:
        h5.attrs.update(attrs)
    return dst


def test_incomplete_file_is_refused(acts_path, tmp_path):
    path = copy_with_root_attrs(acts_path, tmp_path / "a.h5", complete=False)
    with pytest.raises(ActivationFileError, match=r"a\.h5 is incomplete"):
        ActivationFile(path)


def test_file_without_complete_flag_is_refused(acts_path, tmp_path):
    path = tmp_path / "a.h5"
    shutil.copy(acts_path, path)
    with h5py.File(path, "a") as h5:
        del h5.attrs["complete"]
    with pytest.raises(ActivationFileError, match=r"is incomplete"):
        ActivationFile(path)


def test_other_format_version_is_refused(acts_path, tmp_path):
    path = copy_with_root_attrs(acts_path, tmp_path / "a.h5", format_version=99)
    with pytest.raises(ActivationFileError, match=r"format version 99 but this repsim reads ver"):
        ActivationFile(path)


def test_foreign_hdf5_file_is_refused(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["x"] = np.zeros(3)
    with pytest.raises(ActivationFileError, match=r"not a repsim activation file"):
        ActivationFile(tmp_path / "other.h5")


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file_is_refused(acts_path, tmp_path, keep):
    path = tmp_path / "a.h5"
    shutil.copy(acts_path, path)
    with open(path, "r+b") as fh:
        fh.truncate(int(path.stat().st_size * keep))
    with pytest.raises(ActivationFileError, match=r"damaged or truncated.*extract again"):
        with ActivationFile(path) as f:
            f.read("1", "flatten")


def test_non_hdf5_file_is_refused(tmp_path):
    path = tmp_path / "a.h5"
    path.write_text("not hdf5")
    with pytest.raises(ActivationFileError, match=r"damaged or truncated"):
        ActivationFile(path)
