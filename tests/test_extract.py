"""repsim.extract: stored values agree with a direct forward pass through the submodules, and
every refusal says what was wrong."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from repsim.extract import ExtractError, extract
from repsim.store import ActivationFile


class Pair(nn.Module):
    """Returns a tuple, like many attention blocks: (B, C, H, W) → ((B, C, H, W), scalar)."""

    def forward(self, x):
        return 2 * x - 1, x.sum()


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6))
        self.act = nn.ReLU(inplace=True)  # overwrites block's output in place
        self.pair = Pair()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        x, _ = self.pair(self.act(self.block(self.stem(x))))
        return self.head(x)


def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet()
    bn = model.block[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def make_batches(x: torch.Tensor, batch: int, first_index: int = 100):
    """(inputs, labels, dataset_indices) batches; indices ascend with gaps."""
    n = len(x)
    labels = torch.arange(n) % 3
    indices = first_index + 2 * torch.arange(n)
    return [(x[i:i + batch], labels[i:i + batch], indices[i:i + batch])
            for i in range(0, n, batch)]


def inputs(n: int = 300, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def direct_outputs(model: TinyNet, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Each layer's output from calling the submodules by hand (no hooks, no in-place op)."""
    with torch.no_grad():
        stem = model.stem(x)
        block = model.block(stem)
        pair = 2 * torch.relu(block) - 1
        head = model.head(pair)
    return {name: t.numpy().astype(np.float64)
            for name, t in dict(stem=stem, block=block, pair=pair, head=head).items()}


def reduce_numpy(a: np.ndarray, reduction: str) -> np.ndarray:
    """(B, C, H, W) → (B, D), computed independently of repsim."""
    b, c, h, w = a.shape
    if reduction == "flatten":
        return a.reshape(b, -1)
    if reduction == "gap":
        return a.mean(axis=(2, 3))
    k = int(reduction.removeprefix("pool"))
    return a.reshape(b, c, k, h // k, k, w // k).mean(axis=(3, 5)).reshape(b, -1)


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """300 rows in batches of 70 (not a multiple of any chunk), three reductions."""
    model, x = tiny_net(), inputs()
    path = extract(model, make_batches(x, 70), ["pair", "stem", "block"],
                   tmp_path_factory.mktemp("acts") / "tiny.h5",
                   reductions=("flatten", "gap", "pool2"), meta={"split": "test", "epoch": 3},
                   progress=False)
    return model, x, path


@pytest.mark.parametrize("reduction", ["flatten", "gap", "pool2"])
@pytest.mark.parametrize("layer", ["stem", "block", "pair"])
def test_values_equal_direct_forward(tiny_file, layer, reduction):
    model, x, path = tiny_file
    expected = reduce_numpy(direct_outputs(model, x)[layer], reduction)
    with ActivationFile(path) as f:
        got = f.read(layer, reduction)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_inplace_relu_after_hooked_block_does_not_change_stored_values(tiny_file):
    model, x, path = tiny_file
    with ActivationFile(path) as f:
        block = f.read("block", "flatten")
    assert (block < 0).mean() > 0.2  # the ReLU would have zeroed these
    np.testing.assert_allclose(block, direct_outputs(model, x)["block"].reshape(len(x), -1),
                               rtol=1e-5, atol=1e-5)


def test_layers_keep_requested_order_with_labels_indices_and_provenance(tiny_file):
    model, x, path = tiny_file
    batches = make_batches(x, 70)
    with ActivationFile(path) as f:
        assert f.layers == ["pair", "stem", "block"]
        assert f.reductions == ["flatten", "gap", "pool2"]
        assert f.n == len(x)
        np.testing.assert_array_equal(f.labels, torch.cat([b[1] for b in batches]).numpy())
        np.testing.assert_array_equal(f.indices, torch.cat([b[2] for b in batches]).numpy())
        assert f.labels.dtype == f.indices.dtype == np.int64
        assert f.meta == {"split": "test", "epoch": 3}
        assert f.original_shape("block") == (6, 16, 16)
        assert f.shape("block", "pool2") == (len(x), 6 * 2 * 2)
        assert f.attrs["versions"]["torch"] == torch.__version__
    assert no_hooks_left(model)


def test_chunks_are_whole_rows_of_about_one_mib(tiny_file):
    _, _, path = tiny_file
    with h5py.File(path) as h5:
        dataset = h5["layers/02_block/flatten"]
        d = dataset.shape[1]
        assert dataset.chunks == (2**20 // (4 * d), d)
        assert dataset.compression == "lzf"
        assert dataset.attrs["module"] == "block" and dataset.attrs["reduction"] == "flatten"


def test_linear_layer_output_is_flattened(tmp_path):
    model, x = tiny_net(), inputs(20)
    path = extract(model, make_batches(x, 8), ["head"], tmp_path / "a.h5", progress=False)
    with ActivationFile(path) as f:
        np.testing.assert_allclose(f.read("head", "flatten"), direct_outputs(model, x)["head"],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compression", ["gzip", None])
def test_other_compressions_store_the_same_values(tmp_path, compression):
    model, x = tiny_net(), inputs(20)
    path = extract(model, make_batches(x, 8), ["stem"], tmp_path / "a.h5", progress=False,
                   reductions=("gap",), compression=compression)
    with ActivationFile(path) as f:
        np.testing.assert_allclose(f.read("stem", "gap"),
                                   reduce_numpy(direct_outputs(model, x)["stem"], "gap"),
                                   rtol=1e-5, atol=1e-6)


def test_torchvision_resnet18_by_module_names(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = inputs(6, 32)
    path = extract(model, make_batches(x, 4), ["layer1.0", "layer4"], tmp_path / "r.h5",
                   reductions=("gap",), progress=False)
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        layer1_0 = model.layer1[0](stem)
        layer4 = model.layer4(model.layer3(model.layer2(model.layer1[1](layer1_0))))
    with ActivationFile(path) as f:
        np.testing.assert_allclose(f.read("layer1.0", "gap"),
                                   reduce_numpy(layer1_0.numpy(), "gap"), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(f.read("layer4", "gap"),
                                   reduce_numpy(layer4.numpy(), "gap"), rtol=1e-4, atol=1e-5)


def test_resnet18_shared_relu_firing_twice_is_refused(tmp_path):
    model = torchvision.models.resnet18(weights=None).eval()
    with pytest.raises(ExtractError, match=r"'layer1\.0\.relu' ran more than once.*'layer1\.0'"):
        extract(model, make_batches(inputs(2, 32), 2), ["layer1.0.relu"], tmp_path / "r.h5",
                progress=False)
    assert list(tmp_path.iterdir()) == []
    assert no_hooks_left(model)


def test_dataparallel_is_unwrapped(tmp_path, tiny_file):
    model, x, path = tiny_file
    wrapped = nn.DataParallel(model)
    out = extract(wrapped, make_batches(x, 70), ["block"], tmp_path / "dp.h5",
                  reductions=("gap",), progress=False)
    with ActivationFile(out) as dp, ActivationFile(path) as plain:
        np.testing.assert_array_equal(dp.read("block", "gap"), plain.read("block", "gap"))
    with pytest.raises(ExtractError, match=r"no 'module\.' prefix"):
        extract(wrapped, make_batches(x, 70), ["module.block"], tmp_path / "dp2.h5",
                progress=False)


def test_crash_midway_leaves_no_file_and_a_rerun_succeeds(tmp_path):
    model, x = tiny_net(), inputs(40)
    batches = make_batches(x, 10)

    def crashing():
        yield from batches[:2]
        raise RuntimeError("disk on fire")

    target = tmp_path / "a.h5"
    with pytest.raises(RuntimeError, match="disk on fire"):
        extract(model, crashing(), ["stem"], target, progress=False)
    assert list(tmp_path.iterdir()) == []
    assert no_hooks_left(model)
    extract(model, iter(batches), ["stem"], target, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]
    with ActivationFile(target) as f:
        assert f.n == 40


def test_rerun_replaces_an_existing_file(tmp_path):
    model, x = tiny_net(), inputs(20)
    target = tmp_path / "a.h5"
    extract(model, make_batches(x, 10), ["stem"], target, progress=False)
    extract(model, make_batches(x[:10], 10), ["stem"], target, progress=False)
    with ActivationFile(target) as f:
        assert f.n == 10


# ---- refusals: each names the offending value and the fix ----

def refuse(tmp_path, match, model=None, batches=None, layers=("stem",), **kwargs):
    model = tiny_net() if model is None else model
    batches = make_batches(inputs(8), 4) if batches is None else batches
    with pytest.raises(ExtractError, match=match):
        extract(model, batches, layers, tmp_path / "a.h5", progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []
    assert no_hooks_left(model)


def test_unknown_layer_lists_close_matches(tmp_path):
    refuse(tmp_path, r"'blokc' is not a module.*close matches: \['block", layers=["blokc"])


def test_train_mode_is_refused(tmp_path):
    refuse(tmp_path, r"training mode.*call model\.eval\(\)", model=tiny_net().train())


def test_train_mode_submodule_is_refused(tmp_path):
    model = tiny_net()
    model.block.train()
    refuse(tmp_path, r"training mode.*'block'.*call model\.eval\(\)", model=model)


def test_layer_that_never_fires_is_refused(tmp_path):
    refuse(tmp_path, r"'unused' never ran", layers=["stem", "unused"])


class BatchSwap(nn.Module):
    def forward(self, x):
        return x.transpose(0, 1)


class SwapNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.swap = BatchSwap()

    def forward(self, x):
        return self.swap(x).transpose(0, 1)


def test_output_whose_first_axis_is_not_the_batch_is_refused(tmp_path):
    refuse(tmp_path, r"'swap' output has shape \(3, 4, 16, 16\).*not the batch of 4",
           model=SwapNet().eval(), layers=["swap"])


class DictOut(nn.Module):
    def forward(self, x):
        return {"x": x}


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = DictOut()

    def forward(self, x):
        return self.inner(x)["x"]


def test_non_tensor_output_is_refused(tmp_path):
    refuse(tmp_path, r"'inner' returned dict, not a tensor", model=DictNet().eval(),
           layers=["inner"])


@pytest.mark.parametrize("name", ["pool0", "avg", "poolx", "Gap"])
def test_unknown_reduction_is_refused(tmp_path, name):
    refuse(tmp_path, rf"unknown reduction '{name}'.*'pool<k>'", reductions=("gap", name))


def test_gap_of_a_linear_output_is_refused(tmp_path):
    refuse(tmp_path, r"'gap' needs a \(B, C, \*spatial\) output.*'head' gave shape \(4, 3\)",
           layers=["head"], reductions=("gap",))


def test_pool_of_a_3d_output_is_refused(tmp_path):
    model = nn.Sequential(nn.Conv1d(3, 2, 1)).eval()
    batches = [(torch.randn(4, 3, 5), torch.zeros(4), torch.arange(4))]
    refuse(tmp_path, r"'pool2' needs a \(B, C, H, W\) output.*'0' gave shape \(4, 2, 5\)",
           model=model, batches=batches, layers=["0"], reductions=("pool2",))


@pytest.mark.parametrize("size, reduction, match", [
    ((16, 16), "pool17", r"'pool17' .*'stem' is 16×16.*pool<k> with k ≤ 16.*'gap' or 'flatten'"),
    ((4, 8), "pool5", r"'pool5' .*'stem' is 4×8.*pool<k> with k ≤ 4"),
], ids=["square", "oblong"])
def test_pool_larger_than_the_feature_map_is_refused(tmp_path, size, reduction, match):
    x = torch.randn(4, 3, *size, generator=torch.Generator().manual_seed(1))
    refuse(tmp_path, match, batches=make_batches(x, 4), reductions=("gap", reduction))


def test_pool_to_the_feature_map_size_equals_flatten(tmp_path):
    model, x = tiny_net(), inputs(8, 6)
    path = extract(model, make_batches(x, 4), ["stem"], tmp_path / "a.h5",
                   reductions=("flatten", "pool6"), progress=False)
    with ActivationFile(path) as f:
        np.testing.assert_array_equal(f.read("stem", "pool6"), f.read("stem", "flatten"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(layers=[]), r"layers must be a non-empty list"),
    (dict(layers="stem"), r"layers must be a non-empty list.*'stem'"),
    (dict(layers=["stem", "stem"]), r"layers lists \['stem'\] more than once"),
    (dict(reductions=()), r"reductions must be a non-empty list"),
    (dict(reductions=("gap", "gap")), r"reductions lists \['gap'\] more than once"),
    (dict(compression="zstd"), r"compression must be one of .*'zstd'"),
    (dict(meta={"sha": object()}), r"meta\['sha'\] is not JSON-serialisable"),
    (dict(meta={1: "a"}), r"meta keys must be non-empty strings, got 1"),
    (dict(meta={"arch": "x" * 40000}), r"meta\['arch'\] is 40002 bytes"),
    (dict(device="cuda"), r"model parameters are on cpu but device='cuda'.*model\.to"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
    refuse(tmp_path, match, **kwargs)


def test_batch_that_is_not_a_triple_is_refused(tmp_path):
    x = inputs(8)
    refuse(tmp_path, r"batch 0 is a tuple of length 2.*\(inputs, labels, dataset_indices\)",
           batches=[(x, torch.zeros(8))])


def test_labels_of_the_wrong_length_are_refused(tmp_path):
    x = inputs(8)
    refuse(tmp_path, r"batch 0: 8 inputs but labels of shape \(7,\)",
           batches=[(x, torch.zeros(7), torch.arange(8))])


def test_indices_not_ascending_across_batches_are_refused(tmp_path):
    x = inputs(8)
    batches = [(x[:4], torch.zeros(4), torch.arange(4, 8)),
               (x[4:], torch.zeros(4), torch.arange(4))]
    refuse(tmp_path, r"batch 1: dataset indices \[0, 1, 2, 3\].*after 7.*shuffle=False",
           batches=batches)


def test_input_size_changing_between_batches_is_refused(tmp_path):
    batches = [(inputs(4, 16), torch.zeros(4), torch.arange(4)),
               (inputs(4, 8), torch.zeros(4), torch.arange(4, 8))]
    refuse(tmp_path, r"'stem' output shape changed from \(4, 16, 16\) to \(4, 8, 8\)",
           batches=batches)


def test_no_batches_is_refused(tmp_path):
    refuse(tmp_path, r"yielded no batch", batches=[])

