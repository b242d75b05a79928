"""kronlin.linalg.cg and kronlin.linalg.lanczos (kronlin/_krylov.py) against SciPy on NumPy twins."""

import numpy as np
import pytest
import scipy.sparse.linalg as spla

import kronlin as kl

from ..conftest import convert, to_numpy
from .chains import chain
from .helpers import spd

TOL = {"float64": 1e-9, "float32": 2e-4}


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


def relative(a, b):
    a, b = to_numpy(a).astype(np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


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
    cond = np.linalg.cond(twin.to_dense())
    assert relative(x, x_ref) <= 10 * rtol * cond
    assert relative(x, np.linalg.solve(twin.to_dense(), b)) <= 10 * rtol * cond


def test_cg_iterates_as_scipy_does():
    # the same recurrence: after each iteration the iterates agree, and so does the count
    op, twin = problems("numpy", "float64")["Kron"]
    b = np.random.default_rng(13).standard_normal(op.shape[0])
    ours, theirs = [], []
    kl.linalg.cg(op, b, rtol=1e-8, callback=lambda x: ours.append(x.copy()))
    spla.cg(twin.to_scipy(), b, rtol=1e-8, callback=lambda x: theirs.append(x.copy()))
    assert len(ours) == len(theirs) > 5
    for a, c in zip(ours[:5], theirs[:5], strict=True):  # later, rounding differences grow
        np.testing.assert_allclose(a, c, rtol=1e-9)


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
        assert relative(to_numpy(X)[:, j], x_ref) < 1e-8
        assert relative(to_numpy(X)[:, j], np.linalg.solve(dense, Bm[:, j])) < 1e-8
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
    np.testing.assert_allclose(x, x_ref, rtol=1e-10)


@pytest.mark.parametrize("which", ["LM", "LA", "SA"])
@pytest.mark.parametrize("name", ["Kron", "damped inverse", "BlockTridiagInverse"])
def test_lanczos_matches_eigsh_on_the_numpy_twin(backend, dtype, name, which):
    op, twin = problems(backend, dtype)[name]
    k = 3
    w, V = kl.linalg.lanczos(op, k, which=which)
    w_ref = spla.eigsh(twin.to_scipy(), k, which=which, return_eigenvectors=False)
    assert type(w) is type(V) and tuple(V.shape) == (op.shape[0], k)
    assert str(w.dtype).endswith(dtype)
    scale = np.abs(w_ref).max()
    np.testing.assert_allclose(to_numpy(w), np.sort(w_ref), atol=TOL[dtype] * scale)
    Vn, dense = to_numpy(V).astype(np.float64), twin.to_dense()
    np.testing.assert_allclose(Vn.T @ Vn, np.eye(k), atol=10 * TOL[dtype])
    residual = dense @ Vn - Vn * to_numpy(w)
    assert np.linalg.norm(residual) <= 100 * TOL[dtype] * scale


def test_lanczos_restarts_and_start_vector():
    rng = np.random.default_rng(16)
    A, B = spd(rng, 20), spd(rng, 15)
    op = kl.Kron(A, B)  # n = 300, a small basis forces many thick restarts
    v0 = rng.standard_normal(300)
    w = kl.linalg.lanczos(op, 4, which="LA", ncv=9, v0=v0, return_eigenvectors=False)
    np.testing.assert_allclose(w, np.sort(spla.eigsh(op.to_scipy(), 4, which="LA", return_eigenvectors=False)),
                               rtol=1e-10)
    with pytest.raises(kl.LinAlgError, match=r"lanczos: no convergence of 4 eigenpairs \(SA\) in 2 restarts"):
        kl.linalg.lanczos(op, 4, which="SA", ncv=6, maxiter=2)


def test_lanczos_invariant_subspaces_and_dense_input():
    # a start vector in a 2-dimensional eigenspace: Lanczos must leave it to find the others
    values = np.array([5.0, 5.0, 3.0, 2.0, 1.0, 0.5])
    Q = np.linalg.qr(np.random.default_rng(17).standard_normal((6, 6)))[0]
    dense = Q @ np.diag(values) @ Q.T
    w, V = kl.linalg.lanczos(dense, 3, which="LA", v0=Q[:, 0], ncv=5)
    np.testing.assert_allclose(w, [3.0, 5.0, 5.0], rtol=1e-12)
    np.testing.assert_allclose(dense @ V, V * w, atol=1e-10)
    w = kl.linalg.lanczos(kl.Kron(np.eye(4), np.eye(3)), 2, return_eigenvectors=False)
    np.testing.assert_allclose(w, [1.0, 1.0])


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
