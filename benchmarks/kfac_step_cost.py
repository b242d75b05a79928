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

Usage::

    python benchmarks/kfac_step_cost.py                      # CPU, batch 1000, both approximations
    python benchmarks/kfac_step_cost.py --device cuda --batch 8192
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch import nn

from kronlin_nn import KFAC

SIZES = [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
PHASES = {
    "_forward": "forward",
    "_gradient": "backward",
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


def instrument(opt, device, totals):
    """Wrap the optimizer's phase methods with timers (per instance)."""
    for name, label in PHASES.items():
        method = getattr(opt, name)

        def timed(*args, _method=method, _label=label, **kwargs):
            sync(device)
            start = time.perf_counter()
            out = _method(*args, **kwargs)
            sync(device)
            totals[_label] += time.perf_counter() - start
            return out

        setattr(opt, name, timed)
    stats_update = opt._stats.update

    def timed_update(*args):
        sync(device)
        start = time.perf_counter()
        stats_update(*args)
        sync(device)
        totals["statistics"] += time.perf_counter() - start

    opt._stats.update = timed_update


def run(approx, args, device, dtype):
    torch.manual_seed(0)
    x = torch.rand(args.batch, SIZES[0], device=device, dtype=dtype)
    loss_fn = nn.BCEWithLogitsLoss()
    sgd_model, kfac_model = autoencoder(device, dtype), autoencoder(device, dtype)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    kfac = KFAC(kfac_model, loss_fn, approx=approx, seed=0, quad_fraction=args.quad_fraction)

    def sgd_step():
        sgd.zero_grad(set_to_none=True)
        loss_fn(sgd_model(x), x).backward()
        sgd.step()

    for _ in range(3):  # warm-up: k ≤ 3 refresh every step; first-use costs
        kfac.step(x, x)
        sgd_step()
    sync(device)
    totals = defaultdict(float)
    instrument(kfac, device, totals)
    kfac_times, sgd_times = [], []
    for _ in range(args.cycles * kfac.inverse_every):
        start = time.perf_counter()
        kfac.step(x, x)
        sync(device)
        kfac_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        sgd_step()
        sync(device)
        sgd_times.append(time.perf_counter() - start)
    T = kfac.inverse_every
    per_cycle_kfac = [sum(kfac_times[i:i + T]) / T for i in range(0, len(kfac_times), T)]
    per_cycle_sgd = [sum(sgd_times[i:i + T]) / T for i in range(0, len(sgd_times), T)]
    kfac_step = statistics.median(per_cycle_kfac)
    sgd_step_time = statistics.median(per_cycle_sgd)
    n = len(kfac_times)
    totals["other"] = sum(kfac_times) - sum(totals.values())
    print(f"\n{approx}: amortized K-FAC step {kfac_step * 1e3:.1f} ms, SGD-Nesterov step "
          f"{sgd_step_time * 1e3:.1f} ms, ratio {kfac_step / sgd_step_time:.2f}x")
    for label in [*PHASES.values(), "other"]:
        share = totals[label] / n
        print(f"  {label:16s} {share * 1e3:8.1f} ms/step  {share / sgd_step_time:5.2f}x SGD")
    return kfac_step / sgd_step_time


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=2, help="T3 cycles of K-FAC steps to time")
    parser.add_argument("--approx", nargs="+", default=["blockdiag", "tridiag"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quad-fraction", type=float, default=1.0,
                        help="τ₂ (default 1 as the optimizer's; the paper's text used 1/4)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"device {device}, batch {args.batch}, {args.dtype}, tau2 {args.quad_fraction}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for approx in args.approx:
        run(approx, args, device, dtype)


if __name__ == "__main__":
    main()
