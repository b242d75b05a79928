"""kronlin.linalg.cg and kronlin.linalg.lanczos (kronlin/_krylov.py) against SciPy on NumPy twins."""

import numpy as np
import pytest
import scipy.sparse.linalg as spla

import kronlin as kl

from ..conftest import convert, to_numpy
from .chains import chain
from .helpers import UNIT_ROUNDOFF, assert_close, spd


def problems(backend, dtype):
    """SPD operators (name → (op, its float64 NumPy twin)) built from the same matrices."""
    rng = np.random.default_rng(11)
    A, B, C = spd(rng, 5), spd(rng, 4), spd(rng, 3)
    diag, offdiag = chain(rng, [3, 4], [2, 3])
    out = {}
    for b, dt in ((backend, dtype), ("numpy", "float64")):
        c = lambda M, b=b, dt=dt: convert(M, b, dt)  # noqa: E731
        K = kl.Kron(c(A), c(B), c(C))
        ops = {
            "Kron": K,
            "damped inverse": kl.Kron(c(A), c(B)).eigh().shift(0.3).inv(),
            "lazy sum": K + 0.5 * kl.Kron(c(np.eye(5)), c(np.eye(12))),
            "BlockTridiagInverse": kl.BlockTridiagInverse([tuple(map(c, p)) for p in diag],
                                                          [tuple(map(c, p)) for p in offdiag]),
        }
        for name, op in ops.items():
            out.setdefault(name, []).append(op)
    return out


def residual(dense, x, b):
    """``‖b − A x‖ / ‖b‖`` on the float64 dense twin: the true residual, not CG's recurrence."""
    x = to_numpy(x).astype(np.float64)
    return np.linalg.norm(b - dense @ x) / np.linalg.norm(b)


def solution_bound(dense, dtype, *residuals):
    """A posteriori (Higham §7.1): ``‖x − x*‖/‖x*‖ ≤ cond(A)·‖b − A x‖/‖b‖`` for each solution, so
    two solutions differ by at most ``cond(A)`` times the sum of their residuals; in units of the
    dtype's ``u``, plus the rounding of the result to the dtype."""
    return 1 + np.linalg.cond(dense) * sum(residuals) / UNIT_ROUNDOFF[dtype]


def recurrence_bound(dense, dtype, rtol):
    """CG stops on its recurrence residual ``< rtol``; the true residual differs from it by the
    rounding of ``A x`` and of the updates, of order ``n·cond(A)·u`` (Greenbaum 1997, §7.3)."""
    return rtol / UNIT_ROUNDOFF[dtype] + dense.shape[0] * np.linalg.cond(dense)


@pytest.mark.parametrize("name", ["Kron", "damped inverse", "lazy sum", "BlockTridiagInverse"])
def test_cg_matches_scipy_on_the_numpy_twin(backend, dtype, name):
    op, twin = problems(backend, dtype)[name]
    rng = np.random.default_rng(12)
    b = rng.standard_normal(op.shape[0])
    rtol = 1e-10 if dtype == "float64" else 1e-5
    x, info = kl.linalg.cg(op, convert(b, backend, dtype), rtol=rtol)
    x_ref, info_ref = spla.cg(twin.to_scipy(), b, rtol=rtol)
    assert info == info_ref == 0
    assert type(x) is type(convert(b, backend, dtype)) and tuple(x.shape) == b.shape
    assert str(x.dtype).endswith(dtype)
    dense = twin.to_dense()
    assert_close(dense @ to_numpy(x).astype(np.float64), b, dtype=dtype, label="cg residual",
                 bound=recurrence_bound(dense, dtype, rtol))
    r, r_ref = residual(dense, x, b), residual(dense, x_ref, b)
    assert_close(x, x_ref, dtype=dtype, bound=solution_bound(dense, dtype, r, r_ref), label="cg")
    # np.linalg.solve is backward stable: within cond(A)·n·u of x*
    assert_close(x, np.linalg.solve(dense, b), dtype=dtype, label="cg",
                 bound=solution_bound(dense, dtype, r) + dense.shape[0] * np.linalg.cond(dense))


def test_cg_iterates_as_scipy_does():
    # the same recurrence: after each iteration the iterates agree, and so does the count
    op, twin = problems("numpy", "float64")["Kron"]
    b = np.random.default_rng(13).standard_normal(op.shape[0])
    ours, theirs = [], []
    kl.linalg.cg(op, b, rtol=1e-8, callback=lambda x: ours.append(x.copy()))
    spla.cg(twin.to_scipy(), b, rtol=1e-8, callback=lambda x: theirs.append(x.copy()))
    assert len(ours) == len(theirs) > 5
    # iterate i is p_i(A) b for a polynomial of degree i whose coefficients come from inner
    # products: to first order an apply's rounding (its bound) reaches it amplified by at most
    # cond(A) per iteration; later, rounding differences grow
    dense = twin.to_dense()
    apply = sum(f.shape[1] for f in op.factors) + 2 * len(op.factors) + 1  # test_kron.kron_bound
    for i, (a, c) in enumerate(zip(ours[:5], theirs[:5], strict=True), start=1):
        assert_close(a, c, dtype="float64", bound=apply * i * np.linalg.cond(dense), label="cg iterates")


def test_cg_with_block_x0_preconditioner_and_zero_column(backend):
    op, twin = problems(backend, "float64")["lazy sum"]
    rng = np.random.default_rng(14)
    Bm = rng.standard_normal((op.shape[0], 3))
    Bm[:, 1] = 0.0  # solution 0, as SciPy returns for b = 0
    X0 = rng.standard_normal(Bm.shape)
    rtol = 1e-10
    # K + 0.5 I preconditioned by the exact structured inverse of the nearby K + 0.4 I
    seeded = np.random.default_rng(11)
    A, B, C = spd(seeded, 5), spd(seeded, 4), spd(seeded, 3)  # the factors of problems()
    M = kl.Kron(*(convert(F, backend, "float64") for F in (A, B, C))).eigh().shift(0.4).inv()
    M_numpy = kl.Kron(A, B, C).eigh().shift(0.4).inv()
    X, info = kl.linalg.cg(op, convert(Bm, backend, "float64"), x0=convert(X0, backend, "float64"),
                           M=M, rtol=rtol)
    assert info == 0
    dense = twin.to_dense()
    for j in (0, 2):
        x_ref, info_ref = spla.cg(twin.to_scipy(), Bm[:, j], x0=X0[:, j], M=M_numpy.to_scipy(), rtol=rtol)
        assert info_ref == 0
        x, b = to_numpy(X)[:, j], Bm[:, j]
        r, r_ref = residual(dense, x, b), residual(dense, x_ref, b)
        assert_close(dense @ x, b, dtype="float64", bound=recurrence_bound(dense, "float64", rtol),
                     label="cg residual")
        assert_close(x, x_ref, dtype="float64", bound=solution_bound(dense, "float64", r, r_ref), label="cg")
        assert_close(x, np.linalg.solve(dense, b), dtype="float64", label="cg",
                     bound=solution_bound(dense, "float64", r) + dense.shape[0] * np.linalg.cond(dense))
    np.testing.assert_array_equal(to_numpy(X)[:, 1], 0.0)
    # with the exact inverse as preconditioner, CG converges in one iteration
    exact = kl.Kron(A, B, C).eigh().shift(0.5).inv()
    count = []
    x, info = kl.linalg.cg(kl.Kron(A, B, C).eigh().shift(0.5), Bm[:, 0], M=exact, rtol=1e-10,
                           callback=count.append)
    assert info == 0 and len(count) == 1


def test_cg_reports_unconverged_runs_as_scipy():
    op, twin = problems("numpy", "float64")["Kron"]
    b = np.random.default_rng(15).standard_normal(op.shape[0])
    x, info = kl.linalg.cg(op, b, rtol=1e-12, maxiter=3)
    x_ref, info_ref = spla.cg(twin.to_scipy(), b, rtol=1e-12, maxiter=3)
    assert info == info_ref == 3
    # the third iterate of the same recurrence (see test_cg_iterates_as_scipy_does)
    apply = sum(f.shape[1] for f in op.factors) + 2 * len(op.factors) + 1
    assert_close(x, x_ref, dtype="float64", bound=apply * 3 * np.linalg.cond(twin.to_dense()),
                 label="cg iterates")


@pytest.mark.parametrize("which", ["LM", "LA", "SA"])
@pytest.mark.parametrize("name", ["Kron", "damped inverse", "BlockTridiagInverse"])
def test_lanczos_matches_eigsh_on_the_numpy_twin(backend, dtype, name, which):
    op, twin = problems(backend, dtype)[name]
    k = 3
    w, V = kl.linalg.lanczos(op, k, which=which)
    w_ref = spla.eigsh(twin.to_scipy(), k, which=which, return_eigenvectors=False)
    assert type(w) is type(V) and tuple(V.shape) == (op.shape[0], k)
    assert str(w.dtype).endswith(dtype)
    Vn, dense, wn = to_numpy(V).astype(np.float64), twin.to_dense(), to_numpy(w).astype(np.float64)
    n, norm, u = dense.shape[0], np.linalg.norm(dense, 2), UNIT_ROUNDOFF[dtype]
    # Ritz pairs: converged to lanczos's tolerance (u·|θ|, ARPACK's rule), plus the rounding of
    # the applies (the operator's bound, at most n·cond here) and of the basis (n·u per vector)
    R = dense @ Vn - Vn * wn
    assert np.linalg.norm(R) <= (np.sqrt(k) + 2 * n * np.sqrt(k) * np.linalg.cond(dense)) * u * norm
    # Gram–Schmidt twice against the basis: n·u per inner product
    assert_close(Vn.T @ Vn, np.eye(k), dtype=dtype, bound=n * k, label="lanczos basis")
    # symmetric A: |θ − λ| ≤ ‖A v − θ v‖ / ‖v‖ (Parlett, Thm 4.5.1) for the Ritz value, and SciPy's
    # ARPACK within n·u·‖A‖ of the eigenvalues of the float64 twin
    bound = (np.linalg.norm(R) / u + n * np.sqrt(k) * norm) / np.linalg.norm(w_ref) + 1
    assert_close(w, np.sort(w_ref), dtype=dtype, bound=bound, label="lanczos")


def test_lanczos_restarts_and_start_vector():
    rng = np.random.default_rng(16)
    A, B = spd(rng, 20), spd(rng, 15)
    op = kl.Kron(A, B)  # n = 300, a small basis forces many thick restarts
    v0 = rng.standard_normal(300)
    w = kl.linalg.lanczos(op, 4, which="LA", ncv=9, v0=v0, return_eigenvectors=False)
    # both converged to u·|θ| (ARPACK's rule) on the same operator: 2·u apart, plus the applies'
    # rounding (n·u·‖A‖ through the Ritz residuals)
    assert_close(w, np.sort(spla.eigsh(op.to_scipy(), 4, which="LA", return_eigenvectors=False)),
                 dtype="float64", bound=2 + 2 * 300, label="lanczos")
    with pytest.raises(kl.LinAlgError, match=r"lanczos: no convergence of 4 eigenpairs \(SA\) in 2 restarts"):
        kl.linalg.lanczos(op, 4, which="SA", ncv=6, maxiter=2)


def test_lanczos_invariant_subspaces_and_dense_input():
    # a start vector in a 2-dimensional eigenspace: Lanczos must leave it to find the others
    values = np.array([5.0, 5.0, 3.0, 2.0, 1.0, 0.5])
    Q = np.linalg.qr(np.random.default_rng(17).standard_normal((6, 6)))[0]
    dense = Q @ np.diag(values) @ Q.T
    w, V = kl.linalg.lanczos(dense, 3, which="LA", v0=Q[:, 0], ncv=5)
    # converged to u·|θ|, plus the rounding of the dense applies (n·u·‖A‖) and of Q (n·u)
    assert_close(w, [3.0, 5.0, 5.0], dtype="float64", bound=1 + 2 * 6, label="lanczos")
    assert_close(dense @ V, V * w, dtype="float64", bound=2 * 6 * np.linalg.cond(dense), label="lanczos")
    w = kl.linalg.lanczos(kl.Kron(np.eye(4), np.eye(3)), 2, return_eigenvectors=False)
    # the identity: exact applies; the Rayleigh quotients of normalized vectors round (n·u)
    assert_close(w, [1.0, 1.0], dtype="float64", bound=2 * 12, label="lanczos")


def test_krylov_errors(backend):
    op = kl.Kron(convert(np.eye(4), backend, "float64"))
    b = convert(np.ones(4), backend, "float64")
    with pytest.raises(ValueError, match=r"A: expected a square operator, got shape \(4, 3\)"):
        kl.linalg.cg(kl.Kron(convert(np.ones((4, 3)), backend, "float64")), b)
    with pytest.raises(TypeError, match="A: expected a kronlin LinearOperator or a 2-D array"):
        kl.linalg.cg([[1.0]], b)
    with pytest.raises(ValueError, match=r"x0: expected shape \(4,\) \(as b\), got \(4, 2\)"):
        kl.linalg.cg(op, b, x0=convert(np.ones((4, 2)), backend, "float64"))
    with pytest.raises(ValueError, match=r"M: expected shape \(4, 4\) \(as A\), got \(2, 2\)"):
        kl.linalg.cg(op, b, M=kl.Kron(convert(np.eye(2), backend, "float64")))
    with pytest.raises(ValueError, match="rtol: expected a number ≥ 0, got -1"):
        kl.linalg.cg(op, b, rtol=-1)
    with pytest.raises(ValueError, match="maxiter: expected a positive integer, got 0"):
        kl.linalg.cg(op, b, maxiter=0)
    with pytest.raises(ValueError, match=r"b: expected shape \(4,\) or \(4, k\), got \(5,\)"):
        kl.linalg.cg(op, convert(np.ones(5), backend, "float64"))
    with pytest.raises(ValueError, match="k: expected 1 ≤ k < n = 4, got 4"):
        kl.linalg.lanczos(op, 4)
    with pytest.raises(ValueError, match="which: expected 'LM', 'LA' or 'SA', got 'BE'"):
        kl.linalg.lanczos(op, 1, which="BE")
    with pytest.raises(ValueError, match="ncv: expected k < ncv ≤ n, i.e. 2 < ncv ≤ 4, got 2"):
        kl.linalg.lanczos(op, 2, ncv=2)
    with pytest.raises(ValueError, match=r"v0: expected shape \(4,\), got \(4, 1\)"):
        kl.linalg.lanczos(op, 1, v0=convert(np.ones((4, 1)), backend, "float64"))


def test_krylov_mixed_backends_are_refused():
    torch = pytest.importorskip("torch")
    op = kl.Kron(torch.eye(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="b: the operator holds torch arrays, got a numpy array"):
        kl.linalg.cg(op, np.ones(3))
    with pytest.raises(TypeError, match="v0: the operator holds torch arrays, got a numpy array"):
        kl.linalg.lanczos(op, 1, v0=np.ones(3))
