import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kronlin as kl

from ..conftest import convert, to_numpy
from .helpers import assert_close, logdet_bound, product_condition, spd
from .operator_contract import ErrorModel, InvertibleOperatorContract, OperatorContract


def dense_kron(*factors):
    out = factors[0]
    for f in factors[1:]:
        out = np.kron(out, f)
    return out


def kron_bound(factors):
    """Rounding errors of one entry of ``(⊗Fⱼ) X``: the mode products' dot products, and the
    rounding of each factor and of ``X`` to the working dtype, with their products.

    A plan applies each group of merged factors as one factor (``kronlin._plan``), whose dot
    products have length ``∏ cⱼ`` over the group: the worst grouping the cost model may choose
    counts ``max Σ_groups ∏ cⱼ`` (``Σ cⱼ`` without merging), with ``cⱼ`` the larger side (the
    transpose applies the rows)."""
    from kronlin._plan import groupings

    sides = [max(f.shape) for f in factors]
    shapes = [(n, n) for n in sides]
    dots = max(sum(math.prod(sides[j] for j in g) for g in groups) for groups in groupings(shapes))
    return dots + 2 * len(factors) + 1


def kron_model(factors):
    """The contract's error model of ``Kron(*factors)``: factor inverses err by ``cond(Fⱼ)`` each."""
    square = all(f.shape[0] == f.shape[1] for f in factors)
    return ErrorModel(kron_bound(factors),
                      inverse_condition=sum(map(np.linalg.cond, factors)) if square else None)


class TestKronTwoRectangular(OperatorContract):
    label = "Kron(2 rectangular)"

    def build(self, rng, backend, dtype):
        A, B = rng.standard_normal((4, 3)), rng.standard_normal((2, 5))
        return kl.Kron(convert(A, backend, dtype), convert(B, backend, dtype)), np.kron(A, B), kron_model([A, B])


class TestKronThreeSquareSPD(InvertibleOperatorContract):
    label = "Kron(3 SPD)"
    symmetric = True

    def build(self, rng, backend, dtype):
        fs = [spd(rng, n) for n in (3, 4, 2)]
        op = kl.Kron(*(convert(f, backend, dtype) for f in fs))
        return op, dense_kron(*fs), kron_model(fs)


class TestKronSingleFactor(InvertibleOperatorContract):
    label = "Kron(1 factor)"

    def build(self, rng, backend, dtype):
        A = rng.standard_normal((5, 5)) + 5 * np.eye(5)
        return kl.Kron(convert(A, backend, dtype)), A, kron_model([A])


class TestKronFourFactors(OperatorContract):
    label = "Kron(4 mixed)"

    def build(self, rng, backend, dtype):
        fs = [rng.standard_normal(s) for s in ((2, 3), (3, 3), (1, 2), (4, 2))]
        return kl.Kron(*(convert(f, backend, dtype) for f in fs)), dense_kron(*fs), kron_model(fs)


def kron_eigen_bound(factors):
    """Rounding errors of one entry of ``K diag(S) Kᵀ X`` for ``K = ⊗Kⱼ`` with ``Kⱼ`` of ``factors``' sizes:
    two chains of mode products (``2 Σ nⱼ``), the scaling, and the rounding of the bases, ``S``
    and ``X`` to the dtype."""
    return 2 * sum(f.shape[0] for f in factors) + 2 * len(factors) + 3


def test_vec_convention(backend, dtype):
    # Kron(A, B) @ vec(X) = vec(A X Bᵀ), row-major vec (design.md §2)
    rng = np.random.default_rng(0)
    A, B, X = rng.standard_normal((3, 4)), rng.standard_normal((5, 2)), rng.standard_normal((4, 2))
    op = kl.Kron(convert(A, backend, dtype), convert(B, backend, dtype))
    got = op @ convert(X.reshape(-1), backend, dtype)
    x = X.reshape(-1)
    assert_close(got, (A @ X @ B.T).reshape(-1), dtype=dtype,
                 bound=kron_bound([A, B]) * product_condition(np.kron(A, B), x), label="Kron(2 rectangular)")


def test_structured_methods(backend, dtype):
    rng = np.random.default_rng(1)
    fs = [spd(rng, n) for n in (3, 2, 4)]
    dense = dense_kron(*fs)
    op = kl.Kron(*(convert(f, backend, dtype) for f in fs))
    label = "Kron(3 SPD)"
    assert_close(np.array([to_numpy(op.logdet())]), [np.linalg.slogdet(dense)[1]], dtype=dtype,
                 bound=logdet_bound(dense), label=label)
    # traces: sums of nⱼ positive terms, then a product of 3; entries of the diagonal: products
    assert_close(np.array([to_numpy(op.trace())]), [np.trace(dense)], dtype=dtype,
                 bound=sum(len(f) for f in fs) + 2 * len(fs), label=label)
    assert_close(op.diagonal(), np.diag(dense), dtype=dtype, bound=2 * len(fs), label=label)
    eig = op.eigh()
    assert isinstance(eig, kl.KronEigen) and eig.orthonormal
    # eigh is backward stable (error ~ nⱼ·u·‖Fⱼ‖ per factor), then K diag(w) Kᵀ is applied
    absolute = dense_kron(*(abs(q) @ np.diag(w) @ abs(q).T for w, q in map(np.linalg.eigh, fs)))
    eigh_bound = kron_eigen_bound(fs) * product_condition(dense, np.eye(len(dense)), absolute)
    assert_close(eig.to_dense(), dense, dtype=dtype, bound=eigh_bound, label=label)
    damped = eig.shift(0.3).inv()
    shifted = dense + 0.3 * np.eye(len(dense))
    assert_close(damped.to_dense(), np.linalg.inv(shifted), dtype=dtype,
                 bound=eigh_bound * np.linalg.cond(shifted), label=label)


def test_logdet_of_a_negative_determinant_raises_and_of_a_positive_one_is_exact():
    rng = np.random.default_rng(2)
    A, B = spd(rng, 3), spd(rng, 2)
    flip = np.diag([-1.0, 1.0, 1.0])
    # det(F₁ ⊗ F₂) = det(F₁)^{n₂} det(F₂)^{n₁}: negative for det F₁ < 0 and n₂ odd
    with pytest.raises(np.linalg.LinAlgError, match="Kron.logdet: the determinant is not positive"):
        kl.Kron(flip @ A, spd(rng, 3)).logdet()
    # ... and positive for n₂ even, although a factor has a negative determinant
    dense = np.kron(flip @ A, B)
    sign, expected = np.linalg.slogdet(dense)
    assert sign == 1.0
    assert_close(np.array([kl.Kron(flip @ A, B).logdet()]), [expected], dtype="float64", bound=logdet_bound(dense),
                 label="Kron(logdet)")


def test_inv_names_singular_factor():
    with pytest.raises(np.linalg.LinAlgError, match=r"factors\[1\] is singular"):
        kl.Kron(np.eye(2), np.zeros((3, 3))).inv()


def test_square_required_message():
    with pytest.raises(ValueError, match=r"Kron.inv: factors\[0\] must be square, got shape \(2, 3\)"):
        kl.Kron(np.ones((2, 3))).inv()


def test_eigh_rejects_nonsymmetric_factor():
    with pytest.raises(ValueError, match=r"factors\[0\]: expected a symmetric matrix"):
        kl.Kron(np.array([[1.0, 2.0], [0.0, 1.0]]), np.eye(2)).eigh()


@pytest.mark.parametrize(
    ("factors", "error", "message"),
    [
        ((), ValueError, "factors: expected at least one factor, got none"),
        ((np.ones(3),), ValueError, r"factors\[0\]: expected a 2-D matrix, got an array of shape \(3,\)"),
        ((np.eye(2), np.full((2, 2), np.nan)), ValueError, r"factors\[1\]: expected finite entries"),
        ((np.eye(2, dtype=np.int64),), TypeError, r"factors\[0\]: expected dtype float32 or float64, got int64"),
        (([[1.0]],), TypeError, r"factors\[0\]: expected a NumPy array or a torch tensor, got list"),
    ],
)
def test_construction_errors(factors, error, message):
    with pytest.raises(error, match=message):
        kl.Kron(*factors)


def test_mixed_backends_error_names_arguments():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"mixed array backends .*factors\[0\] is numpy, factors\[1\] is torch"):
        kl.Kron(np.eye(2), torch.eye(2, dtype=torch.float64))


def test_float32_stays_float32():
    A = np.eye(3, dtype=np.float32)
    out = kl.Kron(A, A) @ np.ones(9, dtype=np.float32)
    assert out.dtype == np.float32


# -- properties (hypothesis) ----------------------------------------------------------------
dims = st.integers(1, 4)


@st.composite
def matrices(draw, rows=None, cols=None):
    r = draw(dims) if rows is None else rows
    c = draw(dims) if cols is None else cols
    seed = draw(st.integers(0, 2**31))
    return np.random.default_rng(seed).standard_normal((r, c))


@given(matrices(), matrices(), st.data())
def test_mixed_product_rule(A, B, data):
    # (A ⊗ B)(C ⊗ D) = (AC) ⊗ (BD)
    C = data.draw(matrices(rows=A.shape[1]))
    D = data.draw(matrices(rows=B.shape[1]))
    lhs = (kl.Kron(A, B) @ kl.Kron(C, D)).to_dense()
    # both sides sum products of A, B, C, D entries: κ from |A||C| ⊗ |B||D|
    kappa = np.linalg.norm(np.kron(abs(A) @ abs(C), abs(B) @ abs(D))) / np.linalg.norm(np.kron(A @ C, B @ D))
    assert_close(lhs, np.kron(A @ C, B @ D), dtype="float64",
                 bound=2 * (kron_bound([C, D]) + kron_bound([A, B])) * kappa, label="Kron(properties)")


@given(st.lists(matrices(), min_size=1, max_size=4), st.integers(1, 3), st.integers(0, 2**31))
def test_n_factor_associativity_and_shape(factors, k, seed):
    op = kl.Kron(*factors)
    dense = dense_kron(*factors)
    assert op.shape == dense.shape
    X = np.random.default_rng(seed).standard_normal((dense.shape[1], k))
    bound = kron_bound(factors) * product_condition(dense, X)
    assert_close(op @ X, dense @ X, dtype="float64", bound=bound, label="Kron(properties)")
    # grouping: (F₁ ⊗ F₂) ⊗ F₃ = F₁ ⊗ (F₂ ⊗ F₃)
    if len(factors) >= 2:
        grouped = kl.Kron(np.kron(factors[0], factors[1]), *factors[2:])
        assert_close(grouped @ X, dense @ X, dtype="float64", bound=bound, label="Kron(properties)")


@given(st.lists(matrices(), min_size=1, max_size=3))
def test_transpose_property(factors):
    # entries are products of f numbers, computed in another order by np.kron: 2(f − 1) roundings
    assert_close(kl.Kron(*factors).T.to_dense(), dense_kron(*factors).T, dtype="float64",
                 bound=max(2 * (len(factors) - 1), 1), label="Kron(properties)")


@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.integers(0, 2**31))
def test_inverse_of_kron_is_kron_of_inverses(sizes, seed):
    rng = np.random.default_rng(seed)
    fs = [rng.standard_normal((n, n)) + 3 * n * np.eye(n) for n in sizes]
    inv = kl.Kron(*fs).inv()
    # each factor inverted (backward stable, n·cond(Fⱼ)), then multiplied out
    bound = sum(n * np.linalg.cond(f) for n, f in zip(sizes, fs, strict=True)) + 2 * len(fs)
    assert_close(inv.to_dense(), dense_kron(*(np.linalg.inv(f) for f in fs)), dtype="float64",
                 bound=2 * bound, label="Kron(properties)")
    identity = np.eye(inv.shape[0])
    assert_close(inv.to_dense() @ dense_kron(*fs), identity, dtype="float64",
                 bound=bound * np.linalg.cond(dense_kron(*fs)), label="Kron(properties)")


@pytest.mark.parametrize("method", ["inv", "eigh", "logdet", "trace", "diagonal"])
def test_square_required_names_the_method(method):
    with pytest.raises(ValueError, match=rf"^Kron\.{method}: factors\[1\] must be square, got shape \(2, 3\)$"):
        getattr(kl.Kron(np.eye(2), np.ones((2, 3))), method)()


def test_logdet_of_a_singular_factor_raises():
    with pytest.raises(np.linalg.LinAlgError, match="^Kron.logdet: the determinant is not positive$"):
        kl.Kron(np.eye(2), np.zeros((2, 2))).logdet()


def test_eigh_failure_names_the_factor(monkeypatch):
    import array_api_compat.numpy as xp_numpy

    real = xp_numpy.linalg.eigh
    monkeypatch.setattr(xp_numpy.linalg, "eigh",
                        lambda a: (np.full(len(a), np.nan), np.eye(len(a))) if len(a) == 3 else real(a))
    with pytest.raises(np.linalg.LinAlgError, match=r"^factors\[1\]: eigendecomposition of the \(3, 3\) matrix"):
        kl.Kron(np.eye(2), np.eye(3)).eigh()


def test_repeated_operands_take_the_direct_path_with_the_same_result():
    # the second product of an operand kind runs its remembered program: the same GEMMs, so the
    # same bits, for every layout, dtype promotion and the 1-D case; the checks still apply to
    # every other kind
    rng = np.random.default_rng(81)
    A, B = rng.standard_normal((3, 4)), rng.standard_normal((5, 2))
    for op_dtype in ("float32", "float64"):
        op = kl.Kron(A.astype(op_dtype), B.astype(op_dtype))
        dense = np.kron(A.astype(op_dtype), B.astype(op_dtype)).astype(np.float64)  # the factors it holds
        for x_dtype in ("float32", "float64"):
            X = rng.standard_normal((8, 6)).astype(x_dtype)
            operands = [X, np.asfortranarray(X), X[:, ::2], X[:, 0], X[:, :1]]
            for Z in operands:
                first = op @ Z
                again = op @ Z.copy(order="A")
                assert again.dtype == first.dtype == np.result_type(op_dtype, x_dtype)
                np.testing.assert_array_equal(again, first)
                dtype = "float32" if first.dtype == np.float32 else "float64"
                Z64 = Z.astype(np.float64)
                assert_close(again, dense @ Z64, dtype=dtype, label="Kron",
                             bound=kron_bound([A, B]) * product_condition(dense, Z64))
    assert 0 < len(op._direct) <= 2 * 2 * len(operands)  # each operand and its copy, in two dtypes
    with pytest.raises(ValueError, match=r"x: expected shape \(8,\) or \(8, k\), got \(9, 6\)"):
        op @ np.ones((9, 6))
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        op @ np.ones((8, 6), dtype=np.int64)
