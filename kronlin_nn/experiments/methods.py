"""The optimizers compared in the paper's Figure 4, configured for a training set.

Objective and units. The loss is ``nn.BCEWithLogitsLoss(reduction="mean")``: the mean over
cases *and* pixels, a reduction K-FAC understands (its Fisher is that of the loss as defined).
The paper's objective sums over the ``d`` pixels and averages over cases, so it is ``d`` times
ours. Every hyperparameter given in the paper's units is converted so that each method runs the
paper's algorithm on the paper's objective exactly: SGD's weight decay η = 1e-5/d and its
ε = ε_paper·d; K-FAC's paper recipe takes λ₀ = 150 and η = 1e-5 in the paper's units through
``units="case"`` (:data:`kronlin_nn.PAPER`).

K-FAC runs in two configurations: ``kfac-blockdiag`` and ``kfac-tridiag`` are ``KFAC``'s
defaults (what a user gets from ``KFAC(model, loss_fn)``), ``kfac-blockdiag-paper`` and
``kfac-tridiag-paper`` the paper's recipe; the momentum-less variants are the paper's too.

Batch sizes (ICML App. M, spec §9, §10.3), scaled to the set's size ``n``:

- K-FAC with momentum: the exponential schedule from m₁ = min(1000, n/20) to ``n`` at
  iteration 500. The paper's m₁ = 1000 was 1/20 of CURVES and 1/60 of MNIST; the embedded
  MNIST subset (5,000 images) would start at a fifth of the set, so the first batch is capped
  at CURVES' fraction: 250 images there, the paper's 1000 on the full sets.
- K-FAC without momentum: fixed m = min(6000, n/10) (the paper: 6000 of MNIST's 60,000).
- SGD-Nesterov: fixed m = min(m_paper, n/20), m_paper = 250 for CURVES and 500 otherwise
  (250 on the subset), μ_max = 0.99, ε from the grid search of :mod:`.baseline`.

Every method is Polyak-averaged (ξ = 0.99) in :func:`.training.train`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from kronlin_nn import KFAC, PAPER
from kronlin_nn.experiments.baseline import SGDNesterov
from kronlin_nn.experiments.training import Method, Stepper
from kronlin_nn.schedules import exponential_batch_size

__all__ = ["METHODS", "PAPER_WEIGHT_DECAY", "Setting", "loss_function", "make_method"]

PAPER_WEIGHT_DECAY = PAPER["weight_decay"]

# name -> (K-FAC approximation, quadratic-model momentum, the paper's recipe or the defaults);
# "sgd" is the baseline.
_KFAC_VARIANTS: dict[str, tuple[str, bool, bool]] = {
    "kfac-blockdiag": ("blockdiag", True, False),
    "kfac-tridiag": ("tridiag", True, False),
    "kfac-blockdiag-paper": ("blockdiag", True, True),
    "kfac-tridiag-paper": ("tridiag", True, True),
    "kfac-blockdiag-nomomentum": ("blockdiag", False, True),
    "kfac-tridiag-nomomentum": ("tridiag", False, True),
}
METHODS: tuple[str, ...] = (*_KFAC_VARIANTS, "sgd")


@dataclass(frozen=True)
class Setting:
    """What the methods' configuration depends on.

    Attributes:
        problem: ``"mnist"``, ``"curves"`` or ``"digits"``.
        n_train: training-set size ``n``.
        pixels: ``d``, the number of outputs the loss averages over (the unit conversion).
        seed: K-FAC's sampling seed.

    """

    problem: str
    n_train: int
    pixels: int
    seed: int

    @property
    def weight_decay(self) -> float:
        """η in the loss's units (the paper's 1e-5 divided by ``d``)."""
        return PAPER_WEIGHT_DECAY / self.pixels


def loss_function() -> nn.Module:
    """Return the loss of every method: logistic outputs, binary cross-entropy, mean reduction."""
    return nn.BCEWithLogitsLoss(reduction="mean")


def make_method(name: str, setting: Setting, *, sgd_lr: float | None = None) -> Method:
    """Configure one of :data:`METHODS` for a training set.

    Args:
        name: the method's CLI name.
        setting: problem, set size, pixel count and seed.
        sgd_lr: for ``"sgd"``: ε in the paper's units (required).

    Returns:
        The method, with its settings (in the paper's units) for ``results.json``.

    Raises:
        ValueError: for an unknown name, or ``"sgd"`` without ``sgd_lr``.

    """
    if name == "sgd":
        if sgd_lr is None:
            raise ValueError("the sgd method needs its learning rate (sgd_lr)")
        return _sgd(setting, sgd_lr)
    if name not in _KFAC_VARIANTS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(METHODS)}")
    approx, momentum, paper = _KFAC_VARIANTS[name]
    return _kfac(name, setting, approx, momentum, paper)


def _sgd(setting: Setting, lr: float) -> Method:
    paper_batch = 250 if setting.problem == "curves" else 500
    batch = max(1, min(paper_batch, setting.n_train // 20))
    settings = {
        "optimizer": "SGD with Nesterov momentum (Sutskever et al. 2013)",
        "lr_paper_units": lr,
        "mu_schedule": "min(1 - 1/(2(floor(t/250)+1)), mu_max)",
        "mu_max": 0.99,
        "batch_size": batch,
        "weight_decay_paper_units": PAPER_WEIGHT_DECAY,
    }

    def build(model: nn.Module) -> Stepper:
        return SGDNesterov(
            model,
            loss_function(),
            lr=lr * setting.pixels,
            mu_max=0.99,
            weight_decay=setting.weight_decay,
        )

    label = f"Baseline (SGD-Nesterov, m={batch})"
    return Method("sgd", label, build, _constant(batch), settings)


def _kfac(name: str, setting: Setting, approx: str, momentum: bool, paper: bool) -> Method:
    kwargs: dict[str, object] = {"approx": approx, "momentum": momentum, "seed": setting.seed}
    settings: dict[str, object] = {"optimizer": "KFAC", "kwargs": dict(kwargs)}
    if paper:
        kwargs.update(PAPER)
        settings["recipe"] = "kronlin_nn.PAPER"
        settings["initial_lambda_paper_units"] = PAPER["damping"]
        settings["weight_decay_paper_units"] = PAPER["weight_decay"]
    else:
        settings["recipe"] = "defaults"
    kind = "Blk-TriDiag" if approx == "tridiag" else "Blk-Diag"
    kind += " K-FAC, paper recipe" if paper else " K-FAC"
    if momentum:
        first = max(1, min(1000, setting.n_train // 20))
        batch_size = partial(
            exponential_batch_size, first=first, total=setting.n_train, reach_at=500
        )
        settings["batch_schedule"] = {"first": first, "total": setting.n_train, "reach_at": 500}
        label = f"{kind} (exp. sched.)"
    else:
        fixed = max(1, min(6000, setting.n_train // 10))
        batch_size = _constant(fixed)
        settings["batch_size"] = fixed
        label = f"{kind} (no moment., m={fixed})"

    def build(model: nn.Module) -> Stepper:
        return KFAC(model, loss_function(), **kwargs)

    return Method(name, label, build, batch_size, settings)


def _constant(batch: int) -> Callable[[int], int]:
    """A batch-size rule that ignores the iteration."""
    return lambda _k: batch
