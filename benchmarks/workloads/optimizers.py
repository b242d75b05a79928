"""The optimizer configurations the suite compares, and their grids.

Families (the names of ``--optimizers``):

- ``kfac-blockdiag``, ``kfac-tridiag``: K-FAC's defaults, ``KFAC(model, loss_fn)`` (and
  ``approx="tridiag"``): what a user gets on first contact.
- ``kfac-paper``: the K-FAC paper's recipe, ``KFAC(model, loss_fn, **kronlin_nn.PAPER)``.
- ``kfac-lambda``: K-FAC with the defaults but ``damping=f·c`` for every ``f`` of
  :data:`LAMBDA_FACTORS` (``c`` the loss's per-case scale, :meth:`Workload.case_scale`), for each
  approximation of ``--lambda-approx``: the best λ₀ of a wide geometric grid, to measure how far
  the defaults are from it.
- ``adam``: ``torch.optim.Adam`` over :data:`ADAM_LRS`, the tuned learning rate being the one
  with the lowest final loss.
- ``sgd``: ``torch.optim.SGD(momentum=0.9, nesterov=True)`` over ``lr = g/c`` for ``g`` in
  :data:`SGD_LRS` (per-case units, so one grid fits losses averaged over outputs or not).
- ``kfac-jax``: DeepMind's kfac-jax with the paper's recipe, on the workloads that allow it
  (:mod:`.kfac_jax_runner`).

Candidate defaults (``--candidate NAME JSON``, :func:`candidate`): ``KFAC(model, loss_fn,
**kwargs)`` with the given keywords, judged by the same criteria as the defaults; a value
written ``"<x>c"`` (e.g. ``"1c"``) is ``x`` times the loss's per-case scale.

Every run of a workload starts from the same weights, sees the same batches, and seeds torch's
global generator with the workload's seed just before building the optimizer (K-FAC draws its
sampling seed from it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kronlin_nn import KFAC, PAPER

from .workloads import Workload

__all__ = [
    "ADAM_LRS",
    "CANDIDATE",
    "FAMILIES",
    "LAMBDA_FACTORS",
    "SGD_LRS",
    "RunSpec",
    "build",
    "candidate",
    "expand",
]

# The first recorded baseline chose Adam's 0.1, SGD's 1 and λ₀ = 1e-3·c at the grids' edges on
# several workloads: the grids reach one step (λ₀: two decades) further.
ADAM_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
SGD_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0)
LAMBDA_FACTORS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
# --quick: two points per grid, enough to exercise the selection.
QUICK_GRIDS = {"adam": (1e-3, 1e-2), "sgd": (1e-2, 1e-1), "kfac-lambda": (1e-1, 10.0)}

FAMILIES: dict[str, str] = {
    "kfac-blockdiag": "K-FAC defaults, KFAC(model, loss_fn)",
    "kfac-tridiag": "K-FAC defaults, KFAC(model, loss_fn, approx='tridiag')",
    "kfac-paper": "K-FAC paper recipe, KFAC(model, loss_fn, **kronlin_nn.PAPER)",
    "kfac-lambda": "K-FAC defaults with damping = f·c over a geometric grid of f",
    "adam": "Adam, learning rate tuned on a grid",
    "sgd": "SGD with Nesterov momentum 0.9, learning rate tuned on a grid",
    "kfac-jax": "kfac-jax 0.0.8, the paper's recipe (autoencoders; optional extra)",
}
# First-contact configurations: run in a fresh process by default, so that one-time warnings
# (torch's, on the first forward-mode product of a process) are counted for each of them.
FIRST_CONTACT = ("kfac-blockdiag", "kfac-tridiag", "kfac-paper", "kfac-candidate")
CANDIDATE = "kfac-candidate"


def candidate(name: str, text: str, isolate: str) -> RunSpec:
    """The run of a candidate configuration ``KFAC(model, loss_fn, **json.loads(text))``.

    Raises:
        ValueError: if ``text`` is not a JSON object, or a ``"<x>c"`` value is not a number.

    """
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--candidate {name}: expected a JSON object of KFAC keywords, got "
                         f"{text!r} ({err})") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--candidate {name}: expected a JSON object of KFAC keywords, got {text!r}")
    for key, value in kwargs.items():
        if isinstance(value, str) and value.endswith("c"):
            try:
                float(value[:-1])
            except ValueError:
                raise ValueError(f"--candidate {name}: {key}={value!r} is not '<number>c'") from None
    return RunSpec(CANDIDATE, f"candidate {name}", {"name": name, "kwargs": kwargs},
                   isolate in ("all", "first-contact"))


def _per_case(kwargs: Mapping[str, Any], c: float) -> dict[str, Any]:
    """``"<x>c"`` values become ``x·c``; the others stay."""
    return {k: float(v[:-1]) * c if isinstance(v, str) and v.endswith("c") else v
            for k, v in kwargs.items()}


@dataclass(frozen=True)
class RunSpec:
    """One run of one workload.

    Attributes:
        family: one of :data:`FAMILIES`.
        key: unique within a workload, e.g. ``"adam lr=0.001"``.
        params: the grid point (JSON-able), e.g. ``{"lr": 0.001}``.
        isolated: run in a fresh process.

    """

    family: str
    key: str
    params: Mapping[str, Any] = field(default_factory=dict)
    isolated: bool = False


def expand(family: str, workload: Workload, *, quick: bool, lambda_approx: tuple[str, ...],
           isolate: str, lambda_factors: tuple[float, ...] | None = None) -> list[RunSpec]:
    """The runs of one family on one workload.

    Args:
        family: a name of :data:`FAMILIES`.
        workload: the workload (``kfac-jax`` yields nothing where it does not apply).
        quick: use :data:`QUICK_GRIDS`.
        lambda_approx: the approximations of the λ₀ grid.
        isolate: ``"first-contact"``, ``"all"`` or ``"none"``: which runs get a fresh process.
        lambda_factors: the λ₀ grid's factors instead of :data:`LAMBDA_FACTORS` (or the quick
            grid).

    The learning-rate grids are the workload's own where it narrows them (``Workload.grids``:
    the two paper autoencoders, for cost), else :data:`ADAM_LRS` and :data:`SGD_LRS`.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown optimizer family {family!r}; choose from {', '.join(FAMILIES)}")
    isolated = isolate == "all" or (isolate == "first-contact" and family in FIRST_CONTACT)
    grid = QUICK_GRIDS.get(family) if quick else workload.grids.get(family)
    if family == "kfac-lambda" and lambda_factors:
        grid = lambda_factors
    if family in ("kfac-blockdiag", "kfac-tridiag", "kfac-paper"):
        return [RunSpec(family, family, {}, isolated)]
    if family == "kfac-lambda":
        return [RunSpec(family, f"kfac-lambda {approx} f={f:g}", {"approx": approx, "factor": f},
                        isolated)
                for approx in lambda_approx for f in (grid or LAMBDA_FACTORS)]
    if family in ("adam", "sgd"):
        lrs = grid or (ADAM_LRS if family == "adam" else SGD_LRS)
        return [RunSpec(family, f"{family} lr={lr:g}", {"lr": lr}, isolated) for lr in lrs]
    return [RunSpec(family, family, {})] if workload.kfac_jax else []


class TorchStepper:
    """A ``torch.optim`` optimizer behind K-FAC's calling convention, ``step(inputs, targets)``."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """One update; returns the batch loss before it."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(inputs), targets)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}


def build(spec: RunSpec, model: nn.Module, loss_fn: nn.Module, c: float) -> tuple[Any, dict]:
    """The optimizer of ``spec`` for ``model``, and the keywords it was built with.

    Args:
        spec: the run (not ``kfac-jax``, which runs in its own process).
        model: the network.
        loss_fn: the workload's loss.
        c: the loss's per-case scale.

    Returns:
        ``(stepper, config)``: an object with ``step(inputs, targets) -> {"loss", ...}`` and a
        JSON-able description (the constructor and its keywords).

    """
    if spec.family == CANDIDATE:
        kwargs = _per_case(spec.params["kwargs"], c)
        return KFAC(model, loss_fn, **kwargs), {"constructor": "kronlin_nn.KFAC", "kwargs": kwargs}
    if spec.family in ("kfac-blockdiag", "kfac-tridiag", "kfac-paper", "kfac-lambda"):
        kwargs: dict[str, Any] = {}
        if spec.family == "kfac-tridiag":
            kwargs["approx"] = "tridiag"
        elif spec.family == "kfac-paper":  # recorded by name: its bounds hold an infinity
            return KFAC(model, loss_fn, **PAPER), {"constructor": "kronlin_nn.KFAC",
                                                   "kwargs": "**kronlin_nn.PAPER"}
        elif spec.family == "kfac-lambda":
            if spec.params["approx"] != "blockdiag":
                kwargs["approx"] = spec.params["approx"]
            kwargs["damping"] = spec.params["factor"] * c
        return KFAC(model, loss_fn, **kwargs), {"constructor": "kronlin_nn.KFAC", "kwargs": kwargs}
    if spec.family == "adam":
        kwargs = {"lr": spec.params["lr"]}
        optimizer = torch.optim.Adam(model.parameters(), **kwargs)
        return TorchStepper(model, loss_fn, optimizer), {"constructor": "torch.optim.Adam",
                                                        "kwargs": kwargs}
    if spec.family == "sgd":
        kwargs = {"lr": spec.params["lr"] / c, "momentum": 0.9, "nesterov": True}
        optimizer = torch.optim.SGD(model.parameters(), **kwargs)
        return TorchStepper(model, loss_fn, optimizer), {"constructor": "torch.optim.SGD",
                                                        "kwargs": kwargs,
                                                        "lr_per_case": spec.params["lr"]}
    raise ValueError(f"{spec.family!r} is not built in-process")
