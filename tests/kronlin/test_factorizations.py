"""Factorizations (kronlin/_factorizations.py): float32 retries keep the operator in float32."""

import numpy as np
import pytest

import kronlin as kl

from ..conftest import convert
from .chains import chain
from .helpers import assert_close, spd
from .test_block_tridiag import as_backend, reference_inverse


def failing_float32_cholesky(monkeypatch, backend):
    """Make the backend's Cholesky fail on every float32 matrix (as LAPACK may near singularity)."""
    if backend == "numpy":
        real = np.linalg.cholesky

        def cholesky(a):
            if a.dtype == np.float32:
                raise np.linalg.LinAlgError("not positive definite")
            return real(a)

        monkeypatch.setattr(np.linalg, "cholesky", cholesky)
        return
    torch = pytest.importorskip("torch")
    real_ex = torch.linalg.cholesky_ex

    def cholesky_ex(a):
        factor, info = real_ex(a)
        return (factor, info + 1) if a.dtype == torch.float32 else (factor, info)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", cholesky_ex)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_float32_cholesky_retry_keeps_kron_diff_inverse_float32(monkeypatch, backend):
    rng = np.random.default_rng(61)
    A, B = spd(rng, 3), spd(rng, 2)
    C, D = 0.3 * spd(rng, 3), 0.3 * spd(rng, 2)
    failing_float32_cholesky(monkeypatch, backend)
    op = kl.KronDiff(*(convert(M, backend, "float32") for M in (A, B, C, D)))
    with pytest.warns(RuntimeWarning, match="^A: float32 Cholesky failed; succeeded in float64"):
        inv = op.inv()
    assert str(inv.dtype).endswith("float32")
    assert all(str(K.dtype).endswith("float32") for K in inv.bases)
    y = inv @ convert(np.ones(6), backend, "float32")
    assert str(y.dtype).endswith("float32")
    dense = np.kron(A, B) - np.kron(C, D)
    assert_close(y, np.linalg.solve(dense, np.ones(6)), dtype="float32", bound=10 * np.linalg.cond(dense),
                 label="KronDiff")


def test_float32_cholesky_retry_keeps_block_tridiag_inverse_float32(monkeypatch):
    rng = np.random.default_rng(62)
    diag, offdiag = chain(rng, [3, 2], [2, 2])
    failing_float32_cholesky(monkeypatch, "numpy")
    with pytest.warns(RuntimeWarning, match=r"diag\[0\]\[0\]: float32 Cholesky failed; succeeded in float64"):
        op = kl.BlockTridiagInverse(as_backend(diag, "numpy", "float32"), as_backend(offdiag, "numpy", "float32"))
    assert op.dtype == np.float32
    assert all(c.dtype == np.float32 for c in op.conditionals)
    y = op @ np.ones(op.shape[0], np.float32)
    assert y.dtype == np.float32
    dense = reference_inverse(diag, offdiag)
    assert_close(y, dense @ np.ones(op.shape[0]), dtype="float32", bound=np.linalg.cond(dense),
                 label="BlockTridiagInverse")


def test_cholesky_failure_in_float64_too_raises_naming_the_factor(monkeypatch):
    monkeypatch.setattr(np.linalg, "cholesky", lambda a: (_ for _ in ()).throw(np.linalg.LinAlgError("no")))
    rng = np.random.default_rng(63)
    A, B = spd(rng, 3), spd(rng, 2)
    with pytest.raises(kl.NotPositiveDefiniteError, match=r"^A: expected a symmetric positive definite matrix "
                                                          r"of shape \(3, 3\)"):
        kl.KronDiff(*(M.astype(np.float32) for M in (A, B, A, B))).inv()
