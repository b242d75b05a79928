import math

import pytest
import torch

from kronlin_nn.experiments.baseline import SGDNesterov
from kronlin_nn.experiments.models import autoencoder, reconstruction_error
from kronlin_nn.experiments.training import EvalClock, Method, train


class Recorder:
    """A stepper that moves the parameters by a constant and logs its batches."""

    def __init__(self, model, loss=1.0, accepted=True):
        self.params = list(model.parameters())
        self.batches = []
        self.loss, self.accepted = loss, accepted

    def step(self, inputs, targets):
        assert inputs is targets
        self.batches.append(inputs)
        with torch.no_grad():
            for p in self.params:
                p.add_(0.01)
        return {"loss": self.loss, "accepted": self.accepted, "rho": math.nan,
                "alpha": torch.tensor(0.5)}


def _method(make, batch=lambda k: 3 + k):
    return Method("fake", "fake", make, batch)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    return autoencoder([6, 4, 2, 4, 6]), torch.rand(40, 6)


def test_eval_clock_is_geometric():
    clock = EvalClock(100.0, first=0.01, factor=2.0)
    due = [t for t in (0.5, 1.0, 1.5, 2.0, 3.9, 4.0, 50.0, 63.9, 64.0) if clock.due(t)]
    assert due == [1.0, 2.0, 4.0, 50.0, 64.0]


def test_loop_steps_batches_and_records(setup):
    model, x = setup
    steppers = []

    def make(m):
        steppers.append(Recorder(m))
        return steppers[-1]

    result = train(_method(make), model, x, budget=1e9, seed=0, polyak_start=3,
                   max_iterations=6, evaluate_along=False, progress=None)
    batches = steppers[0].batches
    assert [b.shape[0] for b in batches] == [4, 5, 6, 7, 8, 9]
    # rows of x, without repetition within a batch
    for b in batches:
        rows = {tuple(r.tolist()) for r in b}
        assert len(rows) == b.shape[0] and rows <= {tuple(r.tolist()) for r in x}
    assert result.iterations == 6 and result.seconds > 0
    first, last = result.records[0], result.records[-1]
    assert (first["iteration"], first["seconds"], first["batch_size"]) == (0, 0.0, 0)
    assert (last["iteration"], last["batch_size"]) == (6, 9)
    assert last["train_error_current"] == pytest.approx(reconstruction_error(model, x))
    assert last["train_error"] == min(last["train_error_current"], last["train_error_average"])
    assert last["train_error_average"] != last["train_error_current"]  # averaging started
    assert last["rho"] is None and last["alpha"] == 0.5 and last["accepted"] is True


def test_same_seed_same_batches(setup):
    model, x = setup
    logs = []
    for _ in range(2):
        stepper = {}

        def make(m, stepper=stepper):
            stepper["s"] = Recorder(m)
            return stepper["s"]

        train(_method(make), model, x, budget=1e9, seed=5, polyak_start=1, max_iterations=3,
              progress=None)
        logs.append(stepper["s"].batches)
    for a, b in zip(*logs, strict=True):
        assert torch.equal(a, b)


def test_divergence_stops_but_rejected_steps_do_not(setup):
    model, x = setup
    diverged = train(_method(lambda m: Recorder(m, loss=math.nan)), model, x, budget=1e9,
                     seed=0, polyak_start=1, max_iterations=50, progress=None)
    assert diverged.iterations == 1
    rejected = train(_method(lambda m: Recorder(m, loss=math.nan, accepted=False)), model, x,
                     budget=1e9, seed=0, polyak_start=1, max_iterations=5, progress=None)
    assert rejected.iterations == 5


def test_time_budget_stops_the_run_and_evaluations_are_untimed(setup):
    model, x = setup

    def make(m):
        return SGDNesterov(m, torch.nn.BCEWithLogitsLoss(), lr=1.0)

    result = train(_method(make, batch=lambda k: 20), model, x, budget=0.3, seed=0,
                   polyak_start=1, progress=None)
    assert 0.3 <= result.seconds < 1.0
    assert len(result.records) >= 3
    seconds = [r["seconds"] for r in result.records]
    assert seconds == sorted(seconds)
    assert result.records[-1]["train_error"] < result.records[0]["train_error"]
