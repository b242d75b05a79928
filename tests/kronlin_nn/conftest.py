"""Fixtures shared by the kronlin_nn tests."""

import pytest
import torch

# torch.optim imports torch._dynamo on the first optimizer construction (seconds), and the
# quadratic model loads torch's forward-mode AD rules on its first product: done here, once,
# at collection, so that mutmut's workers (forked after collection) do not each pay it
from torch import _dynamo  # noqa: F401

from kronlin_nn.quadratic import _load_forward_ad_rules

_load_forward_ad_rules()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads add only synchronisation (10x slower on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
