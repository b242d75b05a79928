"""Distributed K-FAC in gloo process groups of 2, 3 and 4 ranks, against the single process.

Each job trains a tiny float64 network for six steps with every rank feeding its shard (λ₀
searched at step 1, inverses refreshed at steps 1–4 and 6, γ searched over three candidates and
ρ computed at steps 2, 4 and 6), and the oracle is the single-process run on the union batch in
:func:`~kronlin_nn.distributed.union_order`. The shards are contiguous slices of the data, so
the union order is not the data's own. Each rank steps in one of the three forms of
``KFAC.step`` (its own passes, the user's backward, a closure; the user's gradient accumulated
over micro-batches too), the oracle always in the first.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kronlin_nn import KFAC
from kronlin_nn.curvature import KFACWarning
from kronlin_nn.distributed import union_order

from .helpers import LOSS_CLASSES, data, flat_params, tiny_mlp
from .rank_pool import RankPool

SIZES = [5, 7, 6, 3]
CONFIG = {"seed": 3, "gamma_rule": "greedy", "inverse_every": 2, "gamma_every": 2,
          "damping_every": 2, "stats_fraction": 0.5, "quad_min_cases": 8}
STEPS = 6
SCALARS = ("loss", "lambda", "gamma", "alpha", "mu", "rho")


FORMS = ("inputs", "backward", "closure", "micro-batches")


def make_loss(name: str) -> nn.Module:
    """The loss module: one of ``LOSS_CLASSES``, ``"mse-sum"``, or ``"ce-weighted"`` (class
    weights, an ignored class and label smoothing: case weights whose sums differ between
    shards)."""
    if name == "mse-sum":
        return nn.MSELoss(reduction="sum")
    if name == "ce-weighted":
        return nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64),
                                   ignore_index=0, label_smoothing=0.1)
    return LOSS_CLASSES[name]()


@dataclass(frozen=True)
class Case:
    """A job: the shard sizes, the loss, extra KFAC keywords, whether DDP wraps the model,
    and the form of the steps (:data:`FORMS`)."""

    shards: tuple[int, ...]
    loss: str = "mse"
    kfac: tuple[tuple[str, object], ...] = ()
    ddp: bool = False
    form: str = "inputs"

    def rows(self, rank: int | None) -> torch.Tensor | slice:
        """The rank's shard of the data, or (``None``) the union batch in its order."""
        starts = np.cumsum([0, *self.shards])
        if rank is not None:
            return slice(int(starts[rank]), int(starts[rank + 1]))
        return torch.tensor([int(starts[r]) + i for r, i in union_order(self.shards)])


def train(group, case: Case, steps: int = STEPS, resume: bytes | None = None,
          save_after: int | None = None, bad: tuple[int, int] | None = None) -> dict:
    """Run ``case`` on this rank's shard (``group=None``: one process on the union batch).

    ``resume``: a saved ``{"model", "opt"}`` to start from; ``save_after``: save after that
    step (``state_dict`` on every rank); ``bad = (step, rank)``: a NaN input on that rank then.
    Returns per step the diagnostics, the traffic and the parameters, as plain data.
    """
    rank = None if group is None else dist.get_rank(group)
    model = tiny_mlp(SIZES, seed=0)
    if case.ddp:
        net, where = DistributedDataParallel(model, process_group=group), {}
    else:
        net, where = model, {"process_group": group}
    loss_fn = make_loss(case.loss)
    opt = KFAC(net, loss_fn, **CONFIG, **dict(case.kfac), **where)
    if resume is not None:
        saved = torch.load(io.BytesIO(resume), weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
    x, y = data(case.loss.split("-")[0], sum(case.shards), SIZES[0], SIZES[-1])
    rows = case.rows(rank)
    out: dict = {"stats": [], "traffic": [], "params": [], "warnings": []}
    for k in range(1, steps + 1):
        inputs = x[rows].clone()
        if bad == (k, rank):
            inputs[0, 0] = math.nan
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", KFACWarning)
            out["stats"].append(step(opt, net, loss_fn, inputs, y[rows], case.form))
        out["warnings"].append([str(w.message) for w in caught])
        out["traffic"].append(dict(opt.traffic.step))
        out["params"].append(flat_params(model).numpy())
        if save_after == k:
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
            out["saved"] = buffer.getvalue()
    return out


def step(opt: KFAC, net: nn.Module, loss_fn: nn.Module, inputs: torch.Tensor,
         targets: torch.Tensor, form: str) -> dict:
    """One step in ``form``; the diagnostics."""
    if form == "inputs":
        return opt.step(inputs, targets)

    def closure():
        opt.zero_grad()
        loss = loss_fn(net(inputs), targets)
        loss.backward()
        return loss

    if form == "closure":
        opt.step(closure)
        return opt.last_step
    if form == "backward":
        closure()
        return opt.step()
    # two micro-batches, each loss times its share of the shard's ("mean"); with a DDP
    # model, the first one's backward under no_sync() (the last one's averages the sum)
    opt.zero_grad()
    half = len(inputs) // 2
    for j, part in enumerate((slice(0, half), slice(half, None))):
        share = len(inputs[part]) / len(inputs) if loss_fn.reduction == "mean" else 1.0
        sync = j == 1 or not isinstance(net, DistributedDataParallel)
        with net.no_sync() if not sync else contextlib.nullcontext():  # forward and backward
            (loss_fn(net(inputs[part]), targets[part]) * share).backward()
    return opt.step()


@pytest.fixture(scope="module")
def run():
    """``run(job, *args, ranks=n)``: the job on ``n`` ranks of the shared pool."""
    pools: list[RankPool] = []

    def on_ranks(job, *args, ranks):
        if not pools or pools[-1].broken:
            pools.append(RankPool())
        return pools[-1].run(job, *args, ranks=ranks)

    yield on_ranks
    for p in pools:
        p.close()


def assert_same_run(ranked: list[dict], reference: dict) -> None:
    """Every rank has the same parameters, and they and the diagnostics are the reference's."""
    for out in ranked[1:]:
        for p, q in zip(out["params"], ranked[0]["params"], strict=True):
            np.testing.assert_array_equal(p, q)
    for k, (stats, ref) in enumerate(zip(ranked[0]["stats"], reference["stats"], strict=True)):
        for key in SCALARS:
            a, b = stats[key], ref[key]
            assert (a == b or math.isclose(a, b, rel_tol=1e-6)
                    or (math.isnan(a) and math.isnan(b))), (k + 1, key, a, b)
        assert (stats["refreshed"], stats["accepted"]) == (ref["refreshed"], ref["accepted"])
    p, q = ranked[0]["params"][-1], reference["params"][-1]
    assert np.abs(p - q).max() <= 1e-6 * np.abs(q).max()


def assert_everything_happened(reference: dict) -> None:
    """The run refreshed, chose among γ candidates and computed ρ."""
    stats = reference["stats"]
    assert sum(s["refreshed"] for s in stats) >= 4
    assert len({s["gamma"] for s in stats}) > 1
    assert sum(not math.isnan(s["rho"]) for s in stats) >= 2  # -inf: h went up


EQUAL, UNEQUAL = (16, 16), (10, 13, 9)


@pytest.mark.parametrize("fisher", ["mc", "empirical", "exact"])
@pytest.mark.parametrize("approx", ["blockdiag", "tridiag"])
@pytest.mark.parametrize(("shards", "loss"), [(EQUAL, "ce"), (UNEQUAL, "mse")],
                         ids=["2-ranks-equal-ce", "3-ranks-unequal-mse"])
def test_ranks_follow_the_single_process_run_on_the_union(run, shards, loss, approx, fisher):
    case = Case(shards, loss, (("approx", approx), ("fisher", fisher)))
    reference = train(None, case)
    assert_everything_happened(reference)
    assert_same_run(run(train, case, ranks=len(shards)), reference)


@pytest.mark.parametrize("approx", ["blockdiag", "tridiag"])
@pytest.mark.parametrize(("shards", "fraction"), [((12, 20), 1 / 2), ((10, 13, 9), 1 / 3),
                                                  ((8, 9, 10, 11), 1 / 2)],
                         ids=["2-ranks-each-inverse-on-one", "3-ranks-each-inverse-on-one",
                              "4-ranks-each-inverse-on-two"])
def test_inverses_held_by_fewer_ranks_give_the_same_run(run, shards, fraction, approx):
    case = Case(shards, "bce", (("approx", approx), ("grad_worker_fraction", fraction)))
    ranked = run(train, case, ranks=len(shards))
    assert_same_run(ranked, train(None, case))
    assert all(t.get("directions", 0) > 0 for t in ranked[0]["traffic"])  # proposals broadcast


def test_a_ddp_wrapped_model_gives_the_same_run(run):
    case = Case(UNEQUAL, "ce", (("approx", "tridiag"),), ddp=True)
    assert_same_run(run(train, case, ranks=3), train(None, Case(UNEQUAL, "ce", case.kfac)))


@pytest.mark.parametrize(("form", "approx"), [("backward", "tridiag"), ("closure", "blockdiag"),
                                              ("micro-batches", "blockdiag")])
def test_the_users_own_passes_on_ranks_give_the_same_run(run, form, approx):
    case = Case(UNEQUAL, "ce", (("approx", approx),), form=form)
    assert_same_run(run(train, case, ranks=3), train(None, replace(case, form="inputs")))


@pytest.mark.parametrize(("form", "loss"), [("backward", "mse-sum"), ("micro-batches", "bce")])
def test_the_users_backward_through_ddp_is_averaged_once(run, form, loss):
    # DDP's mean over the ranks is the union's gradient for equal shares (W times it for a
    # sum): used, not reduced again
    case = Case(EQUAL, loss, ddp=True, form=form)
    ranked = run(train, case, ranks=2)
    assert_same_run(ranked, train(None, replace(case, ddp=False, form="inputs")))
    # the loss, the statistics' check and the loss weights' check: no gradient
    assert all(t["gradient"] == 3 * 8 for t in ranked[0]["traffic"])


@pytest.mark.parametrize("form", ["inputs", "backward"])
def test_a_loss_with_case_weights_weighs_each_rank_by_its_share_of_their_sum(run, form):
    case = Case(UNEQUAL, "ce-weighted", (("fisher", "exact"),), form=form)
    assert_same_run(run(train, case, ranks=3), train(None, replace(case, form="inputs")))


def refuse_ddp_own_loop(group, shards: tuple[int, ...], bypass: bool) -> str:
    """The error of a DDP model's own-loop step: unequal shards, or passes around the wrapper."""
    rank = dist.get_rank(group)
    model = tiny_mlp(SIZES, seed=0)
    net = DistributedDataParallel(model, process_group=group)
    loss_fn = make_loss("mse")
    opt = KFAC(net, loss_fn, **CONFIG)
    x, y = data("mse", sum(shards), SIZES[0], SIZES[-1])
    rows = Case(shards).rows(rank)
    loss_fn((model if bypass else net)(x[rows]), y[rows]).backward()
    try:
        opt.step()
    except ValueError as err:
        return str(err)
    return "accepted"


@pytest.mark.parametrize(("shards", "bypass", "says"), [
    ((10, 13), False, "the ranks' shares of the union batch's loss differ ([0.434783, 0.565217]"),
    (EQUAL, True, "the forward passes since the last step did not run through the wrapper"),
])
def test_the_users_backward_through_ddp_is_refused_where_its_mean_is_not_the_unions(
        run, shards, bypass, says):
    for message in run(refuse_ddp_own_loop, shards, bypass, ranks=2):
        assert message.startswith("opt.step(): ") and says in message, message


@pytest.mark.parametrize("fraction", [1.0, 1 / 2])
def test_a_two_rank_checkpoint_resumes_in_one_process(run, fraction):
    case = Case(EQUAL, "bce", (("grad_worker_fraction", fraction),))
    ranked = run(train, case, 3, None, 3, ranks=2)
    assert ranked[0]["saved"] == ranked[1]["saved"]  # every rank returns the whole state
    resumed = train(None, case, 3, ranked[0]["saved"])
    uninterrupted = train(None, case)
    assert_same_run([{"stats": ranked[0]["stats"] + resumed["stats"],
                      "params": ranked[0]["params"] + resumed["params"]}], uninterrupted)


def test_a_one_process_checkpoint_resumes_on_three_ranks(run):
    case = Case(UNEQUAL, "ce", (("approx", "tridiag"), ("grad_worker_fraction", 1 / 3)))
    first = train(None, case, 3, None, 3)
    resumed = run(train, case, 3, first["saved"], ranks=3)
    uninterrupted = train(None, case)
    assert_same_run([{"stats": first["stats"] + r["stats"], "params": first["params"] + r["params"]}
                     for r in resumed], uninterrupted)


def test_a_non_finite_loss_on_one_rank_rejects_the_step_on_every_rank(run):
    ranked = run(train, Case(UNEQUAL), 4, None, None, (3, 1), ranks=3)
    for out in ranked:
        rejected = out["stats"][2]
        assert not rejected["accepted"] and math.isnan(rejected["alpha"])
        np.testing.assert_array_equal(out["params"][2], out["params"][1])  # untouched
        assert any("rejected" in w for w in out["warnings"][2])
        assert out["stats"][3]["accepted"]
        assert out["stats"][3]["lambda"] == ranked[0]["stats"][3]["lambda"]  # raised alike
    for out in ranked[1:]:
        np.testing.assert_array_equal(out["params"][-1], ranked[0]["params"][-1])


def refuse_a_fraction(group) -> str:
    try:
        KFAC(tiny_mlp(SIZES), LOSS_CLASSES["mse"](), process_group=group, grad_worker_fraction=0.5)
    except ValueError as err:
        return str(err)
    return "accepted"


def test_a_fraction_of_ranks_that_does_not_divide_the_world_is_refused(run):
    for message in run(refuse_a_fraction, ranks=3):
        assert message.startswith("grad_worker_fraction: expected a fraction f with f·W a divisor "
                                  "of the world size W = 3 (1/3, 3/3), got 0.5")


def closed_form(step: int, fraction: float, world: int, delta0: bool) -> dict[str, int]:
    """The payload bytes of step ``step`` ≥ 2 of :data:`CONFIG` on ``world`` ranks, counted by hand.

    P parameters, S entries of the factors' upper triangles (= those of each candidate's
    inverses: the damped factors' inverses have the factors' shapes), float64; ``c``
    candidates (3 on γ steps); a refresh reduces every factor to its owner and, unless each
    inverse stays on one rank, broadcasts every candidate's inverses; with inverses on one rank
    each, every step broadcasts the ``c`` proposals. ``delta0``: the previous update is a
    vector of the quadratic model (momentum, after an accepted step).
    """
    layers = list(zip(SIZES[:-1], SIZES[1:], strict=True))
    P = sum((a + 1) * b for a, b in layers)
    S = sum((a + 1) * (a + 2) // 2 + b * (b + 1) // 2 for a, b in layers)
    gamma_step, refresh, rho = step % 2 == 0, step % 2 == 0 or step <= 3, step % 2 == 0
    c = 3 if gamma_step else 1
    out = {"gradient": (P + 2) * 8,  # the loss and the statistics' check ride along
           "scalars": world * 8 + (c + delta0) ** 2 * 8 + rho * 8 + refresh * c * 4}
    if refresh:
        out["factors"] = S * 8
        if fraction * world > 1:
            out["inverses"] = c * S * 8
    if fraction * world < world:
        out["directions"] = c * P * 8
    return out


@pytest.mark.parametrize("fraction", [1.0, 1 / 2])
def test_bytes_per_step_are_the_closed_form_count(run, fraction):
    case = Case(EQUAL, "mse", (("grad_worker_fraction", fraction),))
    for out in run(train, case, ranks=2):
        for step, traffic in enumerate(out["traffic"][1:], start=2):
            accepted = out["stats"][step - 2]["accepted"]
            assert traffic == closed_form(step, fraction, 2, accepted), step


def run_experiment(group, name: str) -> list[dict]:
    """The autoencoder experiment's training loop on a small random set, 3 steps (every rank)."""
    from kronlin_nn.experiments import methods, models, training

    torch.manual_seed(0)
    model = models.autoencoder([16, 8, 4, 8, 16]).double()
    x = torch.rand(800, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    plain = methods.make_method(name, methods.Setting("digits", 800, 16, 0), sgd_lr=0.01)
    built = []
    method = replace(plain, make_optimizer=lambda m: built.append(plain.make_optimizer(m))
                     or built[0])
    result = training.train(method, model, x, budget=math.inf, seed=0, polyak_start=1,
                            max_iterations=3, evaluate_along=False, progress=None)
    records = [{key: r.get(key) for key in ("iteration", "batch_size", "train_error", "loss")}
               for r in result.records]
    shards = getattr(built[0], "_shards", None)  # K-FAC's last step: the shard sizes
    return [{**r, "shards": None if shards is None else shards.sizes} for r in records]


@pytest.mark.parametrize("name", ["kfac-tridiag", "sgd"])
def test_the_experiments_training_loop_on_four_ranks_computes_the_single_process_iterates(
        run, name):
    reference = run_experiment(None, name)
    for records in run(run_experiment, name, ranks=4):  # the whole world: train() uses it
        assert [r["iteration"] for r in records] == [0, 3]
        if name.startswith("kfac"):  # a quarter of each batch on each rank
            batch = records[-1]["batch_size"]
            assert records[-1]["shards"] == tuple(len(range(r, batch, 4)) for r in range(4))
        for r, q in zip(records, reference, strict=True):
            assert r["batch_size"] == q["batch_size"]
            assert math.isclose(r["train_error"], q["train_error"], rel_tol=1e-9)
            assert r["loss"] == q["loss"] or math.isclose(r["loss"], q["loss"], rel_tol=1e-9)
