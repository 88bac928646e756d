"""Saved-tensor accounting and MAC counting against analytically known values."""

import pytest
import torch
from torch import nn

from training.local import make_step
from training.memory import forward_macs, measure_step_memory, track_saved_tensors
from training.models import build_model
from training.step import BackpropStep


def test_linear_chain_saves_exactly_each_layers_input():
    torch.manual_seed(0)
    dims = [8, 16, 32, 4]
    net = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))).double()
    x = torch.randn(5, dims[0], dtype=torch.float64)
    with track_saved_tensors(exclude=net.parameters()) as tracker:
        loss = net(x).sum()
        held = tracker.live_bytes
        loss.backward()
    # Linear i saves its input (5 × dims[i] float64) for the weight gradient, nothing else
    expected = sum(5 * d * 8 for d in dims[:-1])
    assert held == tracker.peak_bytes == expected
    assert tracker.live_bytes == 0  # the graph is gone after backward


def test_a_storage_saved_twice_or_through_a_view_counts_once():
    x = torch.randn(64, 32, requires_grad=True)
    with track_saved_tensors() as tracker:
        y = (x * x).sum() + (x[:10] * x[:10].t().t()).sum()
        assert tracker.live_bytes == 64 * 32 * 4
        del y
    assert tracker.live_bytes == 0 and tracker.peak_bytes == 64 * 32 * 4


def test_parameters_are_not_charged_as_saved_tensors():
    layer = nn.Linear(32, 32)
    x = torch.randn(4, 32, requires_grad=True)
    with track_saved_tensors(exclude=layer.parameters()) as tracker:
        layer(x).sum().backward()
    assert tracker.peak_bytes == x.nbytes  # the weight (saved for x's gradient) is excluded


def test_measure_step_memory_counts_parameters_gradients_and_momentum():
    model = build_model("resnet8", width=4, num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    report = measure_step_memory(BackpropStep(model), optimizer, x, y)
    n_bytes = sum(p.numel() for p in model.parameters()) * 4
    assert report.params_bytes == report.grads_bytes == report.optimizer_bytes == n_bytes
    assert report.total_peak_bytes == report.saved_peak_bytes + 3 * n_bytes
    assert report.saved_peak_bytes >= x.nbytes  # the first conv keeps the input
    assert report.cuda_peak_bytes is None
    assert report.to_dict()["saved_peak_bytes"] == report.saved_peak_bytes


def test_local_learning_holds_far_less_than_backprop_on_a_deep_net():
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
    saved = {}
    for method, kwargs in [("bp", {}), ("auglocal", dict(K=16, aux_depth=2, pyramid_coeff=0.5)),
                           ("dgl", dict(K=16))]:
        model = build_model("resnet32", width=4, num_classes=3)  # 16 layers
        step = make_step(method, model, num_classes=3, input_size=(3, 16, 16), **kwargs)
        optimizer = torch.optim.SGD(step.trainable.parameters(), lr=0.1, momentum=0.9)
        saved[method] = measure_step_memory(step, optimizer, x, y).saved_peak_bytes
    assert saved["auglocal"] < 0.5 * saved["bp"]
    assert saved["dgl"] < 0.25 * saved["bp"]


def test_forward_macs_of_one_conv_and_one_linear():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, 5))
    x = torch.randn(7, 3, 8, 8)
    assert forward_macs(net, lambda: net(x)) == 8 * 4 * 4 * 3 * 9 + 5 * 128


def test_forward_macs_match_the_spec_costs_of_resnet32_auglocal():
    # docs/auglocal.md, "Costs": ResNet-32 at 32×32 is 69 M conv MACs; d=2 aux nets add ≈105 M
    model = build_model("resnet32")
    step = make_step("auglocal", model, K=16, aux_depth=2, pyramid_coeff=0.5, num_classes=10)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    primary = forward_macs(model.layers, lambda: step(x, y))
    aux = forward_macs(step.aux, lambda: step(x, y))
    assert primary == pytest.approx(69e6, rel=0.01)
    assert aux == pytest.approx(105e6, rel=0.01)
    assert sum(p.numel() for p in step.aux.parameters()) == pytest.approx(1.34e6, rel=0.01)
