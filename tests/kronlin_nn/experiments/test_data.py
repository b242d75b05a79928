import gzip
import math

import numpy as np
import pytest
import torch

from kronlin_nn.experiments.data import (
    _render,
    load_digits,
    load_mnist_idx,
    load_mnist_subset,
    load_problem,
    make_curves,
    read_idx,
)


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(7, 4, 5), dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips_uint8_images(tmp_path, images, compress):
    raw = _idx_bytes(images, 0x08)
    path = tmp_path / "imgs"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    np.testing.assert_array_equal(read_idx(path), images)


def test_read_idx_big_endian_int32_and_float(tmp_path):
    labels = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "labels").write_bytes(_idx_bytes(labels, 0x0C))
    out = read_idx(tmp_path / "labels")
    assert out.dtype == np.int32 and out.tolist() == [1, -2, 70000]
    floats = np.linspace(0, 1, 6, dtype=">f8").reshape(2, 3)
    (tmp_path / "floats").write_bytes(_idx_bytes(floats, 0x0E))
    np.testing.assert_array_equal(read_idx(tmp_path / "floats"), floats)


def test_read_idx_rejects_bad_files(tmp_path, images):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x03" + bytes(20))
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx_bytes(images, 0x08)[:-3])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize(
    "name", ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz", "train-images.idx3-ubyte"]
)
def test_load_mnist_idx(tmp_path, images, name):
    raw = _idx_bytes(images, 0x08)
    (tmp_path / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    data = load_mnist_idx(tmp_path)
    assert data.x.dtype == torch.float32 and data.x.shape == (7, 20)
    assert data.image_shape == (4, 5)
    np.testing.assert_allclose(data.x.numpy(), images.reshape(7, 20) / 255.0, rtol=1e-6)
    subset = load_problem("mnist", data_dir=tmp_path, n_train=3)
    assert subset.x.shape == (3, 20) and subset.name == "mnist-3"


def test_load_mnist_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist_idx(tmp_path)
    labels = np.zeros(5, dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(labels, 0x08))
    with pytest.raises(ValueError, match="3-D uint8"):
        load_mnist_idx(tmp_path)


def test_embedded_mnist_subset():
    data = load_mnist_subset()
    assert data.x.shape == (5000, 784) and data.x.dtype == torch.float32
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    assert data.image_shape == (28, 28)


def test_digits():
    data = load_digits()
    assert data.x.shape == (1797, 64) and data.image_shape == (8, 8)
    assert data.x.min() == 0.0 and data.x.max() == 1.0


def test_curves_shape_range_and_seed():
    a = make_curves(50, seed=1)
    assert a.x.shape == (50, 784) and a.x.dtype == torch.float32
    assert a.x.min() >= 0.0 and a.x.max() <= 1.0
    assert torch.equal(a.x, make_curves(50, seed=1).x)
    assert not torch.equal(a.x, make_curves(50, seed=2).x)
    # thin strokes: a few percent of the pixels are lit
    assert 0.02 < (a.x > 0.5).float().mean() < 0.2


def test_curves_pass_through_their_three_points():
    n, seed, stroke = 20, 3, 0.8
    points = np.random.default_rng(seed).uniform(2.0, 25.0, size=(n, 3, 2))
    images = make_curves(n, seed=seed, stroke=stroke).x.view(n, 28, 28)
    # the pixel nearest a sampled point is at most (0.5, 0.5) from it
    floor = math.exp(-0.5 / (2 * stroke**2))
    for image, triple in zip(images, points, strict=True):
        for r, c in np.rint(triple).astype(int):
            assert image[r, c] >= floor - 1e-6


def test_render_matches_the_dense_formula():
    torch.manual_seed(0)
    centres = torch.rand(5, 30, 2, dtype=torch.float64) * 27
    size, stroke = 28, 0.8
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    pixels = torch.stack([rows.ravel(), cols.ravel()], dim=1).double()
    d2 = ((pixels[None, :, None, :] - centres[:, None, :, :]) ** 2).sum(-1)
    dense = torch.exp(-d2 / (2 * stroke**2)).amax(-1)
    # only contributions from beyond the 7×7 window (< exp(-3.5²/1.28) ≈ 7e-5) are dropped
    torch.testing.assert_close(_render(centres, size, stroke).double(), dense, atol=1e-4, rtol=0)


def test_load_problem_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown problem"):
        load_problem("faces")
    with pytest.raises(ValueError, match="data_dir"):
        load_problem("digits", data_dir=tmp_path)
    with pytest.raises(ValueError, match="n_train"):
        load_problem("digits", n_train=0)
    assert load_problem("curves", n_train=12).x.shape == (12, 784)
    assert load_problem("digits", n_train=100).x.shape == (100, 64)
