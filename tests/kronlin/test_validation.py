"""Input checks (kronlin/_validation.py).

The audit: every array argument of every constructor and function refuses a wrong dtype, shape
or non-finite entry with an error that names it; every scalar argument refuses NaN, inf, complex
and out-of-range values.

Symmetric factors are symmetrized, not trusted. LAPACK's ``eigh`` and Cholesky read one triangle
only, so a factor that is symmetric only up to rounding (a sample covariance accumulated in
another order, a float32 copy) would silently be replaced by the symmetric matrix of its lower
triangle. The contract: every operator that needs symmetric factors works with ``(F + Fᵀ)/2``.
The inputs here are deliberately asymmetric, at half the tolerated relative asymmetry, so the two
readings differ by far more than rounding.
"""

import re

import numpy as np
import pytest

import kronlin as kl
from kronlin._validation import _SYMMETRY_RTOL, symmetrized

from ..conftest import BACKENDS, convert
from .chains import chain
from .helpers import assert_close, product_condition, spd, tolerance
from .test_block_tridiag import as_backend, reference_inverse
from .test_kron import kron_eigen_bound


def _sym(n, scale=1.0):
    return scale * (np.eye(n) + 0.1 * np.ones((n, n)))


# name -> (the valid arguments by name, the call that takes them and the backend's converter)
CALLS = {
    "Kron": ({"factors[0]": np.eye(2), "factors[1]": np.ones((3, 2))},
             lambda a, on: kl.Kron(a["factors[0]"], a["factors[1]"])),
    "KronEigen": ({"bases[0]": np.eye(2), "bases[1]": np.eye(3), "values": np.ones((2, 3))},
                  lambda a, on: kl.KronEigen([a["bases[0]"], a["bases[1]"]], a["values"])),
    "KronEigen.with_values": ({"values": np.ones((2, 3))},
                              lambda a, on: kl.KronEigen([on(np.eye(2)), on(np.eye(3))], on(np.ones((2, 3))))
                              .with_values(a["values"])),
    "KronDiff": ({"A": _sym(2), "B": _sym(3), "C": _sym(2, 0.1), "D": _sym(3, 0.1)},
                 lambda a, on: kl.KronDiff(a["A"], a["B"], a["C"], a["D"])),
    "BlockTridiagInverse": (
        {"diag[0][0]": _sym(2), "diag[0][1]": _sym(3), "diag[1][0]": _sym(2), "diag[1][1]": _sym(2),
         "offdiag[0][0]": 0.1 * np.ones((2, 2)), "offdiag[0][1]": 0.1 * np.ones((3, 2))},
        lambda a, on: kl.BlockTridiagInverse(
            [(a["diag[0][0]"], a["diag[0][1]"]), (a["diag[1][0]"], a["diag[1][1]"])],
            [(a["offdiag[0][0]"], a["offdiag[0][1]"])]),
    ),
    "khatri_rao": ({"A": np.ones((2, 3)), "B": np.ones((4, 3))}, lambda a, on: kl.khatri_rao(a["A"], a["B"])),
    "face_split": ({"A": np.ones((3, 2)), "B": np.ones((3, 4))}, lambda a, on: kl.face_split(a["A"], a["B"])),
    "linalg.kron_solve": ({"factors[0]": _sym(2), "b": np.ones(2)},
                          lambda a, on: kl.linalg.kron_solve([a["factors[0]"]], a["b"])),
}

# variant -> (how to spoil a valid array, the error, the message after "<name>: ")
SPOILED = {
    "int64": (lambda a: a.astype(np.int64), TypeError, "expected dtype float32 or float64, got int64"),
    "complex": (lambda a: a + 1j, TypeError, "expected dtype float32 or float64, got complex128"),
    "float16": (lambda a: a.astype(np.float16), TypeError, "expected dtype float32 or float64, got float16"),
    "bool": (lambda a: a > 0, TypeError, "expected dtype float32 or float64, got bool"),
    "nan": (lambda a: np.where(np.eye(*a.shape[:2], dtype=bool) if a.ndim == 2 else True, np.nan, a),
            ValueError, "expected finite entries"),
    "inf": (lambda a: np.where(np.eye(*a.shape[:2], dtype=bool) if a.ndim == 2 else True, np.inf, a),
            ValueError, "expected finite entries"),
    "3-D": (lambda a: a[None], ValueError, "expected "),
    "empty": (lambda a: a[:0], ValueError, "expected "),
    "list": (lambda a: a.tolist(), TypeError, "expected a NumPy array or a torch tensor, got list"),
}

CASES = [(call, name, variant) for call, (good, _) in CALLS.items() for name in good for variant in SPOILED]


def _on(backend, a):
    if backend == "numpy" or isinstance(a, list):
        return a
    import torch

    return torch.as_tensor(a, device="cuda" if backend == "cuda" else "cpu")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("call", "name", "variant"), CASES, ids=[f"{c}-{n}-{v}" for c, n, v in CASES])
def test_every_array_argument_is_checked(call, name, variant, backend):
    good, build = CALLS[call]
    spoil, error, message = SPOILED[variant]
    if name == "b" and variant in ("nan", "inf"):
        pytest.skip("right-hand sides may hold any value: NaN in, NaN out")
    on = lambda a: _on(backend, a)  # noqa: E731
    arrays = {key: on(value) for key, value in good.items()}
    build(arrays, on)  # the valid arguments pass
    arrays[name] = on(spoil(good[name]))
    with pytest.raises(error, match=rf"^{re.escape(name)}: {re.escape(message)}"):
        build(arrays, on)


def test_khatri_rao_out_is_checked():
    A, B = np.ones((2, 3)), np.ones((4, 3))
    with pytest.raises(TypeError, match="out: expected dtype float64, got float32"):
        kl.khatri_rao(A, B, out=np.empty((8, 3), np.float32))
    with pytest.raises(ValueError, match=r"out: expected shape \(8, 3\), got \(3, 8\)"):
        kl.khatri_rao(A, B, out=np.empty((3, 8)))


def test_kron_eigen_refuses_complex_values_on_every_backend(backend):
    # the silent wrong result of issue 15: complex values made .H return M x instead of Mᴴ x
    values = np.ones((2, 3)) + 1j * np.arange(6).reshape(2, 3)
    with pytest.raises(TypeError, match="values: expected dtype float32 or float64, got complex128"):
        kl.KronEigen([_on(backend, np.eye(2)), _on(backend, np.eye(3))], _on(backend, values))
    with pytest.raises(TypeError, match="orthonormal: expected True or False, got str"):
        kl.KronEigen([np.eye(2)], np.ones(2), orthonormal="yes")


def test_arrays_on_different_devices_are_refused():
    # the device check comes before any value is read (a meta tensor has none)
    torch = pytest.importorskip("torch")
    cpu, meta = torch.eye(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64, device="meta")
    for build, what in [
        (lambda: kl.Kron(cpu, meta), "factors"),
        (lambda: kl.KronEigen([cpu], meta[0]), "bases and values"),
        (lambda: kl.KronDiff(cpu, cpu, cpu, meta), "A, B, C, D"),
        (lambda: kl.BlockTridiagInverse([(cpu, cpu), (cpu, meta)], [(cpu, cpu)]), "diag and offdiag"),
        (lambda: kl.khatri_rao(cpu, meta), "A, B"),
    ]:
        with pytest.raises(ValueError, match=rf"^{re.escape(what)}: expected one device, got \['cpu', 'meta'\]"):
            build()


def _tridiag(damping):
    return kl.BlockTridiagInverse([(_sym(2), _sym(2))] * 2, [(0.1 * np.eye(2), 0.1 * np.eye(2))],
                                  damping=damping)


SCALARS = {
    "KronDiff.inv damping": (lambda v: kl.KronDiff(_sym(2), _sym(2), _sym(2, .1), _sym(2, .1)).inv(damping=v),
                             "damping"),
    "KronDiff.inv rtol": (lambda v: kl.KronDiff(_sym(2), _sym(2), _sym(2, .1), _sym(2, .1)).inv(rtol=v), "rtol"),
    "KronDiff.solve damping": (lambda v: kl.KronDiff(_sym(2), _sym(2), _sym(2, .1), _sym(2, .1))
                               .solve(np.ones(4), damping=v), "damping"),
    "BlockTridiagInverse damping": (_tridiag, "damping"),
    "kron_solve damping": (lambda v: kl.linalg.kron_solve([_sym(2)], np.ones(2), damping=v), "damping"),
    "KronEigen.shift": (lambda v: kl.Kron(_sym(2)).eigh().shift(v), "c"),
    "scalar * op": (lambda v: v * kl.Kron(np.eye(2)), "scalar"),
}


@pytest.mark.parametrize("case", SCALARS)
@pytest.mark.parametrize(("value", "error", "message"), [
    (float("nan"), ValueError, "expected a finite number, got nan"),
    (float("inf"), ValueError, "expected a finite number, got inf"),
    (1j, TypeError, "expected a real number, got complex"),
    (True, TypeError, "expected a real number, got bool"),
    (-1.0, ValueError, "expected a number ≥ 0, got -1"),
], ids=["nan", "inf", "complex", "bool", "negative"])
def test_every_scalar_argument_is_checked(case, value, error, message):
    call, name = SCALARS[case]
    if value == -1.0 and name in ("c", "scalar"):
        call(value)  # a negative shift or scale is a valid matrix
        return
    if case == "scalar * op" and not isinstance(value, float):
        with pytest.raises(TypeError):  # not a number: NumPy/Python refuse the product itself
            call(value)
        return
    with pytest.raises(error, match=rf"^{re.escape(name)}: {re.escape(message)}"):
        call(value)


# -- symmetric factors are symmetrized ----------------------------------------------------------

def skewed(rng, S, dtype, fraction=0.5):
    """``S`` plus an antisymmetric part with ``max|F − Fᵀ| = fraction · rtol(dtype) · max|F|``."""
    N = rng.standard_normal(S.shape)
    E = np.triu(N, 1) - np.triu(N, 1).T
    E *= fraction * _SYMMETRY_RTOL[dtype] * np.abs(S).max() / np.abs(2 * E).max()
    return S + E


def lower_reading(F):
    """The symmetric matrix LAPACK would see in ``F``: its lower triangle mirrored."""
    return np.tril(F) + np.tril(F, -1).T


def test_symmetrized_is_the_symmetric_part(dtype):
    rng = np.random.default_rng(71)
    F = skewed(rng, spd(rng, 5), dtype).astype(dtype)
    out = symmetrized(np, F, "F")
    np.testing.assert_array_equal(out, (F + F.T) / 2)
    np.testing.assert_array_equal(out, out.T)


def test_asymmetry_threshold_is_relative_per_dtype(dtype):
    rng = np.random.default_rng(72)
    S = 1e3 * spd(rng, 4)  # the threshold scales with max|F|
    symmetrized(np, skewed(rng, S, dtype, 0.9).astype(dtype), "F")
    with pytest.raises(ValueError, match=r"^F: expected a symmetric matrix, got max\|F - Fᵀ\| = .* \(max\|F\| = "):
        symmetrized(np, skewed(rng, S, dtype, 1.5).astype(dtype), "F")


def test_kron_eigh_decomposes_the_symmetric_part(backend, dtype):
    rng = np.random.default_rng(73)
    A, B = (skewed(rng, spd(rng, n), dtype) for n in (4, 3))
    op = kl.Kron(convert(A, backend, dtype), convert(B, backend, dtype)).eigh()
    sym = np.kron((A + A.T) / 2, (B + B.T) / 2)
    fs = [(A + A.T) / 2, (B + B.T) / 2]
    absolute = np.kron(*(abs(q) @ np.diag(w) @ abs(q).T for w, q in map(np.linalg.eigh, fs)))
    bound = kron_eigen_bound(fs) * product_condition(sym, np.eye(12), absolute)
    assert_close(op.to_dense(), sym, dtype=dtype, bound=bound, label="Kron(symmetrized)")
    # the lower-triangle reading differs by much more than the tolerance above
    lower = np.kron(lower_reading(A), lower_reading(B))
    assert np.linalg.norm(lower - sym) > 10 * tolerance(dtype, bound) * np.linalg.norm(sym)


def test_kron_diff_applies_and_inverts_the_symmetric_parts(backend, dtype):
    rng = np.random.default_rng(74)
    A, B = skewed(rng, spd(rng, 3), dtype), skewed(rng, spd(rng, 2), dtype)
    C, D = skewed(rng, 0.3 * spd(rng, 3), dtype), skewed(rng, 0.3 * spd(rng, 2), dtype)
    op = kl.KronDiff(*(convert(M, backend, dtype) for M in (A, B, C, D)))
    sym = [(M + M.T) / 2 for M in (A, B, C, D)]
    dense = np.kron(sym[0], sym[1]) - np.kron(sym[2], sym[3])
    absolute = np.kron(np.abs(sym[0]), np.abs(sym[1])) + np.kron(np.abs(sym[2]), np.abs(sym[3]))
    bound = 18 * product_condition(dense, np.eye(6), absolute)  # as in test_kron_diff's contract
    assert_close(op.to_dense(), dense, dtype=dtype, bound=bound, label="KronDiff(symmetrized)")
    assert_close(op.T.to_dense(), dense, dtype=dtype, bound=bound, label="KronDiff(symmetrized)")
    assert_close(op.inv().to_dense(), np.linalg.inv(dense), dtype=dtype, bound=10 * np.linalg.cond(dense),
                 label="KronDiff(symmetrized)")
    raw = np.kron(A, B) - np.kron(C, D)
    assert np.linalg.norm(raw - dense) > 10 * tolerance(dtype, bound) * np.linalg.norm(dense)


def test_block_tridiag_inverse_uses_the_symmetric_diagonal_blocks(backend, dtype):
    rng = np.random.default_rng(75)
    diag, offdiag = chain(rng, [3, 2], [2, 3])
    skew_diag = [tuple(skewed(rng, M, dtype) for M in pair) for pair in diag]
    op = kl.BlockTridiagInverse(as_backend(skew_diag, backend, dtype), as_backend(offdiag, backend, dtype))
    sym_diag = [tuple((M + M.T) / 2 for M in pair) for pair in skew_diag]
    dense = reference_inverse(sym_diag, offdiag)
    assert_close(op.to_dense(), dense, dtype=dtype, bound=np.linalg.cond(dense), label="BlockTridiagInverse")
    lower = reference_inverse([tuple(lower_reading(M) for M in pair) for pair in skew_diag], offdiag)
    assert np.linalg.norm(lower - dense) > 10 * tolerance(dtype, np.linalg.cond(dense)) * np.linalg.norm(dense)
