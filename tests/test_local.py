"""LocalStep: gradient isolation, equivalence with one summed backward, memory, resume."""

import copy
import io

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from training.auglocal import aux_plan, build_auglocal_aux
from training.local import LocalStep, MethodConfig, make_step, paper_config
from training.memory import track_saved_tensors
from training.models import build_model
from training.step import BackpropStep

SETTINGS = {"auglocal": dict(K=10, aux_depth=2, pyramid_coeff=0.5), "dgl": dict(K=10)}


def tiny_step(method, seed=0, dtype=torch.float32, **overrides):
    torch.manual_seed(seed)
    model = build_model("resnet20", width=4, num_classes=3).to(dtype)  # 10 layers
    settings = {**SETTINGS.get(method, {}), **overrides}
    return make_step(method, model, num_classes=3, input_size=(3, 8, 8), **settings)


def batch(dtype=torch.float32, n=6):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, generator=gen, dtype=dtype), torch.arange(n) % 3


def grads(module):
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def summed_loss_backward(model, aux, x, y):
    """The same losses as LocalStep, summed and back-propagated once (the way without the
    memory saving in docs/auglocal.md, section "The training step")."""
    losses, h = [], x
    for i, layer in enumerate(model.layers):
        h = layer(h)
        if str(i) in aux:
            losses.append(F.cross_entropy(aux[str(i)](h), y))
            h = h.detach()
    losses.append(F.cross_entropy(model.head(h), y))
    sum(losses).backward()


@pytest.mark.parametrize("method", ["auglocal", "dgl"])
def test_per_module_backward_equals_one_summed_backward_with_less_memory(method):
    step = tiny_step(method, dtype=torch.float64)
    twin = copy.deepcopy(step.trainable)
    params = list(step.trainable.parameters())
    x, y = batch(torch.float64)
    with track_saved_tensors(exclude=params) as local:
        step(x, y)
    with track_saved_tensors(exclude=twin.parameters()) as summed:
        summed_loss_backward(twin["model"], twin["aux"], x, y)
    a, b = grads(step.trainable), grads(twin)
    assert a.keys() == b.keys() == {n for n, _ in step.trainable.named_parameters()}
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    assert local.peak_bytes < 0.6 * summed.peak_bytes


def test_local_peak_is_the_largest_single_module():
    step = tiny_step("auglocal")
    model, aux = step.model, step.aux
    x, y = batch()
    with track_saved_tensors(exclude=step.trainable.parameters()) as local:
        step(x, y)
    # each module measured on its own: its layers (and aux net or head) plus the loss
    bounds = [int(k) for k in aux] + [len(model.layers) - 1]
    sizes, h, start = [], x, 0
    for end in bounds:
        with track_saved_tensors(exclude=step.trainable.parameters()) as module:
            for layer in model.layers[start:end + 1]:
                h = layer(h)
            out = aux[str(end)](h) if str(end) in aux else model.head(h)
            F.cross_entropy(out, y)
        sizes.append(module.peak_bytes)
        h, start = h.detach(), end + 1
    assert local.peak_bytes == max(sizes)


def test_a_later_module_puts_no_gradient_on_an_earlier_one():
    step = tiny_step("auglocal")
    with torch.no_grad():  # silence module 0's own loss: its aux logits become constant
        last = step.aux["0"][-1][-1]
        last.weight.zero_()
        last.bias.zero_()
    step(*batch())
    layer0 = [p.grad for p in step.model.layers[0].parameters()]
    assert all(g is None or torch.all(g == 0) for g in layer0)
    assert any(torch.any(p.grad != 0) for p in step.model.layers[1].parameters())


def test_every_parameter_gets_a_gradient_and_the_output_loss_is_reported():
    step = tiny_step("auglocal")
    x, y = batch()
    out = step(x, y)
    assert all(p.grad is not None for p in step.trainable.parameters())
    assert out.logits.shape == (6, 3) and not out.logits.requires_grad
    assert out.loss.shape == () and not out.loss.requires_grad
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, y))


def test_eval_runs_no_aux_net_and_a_step_runs_each_once():
    step = tiny_step("auglocal")
    calls = {k: 0 for k in step.aux}

    def counter(key):
        def hook(*_):
            calls[key] += 1
        return hook

    for key, net in step.aux.items():
        net.register_forward_hook(counter(key))
    x, y = batch()
    step.model.eval()
    with torch.no_grad():
        step.model(x)
    assert set(calls.values()) == {0}
    step.model.train()
    step(x, y)
    assert set(calls.values()) == {1}


def test_trainable_holds_model_and_aux_exactly_once():
    step = tiny_step("dgl")
    ids = [id(p) for p in step.trainable.parameters()]
    expected = {id(p) for p in step.model.parameters()} | {id(p) for p in step.aux.parameters()}
    assert len(ids) == len(set(ids)) and set(ids) == expected


def test_aux_state_round_trips_through_a_weights_only_save():
    source, target = tiny_step("auglocal", seed=0), tiny_step("auglocal", seed=1)
    source(*batch())  # moves BatchNorm running statistics away from their initial values
    buffer = io.BytesIO()
    torch.save(source.aux_state_dict(), buffer)
    buffer.seek(0)
    target.load_aux_state_dict(torch.load(buffer, weights_only=True))
    saved = source.aux.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in target.aux.state_dict().items())


@pytest.mark.parametrize("other, match", [
    (dict(aux_depth=1), r"missing .*unexpected"),
    (dict(K=9), r"missing \['6\."),
])
def test_aux_state_from_other_settings_is_refused(other, match):
    source, target = tiny_step("auglocal", **other), tiny_step("auglocal")
    with pytest.raises(ValueError, match=match):
        target.load_aux_state_dict(source.aux_state_dict())


def test_aux_state_with_other_shapes_is_refused():
    torch.manual_seed(0)
    model = build_model("resnet20", width=4, num_classes=3)
    five_classes = build_auglocal_aux(model, 10, 2, 0.5, num_classes=5)
    with pytest.raises(ValueError, match=r"shape mismatch \[.*'0\.2\.2\.weight'"):
        tiny_step("auglocal").load_aux_state_dict(five_classes.state_dict())


def test_missing_aux_state_is_refused():
    with pytest.raises(ValueError, match="no auxiliary weights"):
        tiny_step("dgl").load_aux_state_dict(None)


def test_make_step_builds_each_method():
    assert isinstance(tiny_step("bp"), BackpropStep)
    auglocal = tiny_step("auglocal")
    assert isinstance(auglocal, LocalStep)
    assert list(auglocal.aux) == [str(k) for k in aux_plan(auglocal.model.layer_widths, 10, 2, .5)]
    assert list(tiny_step("dgl", K=4).aux) == ["0", "1", "2"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="sgd"), r"unknown method 'sgd'"),
    (dict(method="bp", K=16), r"'bp' takes no K \(got 16\)"),
    (dict(method="auglocal", K=10), r"'auglocal' needs aux_depth"),
    (dict(method="dgl", aux_depth=2, K=10), r"'dgl' takes no aux_depth"),
    (dict(method="dgl", K=10, pyramid_coeff=0.5), r"'dgl' takes no pyramid_coeff"),
    (dict(method="dgl"), r"'dgl' needs K"),
    (dict(method="dgl", K=10, input_size=None), r"needs input_size"),
])
def test_make_step_errors(kwargs, match):
    kwargs.setdefault("input_size", (3, 8, 8))
    with pytest.raises(ValueError, match=match):
        make_step(model=build_model("resnet8", width=4), num_classes=10, **kwargs)


def test_method_config_round_trips():
    config = MethodConfig("auglocal", K=16, aux_depth=2, pyramid_coeff=0.5)
    assert config.to_dict() == {"name": "auglocal", "K": 16, "aux_depth": 2,
                                "pyramid_coeff": 0.5}
    assert MethodConfig.from_dict(config.to_dict()) == config


def test_local_step_errors():
    model = build_model("resnet8", width=4)
    with pytest.raises(ValueError, match=r"\['4', 'x'\] are not layer indices 0…3"):
        LocalStep(model, nn.ModuleDict({"0": nn.Identity(), "4": nn.Identity(),
                                        "x": nn.Identity()}))
    with pytest.raises(ValueError, match="Sequential has no `layers`"):
        LocalStep(nn.Sequential(nn.Linear(2, 2)), nn.ModuleDict())


@pytest.mark.parametrize("method, settings", [
    ("auglocal", dict(K=4, aux_depth=1, pyramid_coeff=None)), ("dgl", dict(K=4))])
def test_local_learning_fits_a_separable_synthetic_task(method, settings):
    torch.manual_seed(0)
    y = torch.arange(48) % 2
    x = torch.randn(48, 1, 8, 8) * 0.5
    x[:, :, :4] += (2 * y - 1).view(-1, 1, 1, 1).float()  # the class shifts the top half
    model = build_model("resnet8", width=4, in_channels=1, num_classes=2)  # 4 layers
    step = make_step(method, model, num_classes=2, input_size=(1, 8, 8), **settings)
    optimizer = torch.optim.SGD(step.trainable.parameters(), lr=0.05, momentum=0.9)
    first = None
    for _ in range(30):
        optimizer.zero_grad()
        loss = step(x, y).loss.item()
        first = first if first is not None else loss
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert loss < 0.5 * first and accuracy > 0.9


def test_paper_configs():
    assert paper_config("auglocal", "resnet110") == MethodConfig("auglocal", 55, 3, 0.5)
    assert paper_config("dgl", "resnet32") == MethodConfig("dgl", 16)
    assert paper_config("bp", "resnet32") == MethodConfig("bp")
    with pytest.raises(ValueError, match="not 'resnet20'"):
        paper_config("auglocal", "resnet20")
    with pytest.raises(ValueError, match="unknown method 'sgd'"):
        paper_config("sgd", "resnet32")
