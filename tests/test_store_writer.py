"""repsim.store.ActivationWriter: what it writes reads back unchanged through ActivationFile,
the target appears only when complete, and every refusal leaves no file behind."""

from __future__ import annotations

import ast
from pathlib import Path

import h5py
import numpy as np
import pytest

import repsim.store
from repsim.store import ActivationFile, ActivationFileError, ActivationWriter, _RowAppender

SHAPES = {"conv": (3, 4, 4), "fc": (5,)}


def batch(rng: np.random.Generator, start: int, size: int):
    """One batch of (acts, shapes, labels, indices) with rows start, start + 1, ..."""
    conv = rng.standard_normal((size, 3, 4, 4)).astype(np.float32)
    acts = {"conv": {"flatten": conv.reshape(size, -1), "gap": conv.mean(axis=(2, 3))},
            "fc": {"flatten": rng.standard_normal((size, 5)).astype(np.float32)}}
    acts["fc"]["gap"] = acts["fc"]["flatten"]
    indices = np.arange(start, start + size, dtype=np.int64) * 3
    return acts, SHAPES, indices % 7, indices


def write(path, batches, **kwargs) -> None:
    with ActivationWriter(path, ["conv", "fc"], ["flatten", "gap"], **kwargs) as writer:
        for b in batches:
            writer.append(*b)


def test_written_rows_read_back_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [70, 1, 300, 29]
    batches = [batch(rng, sum(sizes[:i]), size) for i, size in enumerate(sizes)]
    path = tmp_path / "sub" / "a.h5"
    write(path, batches, meta={"split": "test", "epoch": 3}, compression="gzip",
          versions={"torch": "9.9"})
    with ActivationFile(path) as f:
        assert f.layers == ["conv", "fc"] and f.reductions == ["flatten", "gap"]
        assert f.n == sum(sizes)
        for layer in f.layers:
            for reduction in f.reductions:
                np.testing.assert_array_equal(
                    f.read(layer, reduction),
                    np.concatenate([b[0][layer][reduction] for b in batches]))
        np.testing.assert_array_equal(f.labels, np.concatenate([b[2] for b in batches]))
        np.testing.assert_array_equal(f.indices, np.concatenate([b[3] for b in batches]))
        assert f.original_shape("conv") == (3, 4, 4) and f.original_shape("fc") == (5,)
        assert f.meta == {"split": "test", "epoch": 3}
        assert f.attrs["versions"]["torch"] == "9.9"
        assert f.attrs["versions"]["numpy"] == np.__version__
        assert f.attrs["compression"] == "gzip"
    assert [p.name for p in path.parent.iterdir()] == ["a.h5"]


def test_target_appears_only_when_the_block_ends(tmp_path):
    target = tmp_path / "a.h5"
    target.write_text("older file")
    with ActivationWriter(target, ["conv", "fc"], ["flatten", "gap"]) as writer:
        writer.append(*batch(np.random.default_rng(0), 0, 10))
        assert target.read_text() == "older file"
        others = [p.name for p in tmp_path.iterdir() if p != target]
        assert len(others) == 1 and others[0].startswith(".a.h5.") and others[0].endswith(".tmp")
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]
    with ActivationFile(target) as f:
        assert f.n == 10


def test_exception_in_the_block_removes_the_temporary_file(tmp_path):
    target = tmp_path / "a.h5"
    target.write_text("older file")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with ActivationWriter(target, ["conv", "fc"], ["flatten", "gap"]) as writer:
            writer.append(*batch(np.random.default_rng(0), 0, 10))
            raise RuntimeError("disk on fire")
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]
    assert target.read_text() == "older file"


def test_no_batch_is_refused(tmp_path):
    with pytest.raises(ActivationFileError, match=r"no batch was appended to .*a\.h5"):
        write(tmp_path / "a.h5", [])
    assert list(tmp_path.iterdir()) == []


def test_shape_changing_between_batches_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    acts, _, labels, indices = batch(rng, 10, 5)
    changed = (acts, {"conv": (3, 2, 2), "fc": (5,)}, labels, indices)
    with pytest.raises(ActivationFileError,
                       match=r"'conv' output shape changed from \(3, 4, 4\) to \(3, 2, 2\)"):
        write(tmp_path / "a.h5", [batch(rng, 0, 5), changed])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, match", [
    (dict(compression="zstd"), r"compression must be one of .*'zstd'"),
    (dict(meta=["a"]), r"meta must be a dict, got list"),
    (dict(meta={1: "a"}), r"meta keys must be non-empty strings, got 1"),
    (dict(meta={"sha": object()}), r"meta\['sha'\] is not JSON-serialisable"),
    (dict(meta={"arch": "x" * 40000}), r"meta\['arch'\] is 40002 bytes"),
])
def test_bad_arguments_are_refused_before_any_file_exists(tmp_path, kwargs, match):
    with pytest.raises(ActivationFileError, match=match):
        ActivationWriter(tmp_path / "a.h5", ["conv"], ["gap"], **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_the_format_module_does_not_import_torch():
    """store.py works on numpy arrays; its own imports (not those of the repsim package,
    which other modules extend) name no torch module."""
    tree = ast.parse(Path(repsim.store.__file__).read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names]
    imported += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert "h5py" in imported
    assert not [name for name in imported if name and name.split(".")[0] == "torch"]


def test_rows_reach_the_file_in_whole_chunks(tmp_path):
    """A chunk written in parts is recompressed per part and leaves stale copies in the file."""
    with h5py.File(tmp_path / "a.h5", "w") as h5:
        dataset = h5.create_dataset("x", shape=(0, 2), maxshape=(None, 2), chunks=(100, 2),
                                    dtype=np.float32, compression="lzf")
        appender = _RowAppender(dataset)
        rows = np.arange(420, dtype=np.float32).reshape(210, 2)
        lengths = []
        for part in np.split(rows, [70, 140]):
            appender.append(part)
            lengths.append(dataset.shape[0])
        appender.flush()
        assert lengths == [0, 100, 200]
        np.testing.assert_array_equal(dataset[()], rows)


def test_reading_activation_files_does_not_load_torch():
    import subprocess
    import sys

    code = "import sys, repsim.store; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"
