import subprocess
import sys

import numpy as np
import pytest

import kronlin as kl


def test_algebra_errors():
    a, b = kl.Kron(np.eye(2)), kl.Kron(np.eye(3))
    with pytest.raises(ValueError, match=r"operator sum: expected operands of one shape, got \[\(2, 2\), \(3, 3\)\]"):
        a + b
    with pytest.raises(ValueError, match=r"operator product: inner dimensions differ, \(2, 2\) @ \(3, 3\)"):
        a @ b
    with pytest.raises(TypeError):
        a * np.ones(2)


def test_repr_names_backend_dtype_and_device():
    op = kl.Kron(np.eye(2, dtype=np.float32), np.eye(3, dtype=np.float32))
    assert repr(op) == "<6x6 Kron (numpy, float32, cpu)>"


def test_mixed_dtype_factors_promote():
    op = kl.Kron(np.eye(2, dtype=np.float32), np.eye(2))
    assert op.dtype == np.float64


def test_import_without_torch_and_never_imports_torch():
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, *args):\n"
        "        if name.split('.')[0] == 'torch': raise ImportError('torch blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np, kronlin as kl\n"
        "op = kl.Kron(np.eye(2), np.eye(3)).eigh().shift(1.0).inv()\n"
        "assert np.allclose(op @ np.ones(6), 0.5)\n"
        "kl.BlockTridiagInverse([(np.eye(2), np.eye(2))] * 2, [(0.1 * np.eye(2), 0.1 * np.eye(2))])\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys, kronlin; assert 'torch' not in sys.modules and 'kronlin_nn' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_device_mismatch_is_reported():
    torch = pytest.importorskip("torch")
    op = kl.Kron(torch.eye(2, dtype=torch.float64))
    meta = torch.ones(2, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="x: expected an array on device cpu, got meta"):
        op @ meta
