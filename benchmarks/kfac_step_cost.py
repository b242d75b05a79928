"""Amortized cost of a K-FAC step relative to an SGD-Nesterov step (issue 4, "Performance").

The MNIST deep autoencoder of the paper (784-1000-500-250-30-250-500-1000-784, logistic units,
linear code layer, Bernoulli outputs) at a fixed batch size, K-FAC with its defaults
(τ₁ = 1/8, T₃ = 20, T₂ = 20, T₁ = 5, momentum, τ₂ = 1). The K-FAC steps measured start after
the three warm-up refreshes and cover whole T₃ cycles, so refreshes, γ searches and ρ steps
count in their real proportion. SGD steps are interleaved with K-FAC steps (one each, in turn)
so that both see the same machine load; the ratio is of the medians-of-means per cycle.

The breakdown times the optimizer's phases by wrapping its methods (synchronizing CUDA):
forward, backward, extra backward (sampled targets on S₁), statistics (batch factors and EMA),
refresh (damped inverses, every T₃ steps and for the γ candidates), apply (Δ = −F̃⁻¹∇h),
quadratic model (forward-mode products and the α/μ solve), ρ (the extra forward pass every T₁),
and other (the rest: the finiteness sync, the update, bookkeeping).

Next to the times, one more T₃ cycle (untimed) counts each phase's GEMM flops with
``torch.utils.flop_counter.FlopCounterMode`` (matrix products only; factorizations are not
counted). Their ratio to an SGD step's flops is the floor that no implementation of the same
arithmetic can beat: the time ratio can approach it, not go below it.

Usage::

    python benchmarks/kfac_step_cost.py                      # CPU, batch 1000, both approximations
    python benchmarks/kfac_step_cost.py --device cuda --batch 8192
    python benchmarks/kfac_step_cost.py --markdown docs/results/performance/kfac-step.md
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import defaultdict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kronlin_nn import KFAC

try:
    from ._report import recorded  # imported as benchmarks.kfac_step_cost (asv discovery)
except ImportError:
    from _report import recorded  # run as a script

SIZES = [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
PHASES = {
    "_forward": "forward",
    "_gradient": "backward",
    "_pack_gradient": "backward",  # the flat gradient and weight decay (every step form)
    "_extra_backward": "extra backward",
    "_factor_estimates": "statistics",
    "_operators": "refresh",
    "_proposals": "apply",
    "_quadratic_model": "quadratic model",
    "_objective": "rho forward",
}


def autoencoder(device, dtype):
    layers = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(SIZES) - 2 and b != 30:  # the 30-unit code layer is linear
            layers.append(nn.Sigmoid())
    return nn.Sequential(*layers).to(device=device, dtype=dtype)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Meter:
    """Per-label totals of seconds or of GEMM flops, whichever ``mode`` says."""

    def __init__(self, device):
        self.device, self.mode = device, "seconds"
        self.totals = {"seconds": defaultdict(float), "flops": defaultdict(float)}

    @contextlib.contextmanager
    def __call__(self, label):
        if self.mode == "flops":
            with FlopCounterMode(display=False) as counter:
                yield
            self.totals["flops"][label] += counter.get_total_flops()
            return
        sync(self.device)
        start = time.perf_counter()
        yield
        sync(self.device)
        self.totals["seconds"][label] += time.perf_counter() - start


def instrument(opt, meter):
    """Wrap the optimizer's phase methods (per instance) so that ``meter`` measures each call."""
    targets = [(opt, name, label) for name, label in PHASES.items()]
    targets.append((opt._stats, "update", "statistics"))
    for owner, name, label in targets:
        method = getattr(owner, name)

        def measured(*args, _method=method, _label=label, **kwargs):
            with meter(_label):
                return _method(*args, **kwargs)

        setattr(owner, name, measured)


def run(approx, args, device, dtype):
    torch.manual_seed(0)
    x = torch.rand(args.batch, SIZES[0], device=device, dtype=dtype)
    loss_fn = nn.BCEWithLogitsLoss()
    sgd_model, kfac_model = autoencoder(device, dtype), autoencoder(device, dtype)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    tau2 = {} if args.quad_fraction is None else {"quad_fraction": args.quad_fraction}
    kfac = KFAC(kfac_model, loss_fn, approx=approx, seed=0, **tau2)

    def sgd_step():
        sgd.zero_grad(set_to_none=True)
        loss_fn(sgd_model(x), x).backward()
        sgd.step()

    for _ in range(3):  # warm-up: k ≤ 3 refresh every step; first-use costs
        kfac.step(x, x)
        sgd_step()
    sync(device)
    meter = Meter(device)
    instrument(kfac, meter)
    T = kfac.inverse_every
    kfac_times, sgd_times = [], []
    for _ in range(args.cycles * T):
        with meter("step"):
            kfac.step(x, x)
        kfac_times.append(meter.totals["seconds"].pop("step"))
        with meter("sgd"):
            sgd_step()
        sgd_times.append(meter.totals["seconds"].pop("sgd"))
    meter.mode = "flops"  # one more whole cycle, untimed, for the GEMM flops of each phase
    for _ in range(T):
        with meter("step"):
            kfac.step(x, x)
    with meter("sgd"):
        sgd_step()

    per_cycle_kfac = [sum(kfac_times[i:i + T]) / T for i in range(0, len(kfac_times), T)]
    per_cycle_sgd = [sum(sgd_times[i:i + T]) / T for i in range(0, len(sgd_times), T)]
    kfac_step, sgd_seconds = statistics.median(per_cycle_kfac), statistics.median(per_cycle_sgd)
    seconds, flops = meter.totals["seconds"], meter.totals["flops"]
    seconds["other"] = sum(kfac_times) - sum(seconds.values())
    step_flops, sgd_flops = flops.pop("step") / T, flops.pop("sgd")
    flops["other"] = step_flops * T - sum(flops.values())
    n = len(kfac_times)
    print(f"\n{approx}: amortized K-FAC step {kfac_step * 1e3:.1f} ms, SGD-Nesterov step "
          f"{sgd_seconds * 1e3:.1f} ms, ratio {kfac_step / sgd_seconds:.2f}x; GEMM flops "
          f"{step_flops / 1e9:.2f} vs {sgd_flops / 1e9:.2f} GFLOP, ratio "
          f"{step_flops / sgd_flops:.2f}x (the floor)")
    print(f"  {'phase':16s} {'ms/step':>8s} {'x SGD':>6s} {'GFLOP/step':>11s} {'x SGD':>6s}")
    for label in [*dict.fromkeys(PHASES.values()), "other"]:
        share, work = seconds[label] / n, flops[label] / T
        print(f"  {label:16s} {share * 1e3:8.1f} {share / sgd_seconds:6.2f} "
              f"{work / 1e9:11.2f} {work / sgd_flops:6.2f}")
    return kfac_step / sgd_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=2, help="T3 cycles of K-FAC steps to time")
    parser.add_argument("--approx", nargs="+", default=["blockdiag", "tridiag"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quad-fraction", type=float, default=None,
                        help="τ₂ (default: the optimizer's, 1/4 with at least 256 cases; the "
                             "paper's recipe has 1)")
    parser.add_argument("--markdown", metavar="PATH",
                        help="also save the output as a Markdown fragment (for docs/results/)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    with recorded(args.markdown):
        tau2 = "default" if args.quad_fraction is None else args.quad_fraction
        print(f"device {device}, batch {args.batch}, {args.dtype}, tau2 {tau2}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        for approx in args.approx:
            run(approx, args, device, dtype)


if __name__ == "__main__":
    main()
