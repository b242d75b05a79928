"""kfac-jax on one workload: run by the Python that has kfac-jax (never imports torch).

Started by :mod:`benchmarks.workloads.kfac_jax_runner` as ``PYTHON kfac_jax_worker.py INPUT.npz
OUT.json``. The ``.npz`` holds the training images ``x``, the network (``W0, b0, …``, torch's
``(out, in)`` layout, and ``activations``: the function after each layer), the batches'
row indices and the budget; the JSON gets the run in the suite's record format (see
:func:`benchmarks.workloads.runner.run_one`).

The optimizer is ``kfac_jax.Optimizer`` with the paper's recipe: adaptive α, μ and λ
(Levenberg–Marquardt), initial λ = 150 and η = 1e-5 for the paper's objective (Bernoulli
cross-entropy summed over the outputs, averaged over the cases), inverses every 20 steps, λ
updated every 5 with decay 0.95 per step, factor EMA 0.95, one sampled target per case, and
kfac-jax's default 10 curvature-only burn-in passes (on the first batches of the sequence)
inside step 1. XLA compiles in an untimed warm-up on a throw-away state of the same optimizer.
Losses and λ are reported in the suite's units (the paper's divided by the output count ``D``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections import Counter

PAPER = {"initial_damping": 150.0, "l2_reg": 1e-5}
SETTINGS = {
    "use_adaptive_learning_rate": True,
    "use_adaptive_momentum": True,
    "use_adaptive_damping": True,
    "inverse_update_period": 20,
    "damping_adaptation_interval": 5,
    "damping_adaptation_decay": 0.95,
    "curvature_ema": 0.95,
    "estimation_mode": "fisher_gradients",
    "num_burnin_steps": 10,
}


def main(source: str, target: str) -> None:
    import haiku as hk
    import jax
    import jax.numpy as jnp
    import kfac_jax
    import numpy as np

    data = np.load(source)
    x = np.asarray(data["x"], dtype=np.float32)
    activations = [str(a) for a in data["activations"]]
    batches = data["batches"] if data["batches"].size else None
    iterations, eval_every, seed = (int(data[k]) for k in ("iterations", "eval_every", "seed"))
    outputs = x.shape[1]
    functions = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu,
                 "linear": lambda h: h}

    def forward(h):
        for i, act in enumerate(activations):
            h = functions[act](hk.Linear(data[f"W{i}"].shape[0], name=f"linear_{i}")(h))
        return h

    net = hk.without_apply_rng(hk.transform(forward))
    params0 = {f"linear_{i}": {"w": jnp.asarray(data[f"W{i}"].T), "b": jnp.asarray(data[f"b{i}"])}
               for i in range(len(activations))}

    def cross_entropy(logits, targets):  # per output, stable: log(1 + e^z) - y z
        return jnp.logaddexp(0.0, logits) - targets * logits

    def objective(params, batch):
        logits = net.apply(params, batch)
        kfac_jax.register_sigmoid_cross_entropy_loss(logits, targets=batch)
        loss = jnp.mean(jnp.sum(cross_entropy(logits, batch), axis=1))
        return loss + 0.5 * PAPER["l2_reg"] * kfac_jax.utils.inner_product(params, params)

    @jax.jit
    def suite_loss(params):  # the suite's metric: the mean over cases and outputs
        return jnp.mean(cross_entropy(net.apply(params, x), x))

    optimizer = kfac_jax.Optimizer(value_and_grad_func=jax.value_and_grad(objective),
                                   multi_device=False, **PAPER, **SETTINGS)

    def batch(k):  # iteration k >= 1
        return jnp.asarray(x if batches is None else x[batches[(k - 1) % len(batches)]])

    def feed(k):  # step 1 also runs the burn-in passes on batches 1..N
        if k == 1:
            for j in range(1, SETTINGS["num_burnin_steps"] + 1):
                yield batch(j)
        yield batch(k)

    def train(steps, record):
        rng = jax.random.PRNGKey(seed)
        params = jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), params0)  # step donates
        state = optimizer.init(params, rng, batch(1))
        log = RunLog(float(suite_loss(params)), eval_every, steps, ("lambda", "alpha", "mu", "rho"))
        for k in range(1, steps + 1):
            rng, key = jax.random.split(rng)
            start = time.perf_counter()
            params, state, stats = optimizer.step(params, state, key, data_iterator=feed(k),
                                                  global_step_int=k - 1)
            jax.block_until_ready((params, state, stats))
            elapsed = time.perf_counter() - start
            # the suite's units: the paper's objective and damping divided by the output count
            named = {"lambda": float(stats["damping"]) / outputs, "rho": float(stats["rho"]),
                     "alpha": float(stats["learning_rate"]), "mu": float(stats["momentum"])}
            if record and log.step(k, float(stats["loss"]) / outputs, elapsed, True, named):
                log.measure(k, float(suite_loss(params)))
            if log.diverged:
                break
        return log.finish()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        train(SETTINGS["damping_adaptation_interval"] + 1, record=False)  # compiles everything
        compile_seconds = time.perf_counter() - start
        start = time.perf_counter()
        out = train(iterations, record=True)
        out["wall_seconds"] = time.perf_counter() - start
    counts = Counter((w.category.__name__, str(w.message).splitlines()[0][:300]) for w in caught)
    out.update(
        warnings=len(caught),
        warning_messages=[{"category": c, "message": m, "count": n} for (c, m), n in counts.items()],
        compile_seconds=compile_seconds,
        config={"constructor": "kfac_jax.Optimizer", "kwargs": {**PAPER, **SETTINGS},
                "units": "paper objective (sum over outputs, mean over cases); losses and "
                         "lambda reported divided by the output count"},
        versions={m: getattr(sys.modules[m], "__version__", None)
                  for m in ("jax", "jaxlib", "kfac_jax", "haiku", "numpy") if m in sys.modules},
    )
    with open(target, "w") as f:
        json.dump(out, f, allow_nan=True)


if __name__ == "__main__":
    # run as a script, this folder comes first on sys.path: its kfac_jax_runner must not shadow
    # kfac_jax, so import the suite's (torch-free) record module from the repository root instead
    HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    from benchmarks.workloads.record import RunLog

    main(*sys.argv[1:3])
