"""Shared fixtures: backends (NumPy, torch CPU, torch CUDA) and dtypes for every operator test."""

from __future__ import annotations

import os
import random
import zlib

import numpy as np
import pytest
from hypothesis import settings

# derandomize: the examples depend on the test alone, so every run (any PYTHONHASHSEED, any
# test order, pytest-randomly's reseeding) draws the same ones and a failure replays
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

try:
    import torch
except ImportError:  # kronlin itself must work without torch
    torch = None

HAS_CUDA = torch is not None and torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _seed_global_generators(request):
    """Seed the global generators (random, NumPy, torch) from the test's id before each test.

    Tests draw from explicit generators where they can; model constructors (``nn.Linear``)
    draw from torch's global one. ``zlib.crc32`` is stable across processes (``hash`` is
    salted by PYTHONHASHSEED), so a test sees the same numbers whatever ran before it.
    """
    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    np.random.seed(seed)
    if torch is not None:
        torch.manual_seed(seed)

BACKENDS = [
    "numpy",
    pytest.param("torch", marks=pytest.mark.skipif(torch is None, reason="torch not installed")),
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]),
]
DTYPES = ["float64", "float32"]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(params=DTYPES)
def dtype(request) -> str:
    return request.param


def convert(a: np.ndarray, backend: str, dtype: str):
    """``a`` as an array of the given backend and dtype."""
    a = np.asarray(a, dtype=dtype)
    if backend == "numpy":
        return a
    return torch.as_tensor(a, device="cuda" if backend == "cuda" else "cpu")


def to_numpy(a) -> np.ndarray:
    if torch is not None and isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)
