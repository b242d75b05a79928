"""kronlin side by side with the other Kronecker libraries, in one process, on the same inputs.

Times kronlin against pykronecker, linear_operator, PyLops, pyfastkron and
``scipy.linalg.khatri_rao`` (those installed; the others are listed as skipped), checks that every
result agrees with kronlin's, and prints per case: the time, the ratio to kronlin's time (> 1:
kronlin is faster), the achieved GFLOP/s and its share of the plain BLAS GEMM rate on this
machine. Then the damped Kronecker solve, ``KronDiff`` setup/apply, ``BlockTridiagInverse`` vs
the ``BlockDiag`` of Kronecker inverses, the issue's targets with verdicts, and a plot of
``Kron`` matmat time vs size against the dense product (O(n³) vs O(n⁴)).

Timing: each case calls its candidates in turn, round after round (so background load hits all
alike), resting :data:`PAUSE` before each call, and keeps each one's fastest call; the first call
of each (Numba compilation, caches) is not timed. Slow candidates get fewer rounds, to keep the
default run under about three minutes.

With ``--grid`` it runs the Kronecker-matmat grid of issue 15 instead (``benchmarks/kron_grid.py``:
every cell against pyfastkron and the best NumPy/BLAS expression, side by side, with the
plan kronlin chose, the arithmetic floor, and a verdict per cell).

Usage::

    python benchmarks/compare.py                    # about 3 minutes on 2 cores
    python benchmarks/compare.py --grid --markdown docs/results/performance/kron-grid.md
    python benchmarks/compare.py --quick            # half the sizes, one round: a smoke test
    python benchmarks/compare.py --plot results/kron_scaling.png
    python benchmarks/compare.py --markdown docs/results/performance/compare.md

On machines where ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` pin a slower kernel, unset both for
the benchmark command only (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python ...``); the
header prints which BLAS kernel runs.

NumPy asks the kernel for transparent huge pages on every large allocation (torch does not).
Where memory is fragmented and THP defrag is ``madvise`` (the 2-core development VM), a fresh
100 MB array then sometimes stalls 50–100 ms in page compaction, at random, for every NumPy-based
candidate alike; that noise swamped the differences measured here, so this script switches the
request off for its whole run (``--numpy-hugepages`` keeps NumPy's default).
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import kronlin as kl
from kronlin._mode import kron_matmat

try:
    from . import kron_grid  # imported as benchmarks.compare (asv discovery)
    from ._report import recorded
except ImportError:
    import kron_grid  # run as a script
    from _report import recorded

TOLERANCE = {"float64": 1e-9, "float32": 1e-3}  # relative, against kronlin's result
PROBE, SLOW = 8, 10.0
"""A library whose call on ``PROBE`` right-hand sides predicts more than ``SLOW`` seconds for all
of them is timed on those and reported scaled up ("est."), not run on all of them."""
PAUSE = 0.15
"""Seconds of rest before each timed call: OpenBLAS's worker threads spin for about 0.1 s after a
call and would otherwise steal the cores from whichever candidate runs next."""


@dataclass
class Case:
    """One timed case: candidates by name, the first being the reference for ratios."""

    title: str
    flops: float = 0.0
    dtype: str = "float64"
    rows: list = field(default_factory=list)  # (name, seconds, agreement)


# -- timing -------------------------------------------------------------------------------------------

def measure(candidates: dict[str, Callable[[], object]], rounds: int, budget: float,
            slow: float | None = None, pause: float = PAUSE, sample: float = 0.0,
            clock: Callable[[], float] = time.perf_counter) -> dict:
    """Fastest call of each candidate over interleaved rounds (in turn first), and its first result.

    The first call of each candidate is not timed (compilation, caches), except for a candidate
    slower than ``slow`` seconds (default ``budget``): that one call is its measurement. The
    others get ``rounds`` timed rounds, fewer if that would exceed ``budget`` seconds (at least
    one). With ``sample > 0`` a timed round of a candidate faster than that is as many calls in
    a row as fill ``sample`` seconds, their mean its time (``timeit``'s way: a single call of a
    few microseconds cannot be timed on a loaded machine). ``clock`` reads the time (wall-clock by
    default).
    """
    results, best = {}, {}
    for name, fn in candidates.items():
        start = clock()
        results[name] = fn()
        best[name] = clock() - start
    fast = {name: fn for name, fn in candidates.items() if best[name] <= (slow or budget)}
    first = dict(best)
    if sample:  # the first call paid for compilation and caches: a second one sizes the rounds
        for name, fn in fast.items():
            start = clock()
            fn()
            first[name] = clock() - start
    best.update({name: math.inf for name in fast})
    calls = {name: max(1, round(sample / max(first[name], 1e-7))) if sample else 1 for name in fast}
    order = list(fast.items())
    for r in range(rounds):
        # each round starts with the next candidate: none is always the first after the pause
        shift = r % max(len(order), 1)
        for name, fn in order[shift:] + order[:shift]:
            if r == 0 or r < budget / (first[name] * calls[name]):
                time.sleep(pause)
                start = clock()
                for _ in range(calls[name]):
                    fn()
                best[name] = min(best[name], (clock() - start) / calls[name])
    return {name: (best[name], results[name]) for name in candidates}


def agreement(result, reference, dtype: str) -> str:
    """``ok`` (with the relative error) when ``result`` matches ``reference`` to tolerance."""
    result = np.asarray(result.numpy() if hasattr(result, "numpy") else result, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    err = np.linalg.norm(result - reference) / max(np.linalg.norm(reference), 1e-300)
    return f"ok {err:.0e}" if err <= TOLERANCE[dtype] else f"MISMATCH {err:.1e}"


def run_case(case: Case, candidates: dict, args, check: bool = True, effort: float = 1) -> Case:
    """Time ``candidates`` (first = reference) and fill ``case.rows``; ``effort`` × the rounds."""
    timed = measure(candidates, round(effort * args.rounds), effort * args.budget, slow=args.budget)
    reference = next(iter(timed.values()))[1]
    for name, (seconds, result) in timed.items():
        ok = agreement(result, reference, case.dtype) if check and result is not None else ""
        case.rows.append((name, seconds, ok))
    return case


# -- the other libraries (each optional) -------------------------------------------------------------

def optional_libraries() -> dict[str, object]:
    """The installed comparison libraries by name (imports are slow and noisy: done once here)."""
    found = {}
    for name, module in [("pykronecker", "pykronecker"), ("linear_operator", "linear_operator"),
                         ("PyLops", "pylops"), ("pyfastkron", "pyfastkron.fastkronnumpy"),
                         ("torch", "torch")]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found[name] = __import__(module, fromlist=["_"])
        except Exception as err:  # noqa: BLE001 - any import failure means "not available"
            print(f"  {name}: not available ({type(err).__name__}: {err})")
    return found


def kron_candidates(libs: dict, factors: list[np.ndarray], X: np.ndarray) -> dict:
    """``(F₁ ⊗ … ⊗ Fₙ) X`` by every installed library, on the same arrays."""
    out = {}
    if "pykronecker" in libs:
        op = libs["pykronecker"].KroneckerProduct(list(factors))
        out["pykronecker"] = lambda: op @ X
    if "linear_operator" in libs:
        torch = libs["torch"]
        from linear_operator.operators import DenseLinearOperator, KroneckerProductLinearOperator

        op_t = KroneckerProductLinearOperator(*(DenseLinearOperator(torch.from_numpy(f)) for f in factors))
        X_t = torch.from_numpy(X)
        out["linear_operator"] = lambda: op_t @ X_t
    if "PyLops" in libs:
        pylops = libs["PyLops"]
        op = pylops.MatrixMult(factors[0], dtype=X.dtype)
        for f in factors[1:]:
            op = pylops.Kronecker(op, pylops.MatrixMult(f, dtype=X.dtype), dtype=X.dtype)
        out["PyLops"] = lambda: op.matmat(X)
    if "pyfastkron" in libs:
        out["pyfastkron"] = lambda: libs["pyfastkron"].gekmm(list(factors), X)
    return out


# -- cases --------------------------------------------------------------------------------------------

def gemm_rate(n: int, k: int, dtype: str, args) -> float:
    """GFLOP/s of the plain BLAS GEMM ``(n×n) @ (n×n·k)``: the floor's rate on these shapes."""
    rng = np.random.default_rng(0)
    A, C = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n * k)).astype(dtype)
    seconds, _ = measure({"gemm": lambda: A @ C}, args.rounds, args.budget)["gemm"]
    return 2 * n * n * n * k / seconds / 1e9


def two_large_factors(libs, n: int, k: int, dtype: str, args) -> Case:
    """Two n×n factors on k right-hand sides: the GEMM floor is the plain ``A @ X @ B.T``."""
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
    X3 = rng.standard_normal((k, n, n)).astype(dtype)  # k matrices n×n: the plain expression's input
    X = np.ascontiguousarray(X3.reshape(k, n * n).T)  # the same vectors as a row-major (N, k) block
    op = kl.Kron(A, B)
    X_col = X3.reshape(k, n * n).T  # column-major view: what `x @ op` hands over
    candidates = {
        "kronlin": lambda: op @ X,
        "plain A @ X @ B.T": lambda: (A @ X3 @ B.T).reshape(k, n * n).T,
        "kronlin (column-major X)": lambda: op @ X_col,
        **kron_candidates(libs, [A, B], X),
    }
    case = Case(f"Kron matmat, two {n}×{n} factors, {k} right-hand sides, {dtype}", 4 * k * n**3, dtype)
    # on the 2-core machine these one-second calls vary by up to 20 % from call to call, in two
    # clusters, for every candidate alike (the plain expression too): more rounds here
    return run_case(case, candidates, args, effort=2)


def many_small_factors(libs, n: int, count: int, k: int, dtype: str, args) -> Case:
    """``count`` n×n factors on k right-hand sides (the Numba kernel against the NumPy chains)."""
    rng = np.random.default_rng(2)
    factors = [rng.standard_normal((n, n)).astype(dtype) for _ in range(count)]
    X = rng.standard_normal((n**count, k)).astype(dtype)
    op = kl.Kron(*factors)

    def tensordot_chain():
        T = X.reshape(*([n] * count), k)
        for j, F in enumerate(factors):
            T = np.moveaxis(np.tensordot(F, T, axes=(1, j)), 0, j)
        return T.reshape(-1, k)

    candidates = {
        "kronlin": lambda: op @ X,
        "NumPy chain (matmul mode products)": lambda: kron_matmat(np, factors, X, kernel="modes"),
        "NumPy chain (tensordot + moveaxis)": tensordot_chain,
    }
    # libraries that loop over right-hand sides in Python take minutes here: probe them first
    probes = {}
    for name, fn in kron_candidates(libs, factors, X[:, :PROBE].copy()).items():
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        if seconds * k / PROBE > SLOW:
            probes[name] = (seconds, result)
    full = kron_candidates(libs, factors, X)
    candidates.update({name: fn for name, fn in full.items() if name not in probes})
    case = Case(f"Kron matmat, {count} {n}×{n} factors, {k} right-hand sides, {dtype}",
                2 * count * n * n**count * k, dtype)
    run_case(case, candidates, args)
    reference = op @ X[:, :PROBE]
    for name, (seconds, result) in probes.items():
        label = f"{name} (est. from {PROBE} of {k} columns)"
        case.rows.append((label, seconds * k / PROBE, agreement(result, reference, dtype)))
    return case


def khatri_rao(m: int, n: int, dtype: str, args) -> Case:
    """``(m×n) ⊙ (m×n)`` against SciPy (NumPy's broadcast multiply)."""
    import scipy.linalg

    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((m, n)).astype(dtype), rng.standard_normal((m, n)).astype(dtype)
    out = np.empty((m * m, n), dtype)
    candidates = {
        "kronlin": lambda: kl.khatri_rao(A, B),
        "scipy.linalg.khatri_rao": lambda: scipy.linalg.khatri_rao(A, B),
        "kronlin (out=)": lambda: kl.khatri_rao(A, B, out=out),
    }
    return run_case(Case(f"khatri_rao ({m}×{n}) ⊙ ({m}×{n}), {dtype}", 0, dtype), candidates, args)


def spd(rng, n: int) -> np.ndarray:
    M = rng.standard_normal((n, 2 * n))
    return M @ M.T / (2 * n) + 0.1 * np.eye(n)


def damped_solve(libs, n: int, m: int, k: int, dtype: str, args) -> list[Case]:
    """``(A⊗B + λI)⁻¹ X``: setup+apply per call, then apply alone; and the undamped solve."""
    rng = np.random.default_rng(4)
    A, B = spd(rng, n).astype(dtype), spd(rng, m).astype(dtype)
    X = rng.standard_normal((n * m, k)).astype(dtype)
    lam = 1e-2
    inverse = kl.Kron(A, B).eigh().shift(lam).inv()
    setup_apply = {"kronlin": lambda: kl.Kron(A, B).eigh().shift(lam).inv() @ X}
    apply = {"kronlin": lambda: inverse @ X}
    exact = {"kronlin": lambda: kl.Kron(A, B).solve(X)}
    if "linear_operator" in libs:
        torch = libs["torch"]
        from linear_operator.operators import DenseLinearOperator, KroneckerProductLinearOperator

        A_t, B_t, X_t = map(torch.from_numpy, (A, B, X))

        def damped():
            K = KroneckerProductLinearOperator(DenseLinearOperator(A_t), DenseLinearOperator(B_t))
            return K.add_diagonal(torch.tensor(lam, dtype=A_t.dtype))

        setup_apply["linear_operator"] = lambda: damped().solve(X_t)
        prepared = damped()
        prepared.solve(X_t)  # its eigendecompositions are now cached
        apply["linear_operator"] = lambda: prepared.solve(X_t)
    if "pykronecker" in libs:
        P = libs["pykronecker"].KroneckerProduct([A, B])
        exact["pykronecker"] = lambda: P.inv() @ X
    title = f"{n}×{n} ⊗ {m}×{m}, {k} right-hand sides, {dtype}"
    flops = 4 * k * n * m * (n + m)  # two Kronecker matmats of two GEMMs each
    return [
        run_case(Case(f"damped Kronecker solve (setup + apply), {title}", 0, dtype), setup_apply, args),
        run_case(Case(f"damped Kronecker inverse apply (after setup), {title}", flops, dtype), apply, args),
        run_case(Case(f"undamped Kronecker solve, {title}", 0, dtype), exact, args),
    ]


def kron_diff(n: int, m: int, k: int, dtype: str, args) -> list[Case]:
    """``KronDiff(A, B, C, D)``: inverse setup, then its apply against ``Kron(A, B).inv()``'s."""
    rng = np.random.default_rng(5)
    # K-FAC's conditional: C = Lₒ L₁⁻¹ Lₒᵀ ≺ A from a joint covariance, so A⊗B − C⊗D ≻ 0
    ((A, B), (L1, R1)), ((Lo, Ro),) = _chain(rng, [n, n], [m, m], dtype)
    C, D = Lo @ np.linalg.solve(L1, Lo.T), Ro @ np.linalg.solve(R1, Ro.T)
    C, D = (C + C.T) / 2, (D + D.T) / 2
    X = rng.standard_normal((n * m, k)).astype(dtype)
    diff = kl.KronDiff(A, B, C, D)
    diff_inv, kron_inv = diff.inv(), kl.Kron(A, B).inv()
    damped_inv = kl.Kron(A, B).eigh().shift(1e-2).inv()
    title = f"{n}×{n} ⊗ {m}×{m}, {k} right-hand sides, {dtype}"
    setup = run_case(Case(f"KronDiff setup, {title}", 0, dtype), {
        "Kron(A, B).inv()": lambda: kl.Kron(A, B).inv(),
        "KronDiff(A, B, C, D).inv()": lambda: kl.KronDiff(A, B, C, D).inv(),
        "Kron(A, B).eigh().shift(λ).inv()": lambda: kl.Kron(A, B).eigh().shift(1e-2).inv(),
    }, args, check=False)
    apply = run_case(Case(f"KronDiff apply, {title}", 0, dtype), {
        "Kron(A, B).inv() apply": lambda: kron_inv @ X,
        "KronDiff(...).inv() apply": lambda: diff_inv @ X,
        "KronDiff apply": lambda: diff @ X,
        "damped Kron inverse apply (KronEigen)": lambda: damped_inv @ X,
    }, args, check=False)
    residual = np.linalg.norm(diff @ (diff_inv @ X) - X) / np.linalg.norm(X)
    apply.rows[1] = (*apply.rows[1][:2], f"residual {residual:.0e}")
    return [setup, apply]


def block_operators(libs, left: list[int], right: list[int], k: int, dtype: str, args) -> list[Case]:
    """``BlockTridiagInverse`` against the ``BlockDiag`` of Kronecker inverses on the same blocks."""
    rng = np.random.default_rng(6)
    diag, offdiag = _chain(rng, left, right, dtype)
    X = rng.standard_normal((sum(a * b for a, b in zip(left, right, strict=True)), k)).astype(dtype)
    tridiag = kl.BlockTridiagInverse(diag, offdiag)
    blockdiag = kl.BlockDiag([kl.Kron(L, R).inv() for L, R in diag])
    title = f"{len(left)} blocks {left[0]}×{left[0]} ⊗ {right[0]}×{right[0]}, {k} right-hand sides, {dtype}"
    setup = run_case(Case(f"block operators setup, {title}", 0, dtype), {
        "BlockDiag of Kron inverses": lambda: kl.BlockDiag([kl.Kron(L, R).inv() for L, R in diag]),
        "BlockTridiagInverse": lambda: kl.BlockTridiagInverse(diag, offdiag),
    }, args, check=False)
    apply_candidates = {"BlockDiag of Kron inverses": lambda: blockdiag @ X,
                        "BlockTridiagInverse": lambda: tridiag @ X}
    if "pykronecker" in libs:
        pk = libs["pykronecker"]
        pk_blocks = pk.KroneckerBlockDiag([pk.KroneckerProduct([np.linalg.inv(L), np.linalg.inv(R)])
                                           for L, R in diag])
        apply_candidates["pykronecker KroneckerBlockDiag"] = lambda: pk_blocks @ X
    apply = run_case(Case(f"block operators apply, {title}", 0, dtype), apply_candidates, args)
    apply.rows[1] = (*apply.rows[1][:2], "")  # a different matrix: nothing to agree with
    return [setup, apply]


def _chain(rng, left, right, dtype):
    """K-FAC-like block-tridiagonal factors: blocks of two joint sample covariances."""
    def blocks(sizes):
        total = sum(sizes)
        Z = rng.standard_normal((4 * total, total)) @ (np.eye(total) + 0.5 * np.eye(total, k=1))
        C = (Z.T @ Z / len(Z) + 0.1 * np.eye(total)).astype(dtype)
        e = np.cumsum([0, *sizes])
        return lambda i, j: C[e[i] : e[i + 1], e[j] : e[j + 1]]

    L, R = blocks(left), blocks(right)
    return ([(L(i, i), R(i, i)) for i in range(len(left))],
            [(L(i, i + 1), R(i, i + 1)) for i in range(len(left) - 1)])


# -- report -------------------------------------------------------------------------------------------

def print_case(case: Case, gemm: float | None) -> None:
    """One table: time, time relative to the first row, GFLOP/s and share of the GEMM rate."""
    print(f"\n{case.title}")
    reference = case.rows[0][1]
    for name, seconds, ok in case.rows:
        rate = ""
        if case.flops and not name.startswith("NumPy chain (tensordot"):
            gflops = case.flops / seconds / 1e9
            rate = f"{gflops:7.1f} GF/s" + (f" {100 * gflops / gemm:4.0f}% GEMM" if gemm else "")
        print(f"  {name:38s} {seconds * 1e3:10.2f} ms {seconds / reference:7.2f}×  {rate:24s} {ok}")


def verdicts(cases: dict[str, Case]) -> list[str]:
    """The issue's CPU targets, each as ``measured ratio (target): PASS/FAIL``."""
    def ratio(key, num, den):
        rows = {name: s for name, s, _ in cases[key].rows}
        return rows[num] / rows[den] if num in rows and den in rows else math.nan

    lines = []
    for dtype in ("float64", "float32"):
        key = f"large {dtype}"
        r = ratio(key, "kronlin", "plain A @ X @ B.T")
        lines.append(_verdict(f"Kron 2 large, {dtype}: kronlin / plain A @ X @ B.T", r, "≤", 1.15))
        for other in ("pykronecker", "linear_operator", "PyLops", "pyfastkron"):
            r = ratio(key, other, "kronlin")
            if not math.isnan(r):
                lines.append(_verdict(f"Kron 2 large, {dtype}: {other} / kronlin", r, ">", 1.0))
        r = ratio(f"small {dtype}", "NumPy chain (matmul mode products)", "kronlin")
        lines.append(_verdict(f"Kron 4 small, {dtype}: NumPy chain / kronlin", r, "≥", 1.5))
        r = ratio(f"khatri_rao {dtype}", "kronlin", "scipy.linalg.khatri_rao")
        lines.append(_verdict(f"khatri_rao, {dtype}: kronlin / scipy", r, "≤", 0.7))
        # KronDiff's inverse applies K diag(d) Kᵀ: 4 GEMMs against Kron.inv()'s 2 (floor 2.0)
        r = ratio(f"kron_diff apply {dtype}", "KronDiff(...).inv() apply", "Kron(A, B).inv() apply")
        lines.append(_verdict(f"KronDiff.inv() apply / Kron.inv() apply, {dtype} (GEMMs 4:2)", r, "≤", 1.5))
        # b blocks: 8(b−1)+2 GEMMs against 2b, 3.25 for the b = 4 measured here
        r = ratio(f"block apply {dtype}", "BlockTridiagInverse", "BlockDiag of Kron inverses")
        lines.append(_verdict(f"BlockTridiagInverse / BlockDiag apply, {dtype} (GEMMs 26:8)", r, "≤", 3.0))
    return lines


def _verdict(label: str, value: float, op: str, bound: float) -> str:
    ok = {"≤": value <= bound, "≥": value >= bound, ">": value > bound}[op]
    return f"  {label:62s} {value:6.2f}  (target {op} {bound})  {'PASS' if ok else 'FAIL'}"


def scaling_plot(path: str, sizes: list[int], dense_max: int, k: int, args) -> None:
    """Kron matmat time vs n (two n×n factors) against the dense ``n²×n²`` product; saves ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(7)
    kron_times, dense_times = [], []
    for n in sizes:
        A, B, X = rng.standard_normal((n, n)), rng.standard_normal((n, n)), rng.standard_normal((n * n, k))
        op = kl.Kron(A, B)
        candidates = {"kron": lambda op=op, X=X: op @ X}
        if n <= dense_max:
            dense = np.kron(A, B)
            candidates["dense"] = lambda dense=dense, X=X: dense @ X
        timed = measure(candidates, args.rounds, args.budget / 4)
        kron_times.append(timed["kron"][0])
        dense_times.append(timed["dense"][0] if "dense" in timed else math.nan)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.loglog(sizes, kron_times, "o-", label="kronlin Kron(A, B) @ X  (4kn³ flops)")
    ax.loglog(sizes, dense_times, "s-", label="dense np.kron(A, B) @ X  (2kn⁴ flops)")
    for times, power, style in ((kron_times, 3, ":"), (dense_times, 4, "--")):
        i = max(j for j, t in enumerate(times) if not math.isnan(t))
        ref = [times[i] * (n / sizes[i]) ** power for n in sizes]
        ax.loglog(sizes, ref, "k" + style, lw=0.8, label=f"∝ n{'³' if power == 3 else '⁴'}")
    ax.set_xlabel("factor size n (matrix size n²)")
    ax.set_ylabel(f"time per product with {k} vectors [s]")
    ax.set_title("Kronecker matmat vs the dense product (float64)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", lw=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=130)
    print(f"\nscaling plot: {path}  (n = {sizes}; dense up to n = {dense_max})")
    for n, t_kron, t_dense in zip(sizes, kron_times, dense_times, strict=True):
        print(f"  n = {n:4d}: Kron {t_kron * 1e3:9.3f} ms   dense {t_dense * 1e3:9.3f} ms")


# -- the Kronecker-matmat grid (issue 15) --------------------------------------------------------------

TIE = 1.05
"""Verdicts: "win" when kronlin is faster than pyfastkron and than every NumPy expression; "tie"
when it is within 5 % of the fastest (run-to-run noise on the shared 2-core machine is of that
order even with interleaved rounds); "LOSS" otherwise."""


def grid(args) -> None:
    """Every cell of ``kron_grid``: kronlin, pyfastkron and the NumPy expressions, side by side."""
    _set_numpy_hugepages(args.numpy_hugepages)
    rounds, budget = (1, 0.5) if args.quick else (5, 1.5)
    clock = time.process_time if args.cpu_time else time.perf_counter
    start = time.perf_counter()
    header()
    print(f"clock: {'CPU time of the process' if args.cpu_time else 'wall-clock'}, threads: "
          f"{args.threads or 'all'} (kronlin's cost model plans for {_kronlin_threads()})")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    fk = kron_grid.pyfastkron()
    if fk is None:
        print("  pyfastkron: not installed (pip install pyfastkron); its column stays empty")
    floors = {dtype: roofline(dtype, clock) for dtype in ("float32", "float64")}
    for dtype, (rate, bandwidth) in floors.items():
        print(f"floor constants, {dtype}: GEMM {rate / 1e9:.1f} GFLOP/s (512³), "
              f"copy {bandwidth / 1e9:.1f} GB/s")
    cells = [c for c in kron_grid.all_cells() if args.cells in c.name]
    print(f"\n{len(cells)} cells × 2 dtypes; times in ms (fastest of up to {rounds} interleaved rounds, "
          "a round of a fast candidate being as many calls as fill 20 ms); "
          "ratios > 1: kronlin is faster; floor: max(flops / GEMM rate, (|X| + |Y|) / copy bandwidth)\n")
    print(f"{'cell':34s} {'dtype':7s} {'kronlin plan':38s} {'kronlin':>9s} {'pyfastkron':>10s} "
          f"{'best NumPy':>10s} {'(which)':14s} {'pfk/kl':>6s} {'np/kl':>6s} {'kl/floor':>8s}  verdict")
    tally: dict[str, list[str]] = {"win": [], "tie": [], "LOSS": []}
    for cell in cells:
        for dtype in ("float32", "float64"):
            verdict, line = grid_cell(cell, dtype, fk, floors[dtype], rounds, budget, clock)
            tally[verdict].append(f"{cell.name} {dtype}")
            print(line, flush=True)
    print(f"\nkronlin fastest in {len(tally['win'])} cells, tied (within {100 * (TIE - 1):.0f} %) in "
          f"{len(tally['tie'])}, slower in {len(tally['LOSS'])} of {sum(map(len, tally.values()))}")
    for cell in tally["LOSS"]:
        print(f"  slower: {cell}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"total {time.perf_counter() - start:.0f} s")


def grid_cell(cell, dtype: str, fk, floor_constants, rounds: int, budget: float,
              clock: Callable[[], float]) -> tuple[str, str]:
    """Time one cell; its verdict and its table line."""
    factors, X = kron_grid.data(cell, dtype)
    op = kl.Kron(*factors)
    plan = op.plan(cell.k)
    candidates = {"kronlin": lambda: op @ X}
    if fk is not None:
        candidates["pyfastkron"] = lambda: fk.gekmm(factors, X)
    expressions = kron_grid.numpy_expressions(factors, X)
    candidates.update(expressions)
    timed = measure(candidates, rounds, budget, pause=0.1, sample=0.02, clock=clock)
    reference = timed["kronlin"][1]
    bad = [name for name, (_, result) in timed.items()
           if agreement(result, reference, dtype).startswith("MISMATCH")]
    ours = timed["kronlin"][0]
    numpy_name = min(expressions, key=lambda name: timed[name][0])
    numpy_time = timed[numpy_name][0]
    theirs = timed["pyfastkron"][0] if "pyfastkron" in timed else math.inf
    rate, bandwidth = floor_constants
    nbytes = (X.size + cell.k * math.prod(r for r, _ in cell.shapes)) * X.itemsize
    floor = max(cell.flops() / rate, nbytes / bandwidth)
    if ours < theirs and ours <= numpy_time:
        verdict = "win"
    else:
        verdict = "tie" if ours <= TIE * min(theirs, numpy_time) else "LOSS"
    pfk = f"{theirs * 1e3:10.3f}" if math.isfinite(theirs) else f"{'—':>10s}"
    ratio = f"{theirs / ours:6.2f}" if math.isfinite(theirs) else f"{'—':>6s}"
    note = f"  MISMATCH: {', '.join(bad)}" if bad else ""
    line = (f"{cell.name:34s} {dtype:7s} {str(plan).split(' (')[0]:38s} {ours * 1e3:9.3f} {pfk} "
            f"{numpy_time * 1e3:10.3f} {numpy_name:14s} {ratio} {numpy_time / ours:6.2f} "
            f"{ours / floor:8.2f}  {verdict}{note}")
    return verdict, line


def _kronlin_threads() -> int:
    from kronlin._plan import thread_count

    return thread_count()


def roofline(dtype: str, clock: Callable[[], float]) -> tuple[float, float]:
    """This machine's GEMM rate (512³ blocks) and copy bandwidth (128 MiB), for the floors."""
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((512, 512)).astype(dtype), rng.standard_normal((512, 4096)).astype(dtype)
    seconds, _ = measure({"gemm": lambda: A @ B}, 5, 2.0, clock=clock)["gemm"]
    rate = 2 * 512 * 512 * 4096 / seconds
    src = rng.standard_normal(2**24 // (8 // np.dtype(dtype).itemsize)).astype(dtype)
    dst = np.empty_like(src)
    copy, _ = measure({"copy": lambda: np.copyto(dst, src)}, 5, 2.0, clock=clock)["copy"]
    return rate, 2 * src.nbytes / copy


def _set_numpy_hugepages(enabled: bool) -> None:
    core = getattr(np, "_core", None) or np.core
    core.multiarray._set_madvise_hugepage(enabled)
    print(f"NumPy huge-page requests on large arrays: {'on' if enabled else 'off'}")


def header() -> None:
    """Machine, BLAS kernel and thread counts: what the numbers depend on."""
    from threadpoolctl import threadpool_info

    print(f"kronlin {kl.__version__}, NumPy {np.__version__}, {os.cpu_count()} CPUs")
    for pool in threadpool_info():
        print(f"  {pool['internal_api']:9s} {pool.get('architecture') or '':10s} "
              f"{pool['num_threads']} threads  {os.path.basename(pool['filepath'])}")
    pinned = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v in os.environ]
    if pinned:
        print(f"  note: {', '.join(pinned)} set; unset both for this command to let OpenBLAS pick its kernel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="half the sizes, one timed round")
    parser.add_argument("--plot", default="results/kron_scaling.png", help="where to save the scaling plot")
    parser.add_argument("--numpy-hugepages", action="store_true",
                        help="keep NumPy's madvise(MADV_HUGEPAGE) on large arrays (see the module docstring)")
    parser.add_argument("--markdown", metavar="PATH",
                        help="also save the printed tables as a Markdown fragment (for docs/results/)")
    parser.add_argument("--grid", action="store_true",
                        help="run the Kronecker-matmat grid (kron_grid.py) instead of the comparison")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for BLAS, OpenMP (pyfastkron) and Numba (default: all)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="with --grid --threads 1: time by the process's CPU time, which other "
                             "processes on a shared machine do not inflate")
    parser.add_argument("--cells", default="",
                        help="with --grid, only cells whose name contains this text (e.g. 'k=1')")
    args = parser.parse_args()
    if args.cpu_time and args.threads != 1:
        parser.error("--cpu-time needs --threads 1 (CPU time sums the threads' time, spinning included)")
    with recorded(args.markdown):
        if args.threads is not None:
            limit_threads(args.threads)
        grid(args) if args.grid else compare(args)


def limit_threads(threads: int) -> None:
    """Every library on ``threads`` threads: BLAS, Numba, and the OpenMP runtimes (pyfastkron's)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by an OpenMP runtime when it loads
    kron_grid.pyfastkron()  # load pyfastkron's OpenMP now, so that threadpoolctl finds it too
    import numba
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    numba.set_num_threads(threads)


def compare(args) -> None:
    """Every case, the verdicts and the scaling plot, printed as they come."""
    _set_numpy_hugepages(args.numpy_hugepages)
    args.rounds, args.budget = (1, 1.0) if args.quick else (3, 3.0)
    scale = 2 if args.quick else 1
    start = time.perf_counter()

    header()
    libs = optional_libraries()
    cases: dict[str, Case] = {}
    gemm = {}
    for dtype in ("float64", "float32"):
        n = 512 // scale
        gemm[dtype] = gemm_rate(n, 64, dtype, args)
        print(f"\nplain GEMM ({n}×{n}) @ ({n}×{n * 64}), {dtype}: {gemm[dtype]:.1f} GFLOP/s")
        cases[f"large {dtype}"] = two_large_factors(libs, n, 64, dtype, args)
        print_case(cases[f"large {dtype}"], gemm[dtype])
        cases[f"small {dtype}"] = many_small_factors(libs, 16, 4, 256 // scale, dtype, args)
        print_case(cases[f"small {dtype}"], gemm[dtype])
        cases[f"khatri_rao {dtype}"] = khatri_rao(64, 4096 // scale, dtype, args)
        print_case(cases[f"khatri_rao {dtype}"], None)
        for i, case in enumerate(damped_solve(libs, 256 // scale, 128 // scale, 16, dtype, args)):
            cases[f"damped {i} {dtype}"] = case
            print_case(case, gemm[dtype])
        setup, apply = kron_diff(256 // scale, 128 // scale, 16, dtype, args)
        cases[f"kron_diff setup {dtype}"], cases[f"kron_diff apply {dtype}"] = setup, apply
        print_case(setup, None)
        print_case(apply, None)
        setup, apply = block_operators(libs, [128 // scale] * 4, [64 // scale] * 4, 16, dtype, args)
        cases[f"block setup {dtype}"], cases[f"block apply {dtype}"] = setup, apply
        print_case(setup, None)
        print_case(apply, None)

    print("\ntargets (ratios of times measured above, in this run):")
    print("\n".join(verdicts(cases)))
    sizes = [8, 16, 32, 64] if args.quick else [8, 16, 32, 64, 128, 256, 512]
    scaling_plot(args.plot, sizes, 32 if args.quick else 64, 16, args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
