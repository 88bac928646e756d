"""Writer and reader edge cases found in review: reused caller buffers, module names with a
slash, overlapping writers and SIGTERM, empty batches, folders, empty metadata keys."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
from torch import nn

from repsim.extract import extract
from repsim.store import ActivationFile, ActivationFileError, ActivationWriter


def test_a_loader_that_refills_its_buffers_gets_each_batch_stored(tmp_path):
    labels, inputs = torch.zeros(4, dtype=torch.long), torch.zeros(4, 3)

    def batches():
        for b in range(3):
            labels.fill_(b)
            inputs.normal_()
            yield inputs, labels, torch.arange(4 * b, 4 * b + 4)
    torch.manual_seed(0)
    expected = [(b, inputs.clone()) for b, _ in enumerate(batches())]
    model = nn.Sequential(nn.Linear(3, 2)).eval()
    torch.manual_seed(0)
    path = extract(model, batches(), ["0"], tmp_path / "a.h5", progress=False)
    with ActivationFile(path) as f:
        np.testing.assert_array_equal(f.labels, np.repeat([0, 1, 2], 4))
        with torch.inference_mode():
            direct = torch.cat([model(x) for _, x in expected]).numpy()
        np.testing.assert_allclose(f.read("0", "flatten"), direct, rtol=1e-6)


def test_a_module_name_with_a_slash_is_written_and_read_back(tmp_path):
    model = nn.Sequential()
    model.add_module("enc/fc", nn.Linear(4, 3))
    x = torch.randn(8, 4)
    path = extract(model.eval(), [(x, torch.zeros(8, dtype=torch.long), torch.arange(8))],
                   ["enc/fc"], tmp_path / "slash.h5", progress=False)
    with ActivationFile(path) as f:
        assert f.layers == ["enc/fc"]
        with torch.inference_mode():
            np.testing.assert_allclose(f.read("enc/fc", "flatten"), model(x).numpy(), rtol=1e-6)


def rows(size, start=0):
    acts = {"l": {"gap": np.ones((size, 2), np.float32)}}
    return acts, {"l": (2,)}, np.zeros(size, np.int64), np.arange(start, start + size)


def test_sigterm_stays_caught_while_any_writer_is_open(tmp_path):
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with ActivationWriter(tmp_path / "a.h5", ["l"], ["gap"]) as a:
        with ActivationWriter(tmp_path / "b.h5", ["l"], ["gap"]) as b:
            a.append(*rows(4))
            b.append(*rows(4))
            caught = signal.getsignal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is caught is not signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_batch_of_no_rows_is_refused(tmp_path):
    with pytest.raises(ActivationFileError, match="a batch of 0 rows"):
        with ActivationWriter(tmp_path / "c.h5", ["l"], ["gap"]) as w:
            w.append(*rows(0))
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_not_called_a_damaged_file(tmp_path):
    with pytest.raises(ActivationFileError, match="is a folder, not an activation file"):
        ActivationFile(tmp_path)


def test_an_empty_metadata_key_is_refused(tmp_path):
    with pytest.raises(ActivationFileError, match="meta keys must be non-empty strings, got ''"):
        ActivationWriter(tmp_path / "d.h5", ["l"], ["gap"], meta={"": 1})
    assert list(tmp_path.iterdir()) == []
