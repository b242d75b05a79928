import pytest
import torch
from torch import nn

from kronlin_nn.capture import Recorder, check_chain, forward_recorded, homogeneous

from .helpers import SkipNet, tiny_mlp


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
