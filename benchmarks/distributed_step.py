"""Bytes communicated and step time of data-parallel K-FAC (issue 13), launched by torchrun.

The main job's network (784-1000-500-250-30-250-500-1000-784, logistic units, linear code
layer, BCE loss, float32) on a fixed random batch of ``--batch`` cases, which the ranks split
as ``batch[rank::W]``. K-FAC runs with short periods (``inverse_every=2``, ``gamma_every=4`` with
``gamma_rule="greedy"``, ``damping_every=3``) so that a few steps hold every kind of step: plain
steps, refreshes with one or three γ candidates, ρ steps. Per step, rank 0 prints the payload
bytes of each kind of collective (what each rank passes to ``torch.distributed``), the closed
form of the docs ("Distributed K-FAC") for them, and the step's seconds (the slowest rank's).

Usage::

    torchrun --nproc-per-node 2 benchmarks/distributed_step.py [--fraction 0.5] [--approx tridiag]
    python benchmarks/distributed_step.py --closed-form 2 8      # the table alone, no run

``--closed-form W …`` prints, for the defaults (T₃ = 20, T₂ = 20, tied γ, T₁ = 5), the bytes of a
plain step, a refresh step and a γ step (``gamma_rule="greedy"``), and their average over a T₃
cycle, for both ends of ``grad_worker_fraction``. On CPU ranks sharing a few cores the seconds
are not a measurement of speed; the bytes are exact.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch
from torch import nn

from kronlin_nn import KFAC
from kronlin_nn.distributed import Replicas, join_torchrun, lpt

try:
    from ._report import machine
except ImportError:
    from _report import machine

SIZES = [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
PERIODS = {"inverse_every": 2, "gamma_every": 4, "gamma_rule": "greedy", "damping_every": 3}
KINDS = ("gradient", "factors", "inverses", "directions", "scalars")


def network() -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(SIZES) - 2 and b != 30:
            layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


# -- the closed form ----------------------------------------------------------------------------
def _tri(n: int) -> int:
    return n * (n + 1) // 2


@dataclass(frozen=True)
class Units:
    """Per unit of the inverse: parameters, factor entries sent, inverse entries sent, cost."""

    params: list[int]
    factors: list[int]
    inverses: list[int]
    costs: list[float]

    @classmethod
    def of(cls, approx: str) -> Units:
        d_a = [a + 1 for a in SIZES[:-1]]
        d_out = SIZES[1:]
        params = [a * b for a, b in zip(d_a, d_out, strict=True)]
        sym = [_tri(a) + _tri(b) for a, b in zip(d_a, d_out, strict=True)]
        costs = [float(a**3 + b**3) for a, b in zip(d_a, d_out, strict=True)]
        if approx == "blockdiag":  # the damped factors' inverses have the factors' shapes
            return cls(params, sym, sym, costs)
        links = list(zip(range(len(d_a) - 1), range(1, len(d_a)), strict=True))
        cross = sum(d_a[i] * d_a[j] + d_out[i] * d_out[j] for i, j in links)
        couplings = sum(d_out[i] * d_out[j] + d_a[i] * d_a[j] for i, j in links)
        conditionals = sum(d_out[i] ** 2 + d_a[i] ** 2 + d_out[i] * d_a[i] for i, _ in links)
        inverse = couplings + conditionals + _tri(d_out[-1]) + _tri(d_a[-1])
        return cls([sum(params)], [sum(sym) + cross], [inverse], [sum(costs)])


def closed_form(units: Units, world: int, fraction: float, rank: int, *, c: int, delta0: bool,
                refresh: bool, rho: bool, itemsize: int = 4) -> dict[str, int]:
    """The payload bytes of one step on ``rank`` (not the first step: no λ₀ search)."""
    if world == 1:
        return {}
    workers = max(1, round(fraction * world))
    columns = world // workers
    P = sum(units.params)
    out = {"gradient": (P + 2) * itemsize,  # + the loss and the statistics' check
           "scalars": world * 8 + (c + delta0) ** 2 * itemsize + rho * itemsize + refresh * c * 4}
    if refresh:
        out["factors"] = sum(units.factors) * itemsize  # each rank's share, reduced to owners
        if workers > 1:  # broadcast in each owner's column, every candidate
            owners = lpt(units.costs, world)
            mine = [u for u, o in enumerate(owners) if o % columns == rank % columns]
            out["inverses"] = c * sum(units.inverses[u] for u in mine) * itemsize
    if columns > 1:  # every candidate's proposal along the row
        out["directions"] = c * P * itemsize
    return out


def wire(payload: dict[str, int], world: int) -> float:
    """Bytes a rank sends for ``payload`` under ring algorithms (all-reduce: 2(W−1)/W, else 1)."""
    all_reduce = 2 * (world - 1) / world
    return sum(v * (all_reduce if kind in ("gradient", "scalars") else 1.0)
               for kind, v in payload.items())


def closed_form_table(worlds: list[int]) -> str:
    """Bytes per step of the defaults (T₃ = T₂ = 20, tied γ; greedy γ for the γ step), in MB."""
    lines = []
    kinds = {"plain step": {"c": 1, "refresh": False}, "refresh": {"c": 1, "refresh": True},
             "γ step": {"c": 3, "refresh": True}}
    for approx in ("blockdiag", "tridiag"):
        units = Units.of(approx)
        lines += ["", f"{approx}: P = {sum(units.params):,} parameters; factors: "
                  f"{sum(units.factors):,} entries sent; inverses: {sum(units.inverses):,} per "
                  f"candidate; float32. MB per step on rank 0, payload / sent on the wire:",
                  f"{'W':>3} {'f':>6}" + "".join(f"{name:>18}" for name in kinds)
                  + f"{'mean over T₃':>18}"]
        for world in worlds:
            for fraction in sorted({1.0, 1 / world}, reverse=True):
                row = [closed_form(units, world, fraction, 0, delta0=True, rho=False, **kw)
                       for kw in kinds.values()]
                cycle = [closed_form(units, world, fraction, 0, c=1, delta0=True,
                                     refresh=k % 20 == 0, rho=k % 5 == 0) for k in range(1, 21)]
                cells = [(sum(b.values()), wire(b, world)) for b in row]
                cells.append((statistics.fmean(sum(b.values()) for b in cycle),
                              statistics.fmean(wire(b, world) for b in cycle)))
                lines.append(f"{world:>3} {f'1/{world}' if fraction < 1 else '1':>6}"
                             + "".join(f"{p / 1e6:>10.1f} / {w / 1e6:<5.1f}" for p, w in cells))
    return "\n".join(lines[1:])


# -- the run ------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = join_torchrun(args.device)
    torch.manual_seed(0)
    model = network().to(device)
    x = torch.rand(args.batch, SIZES[0], generator=torch.Generator().manual_seed(1)).to(device)
    opt = KFAC(model, nn.BCEWithLogitsLoss(), approx=args.approx, seed=0,
               grad_worker_fraction=args.fraction, **PERIODS)
    replicas: Replicas = opt._replicas
    world, rank = replicas.size, replicas.rank
    shard = x[rank::world]
    units = Units.of(args.approx)
    lines = [f"world size {world}, grad_worker_fraction {args.fraction:g}, {args.approx}, union "
             f"batch {args.batch} ({shard.shape[0]} on rank 0), {device}, {machine()}, "
             f"{torch.get_num_threads()} thread(s) per rank, load {os.getloadavg()[0]:.1f}",
             f"  {'step':>4} {'event':<16}" + "".join(f"{k:>12}" for k in KINDS)
             + f"{'closed form':>13}{'seconds':>9}"]
    seconds = []
    for k in range(1, args.steps + 1):
        _sync(device)
        start = time.perf_counter()
        stats = opt.step(shard, shard)
        _sync(device)
        elapsed = time.perf_counter() - start
        traffic = dict(opt.traffic.step)
        seconds.append(replicas.max(elapsed))  # the slowest rank's (a collective of its own)
        gamma_step = k % PERIODS["gamma_every"] == 0
        c = 3 if gamma_step else 1
        event = ("search+" if k == 1 else "") + ("γ-step" if gamma_step else
                                                 "refresh" if stats["refreshed"] else "plain")
        event += "+ρ" if stats["rho"] == stats["rho"] else ""
        expected = closed_form(units, world, args.fraction, rank, c=c, delta0=k > 1,
                               refresh=stats["refreshed"], rho=stats["rho"] == stats["rho"])
        measured = {kind: traffic.get(kind, 0) for kind in KINDS}
        verdict = "–" if k == 1 else ("equal" if {q: v for q, v in measured.items() if v} == expected
                                      else "DIFFERS")
        lines.append(f"  {k:>4} {event:<16}" + "".join(f"{measured[q]:>12,}" for q in KINDS)
                     + f"{verdict:>13}{seconds[-1]:>9.3f}")
    lines.append(f"median seconds per step after the first: {statistics.median(seconds[1:]):.3f}")
    if rank == 0:
        launcher = f"torchrun --nproc-per-node {world}" if world > 1 else "python"
        _report("\n".join(lines), launcher, args.markdown)


def _report(text: str, launcher: str, markdown: str | None) -> None:
    """Print ``text``; with ``markdown``, append it there under its command, date and machine."""
    print(text)
    if markdown:
        command = shlex.join([*launcher.split(), *sys.argv])
        Path(markdown).parent.mkdir(parents=True, exist_ok=True)
        with Path(markdown).open("a") as f:
            f.write(f"`{command}` on {date.today().isoformat()}, {machine()}:\n\n"
                    f"```text\n{text}\n```\n\n")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fraction", type=float, default=1.0, help="grad_worker_fraction")
    parser.add_argument("--approx", choices=("blockdiag", "tridiag"), default="blockdiag")
    parser.add_argument("--batch", type=int, default=512, help="the union batch")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--markdown", help="append the output to this Markdown file")
    parser.add_argument("--closed-form", type=int, nargs="+", metavar="W",
                        help="print the closed-form bytes for these world sizes and exit")
    args = parser.parse_args()
    if args.closed_form:
        _report(closed_form_table(args.closed_form), "python", args.markdown)
    else:
        run(args)


if __name__ == "__main__":
    main()
