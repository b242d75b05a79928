"""Check the Kronecker cost model (kronlin/_plan.py) against measured times, plan by plan.

For each shape, every kernel and every grouping the cost model considers is run on the same
block and timed; the script prints the model's estimate next to the measured time, and for
each shape whether the model's choice is the measured fastest (and by how much it is slower
if not). That is the evidence the model's constants (``kronlin._plan.Machine``) were fitted
to.

With ``--threads 1`` (the default) every library runs on one core and the times are the
thread's CPU time (``time.thread_time``), which other processes on a shared machine do not
inflate; with more threads they are wall-clock times, which they do.

Usage::

    python benchmarks/calibrate_kron.py                   # the default shapes, one core
    python benchmarks/calibrate_kron.py --threads 2 --shapes 64x3:1 8x6:16
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shapes", nargs="*", default=[
        "64x3:1", "8x6:1", "16x4:1", "256x2:1", "512x2:1", "8x4:16", "16x4:16", "32x3:16", "128x2:16",
        "8x6:16", "64x2:256", "16x3:256", "16x4:256", "128x2:256", "8x6:256", "32x3:256"],
        help="NxD:K: D factors N×N on K right-hand sides")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before NumPy and Numba start their thread pools
    run(args)


def run(args) -> None:
    import math
    import time

    import numpy as np

    from kronlin._mode import KronMatmat
    from kronlin._plan import KERNELS, KronPlan, Problem, choose, estimate, groupings, machine

    clock = time.thread_time if args.threads == 1 else time.perf_counter
    m = machine()
    print(f"threads {m.threads}, {args.dtype}, clock {clock.__name__}")
    misses = []
    for spec in args.shapes:
        n, rest = spec.split("x")
        d, k = map(int, rest.split(":"))
        n = int(n)
        rng = np.random.default_rng(0)
        factors = [rng.standard_normal((n, n)).astype(args.dtype) for _ in range(d)]
        X = rng.standard_normal((n**d, k)).astype(args.dtype)
        problem = Problem(tuple(f.shape for f in factors), k, args.dtype, "numpy")
        rows = []
        for kernel in KERNELS:
            for groups in groupings(problem.shapes):
                plan = KronPlan(kernel, groups)
                predicted = estimate(plan, problem, m)
                if predicted > 4 * choose(problem).seconds:
                    continue  # hopeless by the model: not worth the machine time
                engine = KronMatmat(np, factors, plan)
                engine(X)  # compile, merge the groups, warm the caches
                best = math.inf
                for _ in range(args.rounds):
                    start = clock()
                    engine(X)
                    best = min(best, clock() - start)
                rows.append((best, predicted, plan))
        rows.sort(key=lambda row: row[0])
        chosen = choose(problem)
        print(f"\n{spec} {args.dtype}: model's choice {chosen}")
        for best, predicted, plan in rows:
            mark = "<- chosen" if (plan.kernel, plan.groups) == (chosen.kernel, chosen.groups) else ""
            print(f"  {str(plan):48s} measured {best * 1e3:9.3f} ms  model {predicted * 1e3:9.3f} ms {mark}")
        chosen_time = next(b for b, _, p in rows if (p.kernel, p.groups) == (chosen.kernel, chosen.groups))
        if chosen_time > 1.1 * rows[0][0]:
            misses.append(f"{spec}: chosen {chosen_time / rows[0][0]:.2f}× the fastest ({rows[0][2]})")
    print("\nshapes where the model's choice is more than 10 % slower than the measured fastest:")
    print("\n".join(f"  {line}" for line in misses) or "  none")


if __name__ == "__main__":
    sys.exit(main())
