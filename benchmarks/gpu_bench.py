"""kronlin on a CUDA device: Kron matmat against the cuBLAS GEMM rate, and the other operators.

Float32 by default, factors of size n ≥ 1024. Prints one table:

- the plain cuBLAS GEMM ``(n×n) @ (n×n·k)`` and the plain batched ``A @ X @ B.T`` (the floor);
- ``Kron(A, B) @ X`` (row-major and column-major ``X``) in TFLOP/s and as a share of the plain
  expression's rate (target ≥ 80 %); ``linear_operator``'s Kronecker product if importable;
- the damped Kronecker inverse, ``KronDiff(...).inv()`` and ``BlockTridiagInverse`` applies
  against ``Kron.inv()`` and ``BlockDiag`` applies on the same blocks;
- the eigendecompositions of many small factors, batched (one ``torch.linalg.eigh`` call) and
  one by one (what ``Kron.eigh`` does per factor);
- a check that no apply synchronizes with the host (``torch.cuda.set_sync_debug_mode("error")``).

Needs only torch, NumPy and kronlin; finishes in well under 90 s on an H200. Without a CUDA
device it says so and exits (``--device cpu --quick`` runs the same code on the CPU, small).

Usage::

    python benchmarks/gpu_bench.py                   # n = 1024 and 2048, float32
    python benchmarks/gpu_bench.py --dtype float64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import kronlin as kl

try:
    from ._report import recorded  # imported as benchmarks.gpu_bench (asv discovery)
except ImportError:
    from _report import recorded  # run as a script


def timer(device, fn, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls after two warm-up calls (CUDA events on GPU)."""
    import torch

    for _ in range(2):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    torch.cuda.synchronize(device)
    events = [[torch.cuda.Event(enable_timing=True) for _ in range(2)] for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events) / 1e3


def spd(gen, n: int, dtype, device):
    """A sample covariance plus a ridge, built on the device."""
    import torch

    M = torch.randn(n, 2 * n, generator=gen, device=device, dtype=dtype)
    return M @ M.T / (2 * n) + 0.1 * torch.eye(n, device=device, dtype=dtype)


def kron_rows(n: int, k: int, dtype, device, reps: int) -> list[tuple]:
    """Kron matmat vs the GEMM floor on the same shapes (and linear_operator if importable)."""
    import torch

    gen = torch.Generator(device=device).manual_seed(n)
    A, B = (torch.randn(n, n, generator=gen, device=device, dtype=dtype) for _ in range(2))
    X3 = torch.randn(k, n, n, generator=gen, device=device, dtype=dtype)  # k matrices n×n
    X_col = X3.reshape(k, n * n).T  # column-major (n², k): the batched layout, no copy
    X = X_col.contiguous()  # row-major (n², k): the same vectors
    C = X3.reshape(n, n * k)  # any n × n·k operand, for the raw GEMM rate
    op = kl.Kron(A, B)
    flops = 4 * k * n**3
    rows = []
    gemm = timer(device, lambda: A @ C, reps)
    rows.append((f"GEMM ({n}×{n}) @ ({n}×{n * k})  (cuBLAS on GPU)", gemm, flops / 2, None))
    plain = timer(device, lambda: A @ X3 @ B.T, reps)
    rows.append((f"plain A @ X @ B.T, n={n}, k={k}", plain, flops, plain))
    rows.append(("  Kron(A, B) @ X  (row-major X)", timer(device, lambda: op @ X, reps), flops, plain))
    rows.append(("  Kron(A, B) @ X  (column-major X)", timer(device, lambda: op @ X_col, reps), flops, plain))
    try:
        from linear_operator.operators import DenseLinearOperator, KroneckerProductLinearOperator
    except ImportError:
        rows.append(("  linear_operator: not installed", None, None, None))
    else:
        lo_op = KroneckerProductLinearOperator(DenseLinearOperator(A), DenseLinearOperator(B))
        err = float(torch.linalg.norm(lo_op @ X - op @ X) / torch.linalg.norm(op @ X))
        rows.append((f"  linear_operator @ X  (rel. diff {err:.0e})", timer(device, lambda: lo_op @ X, reps),
                     flops, plain))
    return rows


def operator_rows(n: int, m: int, k: int, dtype, device, reps: int) -> list[tuple]:
    """Applies of the damped inverse, KronDiff inverse, BlockTridiagInverse against their baselines."""
    import torch

    gen = torch.Generator(device=device).manual_seed(1)
    diag, offdiag = chain(gen, [n, n], [m, m], dtype, device)
    (A, B), (L1, R1) = diag
    (Lo, Ro), = offdiag
    C, D = Lo @ torch.linalg.solve(L1, Lo.T), Ro @ torch.linalg.solve(R1, Ro.T)  # C ≺ A, D ≺ B
    X = torch.randn(n * m, k, generator=gen, device=device, dtype=dtype)
    kron_inv = kl.Kron(A, B).inv()
    damped = kl.Kron(A, B).eigh().shift(1e-2).inv()
    diff_inv = kl.KronDiff(A, B, (C + C.T) / 2, (D + D.T) / 2).inv()
    flops = 4 * k * n * m * (n + m)  # two Kronecker matmats; Kron.inv() apply does half
    base = timer(device, lambda: kron_inv @ X, reps)
    rows = [(f"Kron({n}×{n}, {m}×{m}).inv() apply, k={k}", base, flops / 2, None),
            ("  damped inverse (KronEigen) apply", timer(device, lambda: damped @ X, reps), flops, base),
            ("  KronDiff(...).inv() apply", timer(device, lambda: diff_inv @ X, reps), flops, base)]
    blocks, half_n, half_m = 4, n // 2, m // 2
    diag, offdiag = chain(gen, [half_n] * blocks, [half_m] * blocks, dtype, device)
    Xb = torch.randn(blocks * half_n * half_m, k, generator=gen, device=device, dtype=dtype)
    blockdiag = kl.BlockDiag([kl.Kron(L, R).inv() for L, R in diag])
    tridiag = kl.BlockTridiagInverse(diag, offdiag)
    bd = timer(device, lambda: blockdiag @ Xb, reps)
    rows.append((f"BlockDiag of Kron inverses apply, {blocks} blocks {half_n}⊗{half_m}", bd, None, None))
    rows.append(("  BlockTridiagInverse apply", timer(device, lambda: tridiag @ Xb, reps), None, bd))
    return rows


def chain(gen, left: list[int], right: list[int], dtype, device):
    """``diag``/``offdiag`` factor pairs from two joint sample covariances (K-FAC-like, well posed)."""
    import torch

    def blocks(sizes):
        total = sum(sizes)
        eye = torch.eye(total, device=device, dtype=dtype)
        # neighbouring coordinates correlate, so the off-diagonal blocks are not negligible
        Z = torch.randn(2 * total, total, generator=gen, device=device, dtype=dtype)
        Z = Z @ (eye + 0.5 * eye.roll(1, 1))
        cov = Z.T @ Z / Z.shape[0] + 0.1 * eye
        edges = np.cumsum([0, *sizes]).tolist()
        return lambda i, j: cov[edges[i] : edges[i + 1], edges[j] : edges[j + 1]].contiguous()

    L, R = blocks(left), blocks(right)
    return ([(L(i, i), R(i, i)) for i in range(len(left))],
            [(L(i, i + 1), R(i, i + 1)) for i in range(len(left) - 1)])


def eigh_rows(count: int, size: int, dtype, device, reps: int) -> list[tuple]:
    """``count`` eigendecompositions of ``size×size`` factors: one batched call against a loop."""
    import torch

    gen = torch.Generator(device=device).manual_seed(2)
    M = torch.randn(count, size, 2 * size, generator=gen, device=device, dtype=dtype)
    S = M @ M.mT / (2 * size)
    loop = timer(device, lambda: [torch.linalg.eigh(s) for s in S], max(1, reps // 4))
    batched = timer(device, lambda: torch.linalg.eigh(S), reps)
    return [(f"eigh of {count} factors {size}×{size}, one by one", loop, None, None),
            ("  batched (one torch.linalg.eigh call)", batched, None, loop)]


def sync_check(device, dtype) -> str:
    """Apply every operator with CUDA's sync debug mode set to raise on a host synchronization."""
    import torch

    if device.type != "cuda":
        return "sync check: skipped (not a CUDA device)"
    gen = torch.Generator(device=device).manual_seed(3)
    A, B = spd(gen, 64, dtype, device), spd(gen, 32, dtype, device)
    diff = kl.KronDiff(A, B, 0.5 * A, 0.5 * B)
    ops = {"Kron": kl.Kron(A, B), "KronEigen": kl.Kron(A, B).eigh().shift(0.1).inv(), "KronDiff": diff,
           "KronDiff.inv": diff.inv(), "BlockDiag": kl.BlockDiag([kl.Kron(A, B), diff]),
           "BlockTridiagInverse": kl.BlockTridiagInverse([(A, B), (A, B)], [(0.1 * A, 0.1 * B)])}
    blocks = {name: torch.randn(op.shape[1], 4, generator=gen, device=device, dtype=dtype)
              for name, op in ops.items()}
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for name, op in ops.items():
            try:
                op @ blocks[name], blocks[name].T @ op, op @ blocks[name][:, 0]  # noqa: B018
            except RuntimeError as err:
                return f"sync check: {name} apply synchronizes with the host: {err}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return f"sync check: no host synchronization in {', '.join(ops)} applies"


def print_rows(rows: list[tuple]) -> None:
    """``name, seconds, flops, reference seconds`` → time, TFLOP/s, share of the reference rate."""
    for name, seconds, flops, reference in rows:
        if seconds is None:
            print(f"  {name}")
            continue
        rate = f"{flops / seconds / 1e12:7.2f} TFLOP/s" if flops else " " * 15
        share = f"{reference / seconds * 100:6.0f} % of first" if reference else ""
        print(f"  {name:52s} {seconds * 1e3:9.3f} ms  {rate}  {share}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--quick", action="store_true", help="small sizes (for a smoke test on CPU)")
    parser.add_argument("--markdown", metavar="PATH",
                        help="also save the output as a Markdown fragment (for docs/results/)")
    args = parser.parse_args()
    with recorded(args.markdown):
        return measure_all(args)


def measure_all(args) -> int:
    """Every table of this script, printed as it comes."""
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device available; nothing to measure (use --device cpu --quick to try it)")
        return 0
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    tf32 = torch.backends.cuda.matmul.allow_tf32
    print(f"kronlin {kl.__version__}, torch {torch.__version__}, {name}, {args.dtype}, TF32 matmul {tf32}")
    sizes, k, reps = ([128], 8, 3) if args.quick else ([1024, 2048], 64, 10)
    print("\nKron matmat (share: of the plain A @ X @ B.T rate on the same shapes; target ≥ 80 %)")
    for n in sizes:
        print_rows(kron_rows(n, k, dtype, device, reps))
    n, m = (64, 32) if args.quick else (2048, 1024)
    print("\noperators (share: the first row's time / this row's time)")
    print_rows(operator_rows(n, m, 16, dtype, device, reps))
    print_rows(eigh_rows(32 if args.quick else 512, 32 if args.quick else 64, dtype, device, reps))
    print("\n" + sync_check(device, dtype))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
