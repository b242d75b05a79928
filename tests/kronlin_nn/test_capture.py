import copy
import gc

import pytest
import torch
from torch import nn

from kronlin_nn.capture import (
    PassRecorder,
    Recorder,
    check_chain,
    forward_recorded,
    homogeneous,
    merged_calls,
    own_passes,
)

from .helpers import SkipNet, data, tiny_mlp


class Reordered(nn.Module):
    """Registered in one order, called in another."""

    def __init__(self):
        super().__init__()
        self.second, self.first = nn.Linear(4, 2), nn.Linear(3, 4)

    def forward(self, x):
        return self.second(torch.sigmoid(self.first(x)))


def test_records_in_call_order_and_chain_check():
    model = Reordered()
    layers = [model.second, model.first]  # registration order
    x = torch.randn(5, 3)
    z, calls = forward_recorded(model, layers, x)
    assert [c.layer for c in calls] == [1, 0]  # layer list index, in call order
    torch.testing.assert_close(calls[0].a, x)
    torch.testing.assert_close(calls[1].output(), z)
    check_chain(calls)
    mlp = tiny_mlp([3, 4, 5, 2])
    check_chain(forward_recorded(mlp, [mlp[0], mlp[2], mlp[4]], x.double())[1])


def test_skip_connections_are_not_a_chain():
    model = SkipNet()
    _, calls = forward_recorded(model, [model.l1, model.l2, model.l3], torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"depends on layers \[0, 1\], expected \[1\]"):
        check_chain(calls)


def test_in_place_change_of_an_output_is_detected():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    _, calls = forward_recorded(model, [model[0], model[2]], torch.randn(5, 3))
    with pytest.raises(RuntimeError, match="in place"):
        calls[0].output()


def test_homogeneous_coordinate():
    a = torch.randn(4, 3)
    torch.testing.assert_close(homogeneous(a, True), torch.cat([a, torch.ones(4, 1)], 1))
    assert homogeneous(a, False) is a
    seq = torch.randn(4, 2, 3)  # (cases, positions, features): the coordinate on the features
    torch.testing.assert_close(homogeneous(seq, True), torch.cat([seq, torch.ones(4, 2, 1)], 2))


def test_weight_sharing_gives_one_record_per_call_and_unused_layers_are_refused():
    shared, unused = nn.Linear(3, 3), nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    x = torch.randn(5, 3)
    z, calls = forward_recorded(model, [shared], x)
    assert [c.layer for c in calls] == [0, 0]
    torch.testing.assert_close(calls[0].a, x)
    torch.testing.assert_close(calls[1].output(), z)
    with pytest.raises(ValueError, match=r"layers 1 \(Linear\) were not"):
        forward_recorded(model, [shared, unused], x)


def test_recorder_hooks_can_stay_attached_and_record_only_when_started():
    model = tiny_mlp([3, 4, 2], dtype=torch.float32)
    recorder = Recorder([model[0], model[2]])
    recorder.attach()
    x = torch.randn(5, 3)
    model(x)  # attached but not started: nothing recorded
    assert recorder.calls == []
    recorder.start()
    model(x)
    model(x[:2])
    calls = recorder.stop()
    assert [(c.layer, c.a.shape[0]) for c in calls] == [(0, 5), (1, 5), (0, 2), (1, 2)]
    model(x)
    assert len(recorder.calls) == 4  # stopped
    with recorder.recording() as again:  # attached already: stays attached afterwards
        model(x)
    assert len(again) == 2 and recorder._handles
    recorder.detach()
    assert not model[0]._forward_hooks


# -- the user's own passes -----------------------------------------------------------------------
def _recorded(model=None):
    model = model or tiny_mlp([3, 4, 5, 3])
    layers = [m for m in model if isinstance(m, nn.Linear)]
    loss_fn = nn.CrossEntropyLoss()
    return model, layers, loss_fn, PassRecorder(model, layers, loss_fn, layers[0].weight)


def test_pass_recorder_records_the_model_input_layer_calls_and_loss_arguments():
    model, layers, loss_fn, recorder = _recorded()
    x, y = data("ce", 6, 3, 3)
    loss = loss_fn(model(x), y)
    (p,) = recorder.passes
    assert torch.equal(p.inputs, x) and torch.equal(p.targets, y) and p.weight is None
    assert [c.layer for c in p.calls] == [0, 1, 2] and p.autocast is None
    _, expected = forward_recorded(model, layers, x)
    for c, e in zip(p.calls, expected, strict=True):
        assert torch.equal(c.a, e.a) and torch.equal(c.s, e.s) and c.s.grad_fn is None
    assert torch.equal(p.loss, loss.detach()) and torch.equal(p.z, model(x).detach())
    (loss / 3).backward()
    assert recorder.backpropagated() == [p] and p.weight.item() == pytest.approx(1 / 3)


def test_pass_recorder_ignores_passes_without_gradients_and_k_fac_s_own():
    model, _, loss_fn, recorder = _recorded()
    x, y = data("ce", 6, 3, 3)
    with torch.no_grad():
        loss_fn(model(x), y)
    with own_passes():
        loss_fn(model(x), y).backward()
    copy.deepcopy(model)(x)  # a copy's hooks are inert
    assert recorder.passes == []
    model(x).sum()  # never backpropagated through loss_fn: dropped at the next pass
    assert len(recorder.passes) == 1
    loss = loss_fn(model(x), y)
    assert len(recorder.passes) == 1 and recorder.passes[0].loss is not None
    del loss
    model(x)
    assert len(recorder.passes) == 1 and recorder.passes[0].loss is None


def test_merged_records_of_micro_batches_are_those_of_their_union():
    model, layers, loss_fn, recorder = _recorded()
    x, y = data("ce", 12, 3, 3)
    for rows in (slice(0, 5), slice(5, 7), slice(7, 12)):
        loss_fn(model(x[rows]), y[rows]).backward()
    passes = recorder.backpropagated()
    _, union = forward_recorded(model, layers, x)
    for n in (3, 6, 12):
        merged = merged_calls(passes, n, torch.float64)
        for c, e in zip(merged, union, strict=True):
            torch.testing.assert_close(c.a, e.a[:n], rtol=1e-15, atol=0)
            torch.testing.assert_close(c.output(), e.s[:n].detach(), rtol=1e-15, atol=0)
    assert merged_calls(passes, 4, torch.float32)[0].a.dtype == torch.float32
    passes[1].calls[1].s.add_(1.0)  # an output changed in place after its pass
    with pytest.raises(RuntimeError, match="modified in place"):
        merged_calls(passes, 12, torch.float64)
    passes[2].calls.reverse()
    with pytest.raises(ValueError, match="different orders"):
        merged_calls(passes[1:], 12, torch.float64)


def test_pass_recorder_hooks_go_with_the_recorder():
    model, layers, loss_fn, recorder = _recorded()
    assert model._forward_hooks and layers[0]._forward_hooks and loss_fn._forward_hooks
    del recorder
    gc.collect()
    assert not model._forward_hooks and not layers[0]._forward_hooks
    assert not model._forward_pre_hooks and not loss_fn._forward_hooks
