"""Dense oracles for K-FAC tests: Jacobians, the exact GGN JᵀF_RJ, tiny networks."""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.func import functional_call, jacrev

LOSS_CLASSES = {"mse": nn.MSELoss, "bce": nn.BCEWithLogitsLoss, "ce": nn.CrossEntropyLoss}


def assert_warned_here(caught, filename) -> None:
    """Every warning in ``caught`` points at ``filename`` (the caller of ``opt.step``).

    Not checkable under mutation testing: mutmut's trampolines (``MUTANT_UNDER_TEST`` set) add
    stack frames between the caller and the warning, so its stacklevel mutants are listed in
    tools/mutation/kronlin_nn-equivalent.toml instead.
    """
    if "MUTANT_UNDER_TEST" in os.environ:
        return
    assert [w.filename for w in caught] == [filename]


def tiny_mlp(sizes, act=nn.Tanh, bias=True, seed=0, dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    mods = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        mods.append(nn.Linear(a, b, bias=bias if isinstance(bias, bool) else bias[i]))
        if i < len(sizes) - 2:
            mods.append(act())
    return nn.Sequential(*mods).to(dtype)


def data(kind, n, d_in, d_out, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=dtype)
    if kind == "mse":
        y = torch.randn(n, d_out, generator=g, dtype=dtype)
    elif kind == "bce":
        y = torch.rand(n, d_out, generator=g, dtype=dtype).round()
    else:
        y = torch.randint(0, d_out, (n,), generator=g)
    return x, y


def linears(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def layer_matrix(m: nn.Linear) -> torch.Tensor:
    """[W | b] of shape (d_out, d_in + 1) (or W without bias)."""
    if m.bias is None:
        return m.weight.detach()
    return torch.cat([m.weight.detach(), m.bias.detach()[:, None]], 1)


def flat_params(model) -> torch.Tensor:
    return torch.cat([layer_matrix(m).reshape(-1) for m in linears(model)])


def set_flat_params(model, flat) -> None:
    """Write the row-major [W | b] vector ``flat`` (:func:`flat_params`'s layout) into ``model``."""
    offset = 0
    with torch.no_grad():
        for m in linears(model):
            rows, cols = m.weight.shape[0], m.weight.shape[1] + (m.bias is not None)
            M = flat[offset:offset + rows * cols].reshape(rows, cols)
            offset += rows * cols
            m.weight.copy_(M[:, : m.weight.shape[1]])
            if m.bias is not None:
                m.bias.copy_(M[:, -1])


def flat_gradient(model, loss_fn, x, y, eta) -> torch.Tensor:
    """∇h = ∇loss + ηθ in :func:`flat_params`'s layout (``.grad`` left zeroed)."""
    model.zero_grad()
    loss_fn(model(x), y).backward()
    grads = []
    for m in linears(model):
        parts = [m.weight.grad] + ([m.bias.grad[:, None]] if m.bias is not None else [])
        grads.append(torch.cat(parts, 1).reshape(-1))
    model.zero_grad()
    return torch.cat(grads) + eta * flat_params(model)


def _param_dict(model, flat):
    params, offset = {}, 0
    names = {id(p): n for n, p in model.named_parameters()}
    for m in linears(model):
        rows, cols = m.weight.shape[0], m.weight.shape[1] + (m.bias is not None)
        M = flat[offset:offset + rows * cols].reshape(rows, cols)
        offset += rows * cols
        params[names[id(m.weight)]] = M[:, : m.weight.shape[1]]
        if m.bias is not None:
            params[names[id(m.bias)]] = M[:, -1]
    return params


def output_jacobian(model, x) -> torch.Tensor:
    """J[n, j, p] = ∂z_{n,j}/∂θ_p with θ the row-major [W|b] layout; shape (n, D, P)."""
    def f(flat):
        return functional_call(model, _param_dict(model, flat), (x,)).reshape(x.shape[0], -1)

    return jacrev(f)(flat_params(model))


def output_fisher(kind, z) -> torch.Tensor:
    """F_R per case, shape (n, D, D)."""
    D = z.shape[1]
    if kind == "mse":
        return 2 * torch.eye(D, dtype=z.dtype).expand(z.shape[0], D, D)
    if kind == "bce":
        p = torch.sigmoid(z)
        return torch.diag_embed(p * (1 - p))
    p = torch.softmax(z, 1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def reduction_scale(kind, reduction, n, D):
    if reduction == "sum":
        return 1.0
    return 1.0 / n if kind == "ce" else 1.0 / (n * D)


def dense_ggn(model, kind, reduction, x) -> torch.Tensor:
    """The exact GGN (= Fisher) s Σ_n J_nᵀ F_R J_n of the objective, (P, P)."""
    with torch.no_grad():
        z = model(x).reshape(x.shape[0], -1)
    J = output_jacobian(model, x)
    s = reduction_scale(kind, reduction, x.shape[0], z.shape[1])
    return s * torch.einsum("nip,nij,njq->pq", J, output_fisher(kind, z), J)


def layer_slices(model):
    out, offset = [], 0
    for m in linears(model):
        size = m.weight.shape[0] * (m.weight.shape[1] + (m.bias is not None))
        out.append(slice(offset, offset + size))
        offset += size
    return out


def output_grad_jacobians(model, x):
    """Per layer i, ∂z/∂s_i per case: list of (n, D, d_out_i) (via zero perturbations of s_i)."""
    layers = linears(model)

    def f(perturbations):
        handles = [
            m.register_forward_hook(lambda mod, args, out, e=e: out + e)
            for m, e in zip(layers, perturbations, strict=True)
        ]
        try:
            return model(x).reshape(x.shape[0], -1)
        finally:
            for h in handles:
                h.remove()

    zeros = tuple(torch.zeros(x.shape[0], m.out_features, dtype=x.dtype) for m in layers)
    jac = jacrev(f)(zeros)  # tuple of (n, D, n, d_i)
    idx = torch.arange(x.shape[0])
    return [J[idx, :, idx, :] for J in jac]


class SkipNet(nn.Module):
    """3 → 4 → 4 → 3 with a skip connection: layer 3 sees the outputs of layers 1 and 2 (not a chain)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        return self.l3(torch.tanh(self.l2(h)) + h)


class RepeatColumns(nn.Module):
    """Output column ``j`` repeated ``repeats[j]`` times: integer per-output weights made cases."""

    def __init__(self, repeats):
        super().__init__()
        self.repeats = repeats

    def forward(self, z):
        return z.repeat_interleave(self.repeats, dim=1)


# -- oracles for any block type: Jacobians per parameter tensor --------------------------------
def parameter_jacobians(model, x) -> dict:
    """{name: J} with J[n, j, ...] = ∂z_{n,j}/∂p[...] for every trainable parameter p."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def f(ps):
        return functional_call(model, ps, (x,)).reshape(x.shape[0], -1)

    return jacrev(f)(params)


def kronecker_jacobian(J_weight, J_bias=None) -> torch.Tensor:
    """The Jacobian w.r.t. the row-major [W.reshape(d_out, -1) | b] of a layer: (n, D, P)."""
    n, D, d_out = J_weight.shape[:3]
    parts = [J_weight.reshape(n, D, d_out, -1)]
    if J_bias is not None:
        parts.append(J_bias[..., None])
    return torch.cat(parts, -1).reshape(n, D, -1)


def exact_fisher(J, kind, reduction, z) -> torch.Tensor:
    """s Σ_n J_nᵀ F_R J_n for a Jacobian J of shape (n, D, P) and outputs z (n, D)."""
    s = reduction_scale(kind, reduction, z.shape[0], z.shape[1])
    return s * torch.einsum("nip,nij,njq->pq", J, output_fisher(kind, z), J)


def model_outputs(model, x):
    with torch.no_grad():
        return model(x).reshape(x.shape[0], -1)


def kron_quadratic_form(A, G, V) -> torch.Tensor:
    """vec(V)ᵀ Kron(G, A) vec(V) = Σ V ⊙ (G V A) for a row-major V of shape (d_out, d_a)."""
    if A.ndim == 1:  # a diagonal factor
        return (V * (G @ V * A)).sum()
    return (V * (G @ V @ A)).sum()


def layout_jacobian(model, blocks, x) -> torch.Tensor:
    """∂z/∂θ with θ the blocks' segments in order: row-major [W.reshape(d_out, -1) | b] for the
    linear and convolution blocks, the parameters flattened and concatenated otherwise; (n, D, P)."""
    from kronlin_nn.blocks import KroneckerBlock

    J = parameter_jacobians(model, x)
    names = {id(p): n for n, p in model.named_parameters()}
    n, D = x.shape[0], next(iter(J.values())).shape[1]
    columns = []
    for b in blocks:
        Js = [J[names[id(p)]] for p in b.params if p is not None]
        if isinstance(b, KroneckerBlock):
            columns.append(kronecker_jacobian(*Js))
        else:
            columns.append(torch.cat([j.reshape(n, D, -1) for j in Js], 2))
    return torch.cat(columns, 2)
