"""kfac-jax (DeepMind's reference K-FAC) on the suite's autoencoders, through an optional extra.

kfac-jax 0.0.8 needs jax/jaxlib 0.9.0.1, dm-haiku 0.0.17 and optax 0.2.8 (newer jax breaks its
graph matcher): the ``kfac-jax`` extra of ``pyproject.toml``. It may live in another venv than
torch's, so it always runs in a subprocess, :mod:`.kfac_jax_worker`, with the first Python of:
``--kfac-jax-python``, ``$KRONLIN_KFAC_JAX_PYTHON``, the running one, that imports it. When none
does, the suite skips kfac-jax and says so in its report.

What is shared with the torch runs: the training images, the initial weights (exported from the
workload's network), the batches (row indices), the iteration budget, the measurement points and
the seed; XLA gets as many intra-op threads as torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .machine import LoadMeter
from .workloads import Workload

__all__ = ["find_python", "run"]

WORKER = Path(__file__).with_name("kfac_jax_worker.py")
_ACTIVATIONS = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu"}
_PROBE = "import jax, jaxlib, haiku, kfac_jax; print(kfac_jax.__version__, jax.__version__)"


def find_python(explicit: str | None) -> tuple[str | None, str]:
    """The first Python that imports kfac-jax, and a line saying which (or why none).

    Args:
        explicit: ``--kfac-jax-python``, tried first.

    """
    candidates = [explicit, os.environ.get("KRONLIN_KFAC_JAX_PYTHON"), sys.executable]
    tried = []
    for python in dict.fromkeys(c for c in candidates if c):
        try:
            probe = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True,
                                   timeout=120)
        except (OSError, subprocess.TimeoutExpired) as err:
            tried.append(f"{python} ({err})")
            continue
        if probe.returncode == 0:
            kfac, jax = probe.stdout.split()
            return python, f"kfac-jax {kfac} (jax {jax}) from {python}"
        tried.append(f"{python} ({probe.stderr.strip().splitlines()[-1][:120]})")
    return None, ("kfac-jax is not importable, skipped (tried " + "; ".join(tried) + "). Install "
                  "the extra in a venv of its own, pip install -e '.[kfac-jax]', and pass its "
                  "Python with --kfac-jax-python or $KRONLIN_KFAC_JAX_PYTHON")


def export_network(model: nn.Module) -> dict[str, np.ndarray]:
    """The weights and activations of a ``Sequential`` of ``Linear`` and elementwise functions.

    Raises:
        ValueError: for any other module, or two activations in a row.

    """
    arrays: dict[str, np.ndarray] = {}
    activations: list[str] = []
    for module in model.children():
        if isinstance(module, nn.Linear):
            i = len(activations)
            arrays[f"W{i}"] = module.weight.detach().float().numpy()
            arrays[f"b{i}"] = (module.bias.detach().float().numpy() if module.bias is not None
                               else np.zeros(module.out_features, np.float32))
            activations.append("linear")
        elif type(module) in _ACTIVATIONS and activations and activations[-1] == "linear":
            activations[-1] = _ACTIVATIONS[type(module)]
        else:
            raise ValueError(f"kfac-jax runner: unsupported module {module!r} (needs Linear "
                             f"layers, each followed by at most one of Sigmoid, Tanh, ReLU)")
    arrays["activations"] = np.array(activations)
    return arrays


def run(workload: Workload, iterations: int, threads: int, python: str) -> dict[str, Any]:
    """kfac-jax's run on ``workload``, in the suite's record format.

    Raises:
        ValueError: if the workload's loss is not ``BCEWithLogitsLoss`` (mean) on its inputs.
        RuntimeError: if the worker fails (its output is in the message).

    """
    loss = workload.loss()
    if not (isinstance(loss, nn.BCEWithLogitsLoss) and loss.reduction == "mean"):
        raise ValueError(f"{workload.name}: the kfac-jax runner needs BCEWithLogitsLoss(mean)")
    x, y = workload.dataset()
    if not (x.shape == y.shape and bool((x == y).all())):
        raise ValueError(f"{workload.name}: the kfac-jax runner needs an autoencoder (targets = inputs)")
    batches = workload.batches(iterations)
    arrays = export_network(workload.build_model())
    arrays.update(x=x.float().numpy(), iterations=np.array(iterations),
                  eval_every=np.array(workload.eval_every), seed=np.array(workload.seed),
                  batches=np.zeros(0, np.int64) if batches is None
                  else np.stack([b.numpy() for b in batches]))
    env = dict(os.environ, JAX_PLATFORMS="cpu", OMP_NUM_THREADS=str(threads),
               XLA_FLAGS=f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}")
    meter = LoadMeter()
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp, "input.npz"), Path(tmp, "run.json")
        np.savez(source, **arrays)
        done = subprocess.run([python, str(WORKER), str(source), str(target)], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"kfac-jax worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
        record = json.loads(target.read_text())
    record.update(key="kfac-jax", family="kfac-jax", params={}, first_use_warnings=[],
                  isolated=True, threads=threads, load=meter.result(), python=python)
    return record
