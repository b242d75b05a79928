"""The three forms of KFAC.step, gradient accumulation, AMP and gradient clipping (issue 11)."""

import copy
import io
import math

import pytest
import torch
from torch import nn

from kronlin_nn import KFAC

from .helpers import LOSS_CLASSES, data, flat_params, tiny_mlp

SIZES = [3, 4, 5, 3]


def _rows(x, y, k, size=16):
    rows = slice(size * (k % 4), size * (k % 4) + size)  # a different batch each step
    return x[rows], y[rows]


def _form_a(opt, model, loss_fn, x, y):
    return opt.step(x, y)


def _form_b(opt, model, loss_fn, x, y):
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    return opt.step()


def _form_c(opt, model, loss_fn, x, y):
    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    returned = opt.step(closure)
    assert torch.is_tensor(returned) and returned.requires_grad  # what the closure returned
    return opt.last_step


FORMS = {"a": _form_a, "b": _form_b, "c": _form_c}


def _train(form, approx, fisher, kind="ce", steps=12, **kw):
    x, y = data(kind, 64, SIZES[0], SIZES[-1])
    model = tiny_mlp(SIZES)
    loss_fn = LOSS_CLASSES[kind]()
    opt = KFAC(model, loss_fn, approx=approx, fisher=fisher, seed=1, stats_fraction=0.5,
               inverse_every=5, gamma_every=10, **kw)
    history = [FORMS[form](opt, model, loss_fn, *_rows(x, y, k)) for k in range(steps)]
    return model, opt, history, loss_fn, x, y


@pytest.mark.parametrize("fisher", ["mc", "empirical", "exact"])
@pytest.mark.parametrize("approx", ["blockdiag", "tridiag"])
def test_the_three_forms_give_the_same_iteration(approx, fisher):
    """step(x, y), the user's forward/backward then step(), and step(closure): one iteration."""
    runs = {form: _train(form, approx, fisher) for form in FORMS}
    model_a, _, history_a, *_ = runs["a"]
    assert any(s["refreshed"] for s in history_a[4:]) and any(s["rho"] == s["rho"]
                                                              for s in history_a)
    for form in "bc":
        model, _, history, *_ = runs[form]
        for s, t in zip(history, history_a, strict=True):
            assert s.keys() == t.keys()
            for key in s:
                assert s[key] == pytest.approx(t[key], rel=1e-12, abs=1e-15, nan_ok=True), key
        torch.testing.assert_close(flat_params(model), flat_params(model_a), rtol=1e-12, atol=1e-14)
        # .grad populated after every form: the last batch's loss gradient, the same in each
        for p, q in zip(model.parameters(), model_a.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-15)


def test_form_a_sets_grad_to_the_loss_gradient():
    model, loss_fn = tiny_mlp(SIZES), nn.CrossEntropyLoss()
    x, y = data("ce", 32, SIZES[0], SIZES[-1])
    twin = copy.deepcopy(model)
    loss_fn(twin(x), y).backward()
    KFAC(model, loss_fn, damping=1.0, seed=0).step(x, y)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-13, atol=0)


# -- gradient accumulation ---------------------------------------------------------------------
def _accumulate(opt, model, loss_fn, parts, shares):
    opt.zero_grad()
    for (x, y), share in zip(parts, shares, strict=True):
        (loss_fn(model(x), y) * share).backward()
    return opt.step()


@pytest.mark.parametrize(("loss", "sizes"), [("ce-mean", (16, 16, 16)), ("ce-mean", (8, 24, 16)),
                                             ("mse-sum", (10, 20, 18)), ("ce-masked", (16, 16, 16))])
def test_accumulating_three_micro_batches_is_one_step_on_their_union(loss, sizes):
    """Gradient and statistics of the union batch, S₁ and S₂ spanning several micro-batches."""
    kind, reduction = loss.split("-")
    x, y = data(kind, sum(sizes), SIZES[0], SIZES[-1])
    if reduction == "masked":
        y[torch.tensor([1, 2, 5, 17, 20, 40])] = -100  # unequal numbers of valid cases
        reduction = "mean"
    loss_fn = LOSS_CLASSES[kind](reduction=reduction)
    model, twin = tiny_mlp(SIZES), tiny_mlp(SIZES)
    kw = dict(seed=2, stats_fraction=0.4, quad_fraction=0.6, quad_min_cases=1, fisher="mc")
    union, micro = KFAC(model, loss_fn, **kw), KFAC(twin, loss_fn, **kw)
    cuts = torch.tensor(sizes).cumsum(0).tolist()
    parts = [(x[a:b], y[a:b]) for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
    if reduction == "sum":
        shares = [1.0] * 3
    else:  # each micro-batch's share of the union's mean: its number of valid cases
        valid = [(yy != -100).sum().item() for _, yy in parts]
        shares = [v / sum(valid) for v in valid]
    for _ in range(6):
        expected = union.step(x, y)
        got = _accumulate(micro, twin, loss_fn, parts, shares)
        for key in expected:
            assert got[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-13, nan_ok=True), key
    torch.testing.assert_close(flat_params(twin), flat_params(model), rtol=1e-9, atol=1e-12)
    union_stats, micro_stats = union.state_dict()["statistics"], micro.state_dict()["statistics"]
    for a, b in zip(union_stats["A"] + union_stats["G"], micro_stats["A"] + micro_stats["G"],
                    strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


def test_micro_batch_losses_with_the_wrong_weights_are_refused():
    x, y = data("ce", 48, SIZES[0], SIZES[-1])
    model, loss_fn = tiny_mlp(SIZES), nn.CrossEntropyLoss()
    opt = KFAC(model, loss_fn, seed=0)
    parts = [(x[:16], y[:16]), (x[16:], y[16:])]  # sizes 16 and 32: shares 1/3 and 2/3
    with pytest.raises(ValueError, match=r"weights \[0\.5, 0\.5\].*needs them with the weights "
                                         r"\[0\.333333, 0\.666667\]"):
        _accumulate(opt, model, loss_fn, parts, [0.5, 0.5])
    with pytest.raises(ValueError, match="backpropagate the loss itself"):
        _accumulate(opt, model, loss_fn, [(x, y)], [2.0])
    params = flat_params(model)
    assert opt.iteration == 0 and torch.equal(flat_params(model), params)
    assert _accumulate(opt, model, loss_fn, parts, [1 / 3, 2 / 3])["accepted"]


def test_gradients_left_from_before_the_last_step_are_refused():
    x, y = data("ce", 32, SIZES[0], SIZES[-1])
    model, loss_fn = tiny_mlp(SIZES), nn.CrossEntropyLoss()
    opt = KFAC(model, loss_fn, seed=0)
    _form_b(opt, model, loss_fn, x, y)
    loss_fn(model(x), y).backward()  # no zero_grad: .grad adds the last step's gradient
    with pytest.raises(ValueError, match="zero_grad"):
        opt.step()
    # zero_grad may come anywhere before the backward pass, also after the forward pass
    out = model(x)
    opt.zero_grad()
    loss_fn(out, y).backward()
    assert opt.step()["accepted"]
    # model.zero_grad(set_to_none=False) resets the gradients too
    loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=False)
    loss_fn(model(x), y).backward()
    assert opt.step()["accepted"]


def test_evaluation_passes_between_backward_and_step_change_nothing():
    x, y = data("ce", 32, SIZES[0], SIZES[-1])
    runs = []
    for evaluate in (False, True):
        model, loss_fn = tiny_mlp(SIZES), nn.CrossEntropyLoss()
        opt = KFAC(model, loss_fn, seed=0)
        for _ in range(4):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            if evaluate:
                with torch.no_grad():
                    loss_fn(model(x[:5]), y[:5])
                model(x[:7]).sum()  # with gradients, never backpropagated
                loss_fn(model(x[:9]), y[:9]).item()  # a loss never backpropagated
            opt.step()
        runs.append(flat_params(model))
    assert torch.equal(runs[0], runs[1])


# -- guiding errors ----------------------------------------------------------------------------
def test_a_step_without_a_recorded_forward_pass_says_what_to_do():
    x, y = data("ce", 16, SIZES[0], SIZES[-1])
    model, loss_fn = tiny_mlp(SIZES), nn.CrossEntropyLoss()
    opt = KFAC(model, loss_fn, seed=0)

    def passes_then_step(passes, match, error=ValueError, **kw):
        opt.zero_grad()
        kept = passes()  # keep the outputs referenced, as a loop's variables do
        with pytest.raises(error, match=match):
            opt.step(**kw)
        return kept

    passes_then_step(lambda: None, r"needs a recorded forward pass.*loss.backward\(\)")
    with torch.no_grad():  # passes without gradients are not recorded
        passes_then_step(lambda: loss_fn(model(x), y), "needs a recorded forward pass")
    passes_then_step(lambda: model(x), "loss_fn was not called on the recorded model output")
    passes_then_step(lambda: loss_fn(model(x), y), "not backpropagated")
    passes_then_step(lambda: loss_fn(model(x) * 2, y).backward(), "not the output of a recorded")
    passes_then_step(lambda: nn.CrossEntropyLoss()(model(x), y).backward(),  # another module
                     "not called on the recorded model output")
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    with pytest.raises(ValueError, match=r"opt.step\(\) to take that one"):
        opt.step(x, y)
    with pytest.raises(TypeError, match=r"step\(inputs, targets\)"):
        opt.step(x)
    assert opt.iteration == 0


def test_copies_and_pickles_of_the_model_do_not_record():
    x, y = data("ce", 16, SIZES[0], SIZES[-1])
    model, loss_fn = tiny_mlp(SIZES), nn.CrossEntropyLoss()
    opt = KFAC(model, loss_fn, seed=0)
    copy_ = copy.deepcopy(model)
    other = nn.CrossEntropyLoss()
    other(copy_(x), y).backward()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    other(loaded(x), y).backward()
    with pytest.raises(ValueError, match="needs a recorded forward pass"):
        opt.step()
    loss_fn(copy_(x), y).backward()  # KFAC's loss on a copy's output: not its model
    with pytest.raises(ValueError, match="not the output of a recorded model"):
        opt.step()


# -- AMP ---------------------------------------------------------------------------------------
def _digits(n=256):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return torch.tensor(X[:n] / 16, dtype=torch.float32), torch.tensor(y[:n])


def _classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def _amp_step(opt, model, loss_fn, scaler, x, y, clip=None):
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(model(x), y)
    scaler.scale(loss).backward()
    if clip is not None:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    scaler.step(opt)
    scaler.update()
    return opt.last_step


def test_amp_bfloat16_autocast_with_a_grad_scaler():
    """Statistics and quadratic model on unscaled float32 values; .grad unscaled after the step."""
    x, y = _digits()
    model, loss_fn = _classifier(), nn.CrossEntropyLoss()
    reference = copy.deepcopy(model)
    opt = KFAC(model, loss_fn, seed=0, damping=1e-2)
    ref_opt = KFAC(reference, loss_fn, seed=0, damping=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    first = _amp_step(opt, model, loss_fn, scaler, x, y)
    expected = ref_opt.step(x, y)
    # K-FAC's own passes run in float32: the same statistics as without autocast, exactly
    stats, ref_stats = opt.state_dict()["statistics"], ref_opt.state_dict()["statistics"]
    for a, b in zip(stats["A"] + stats["G"], ref_stats["A"] + ref_stats["G"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert first["loss"] == pytest.approx(expected["loss"], rel=1e-2)  # bfloat16 forward
    assert first["alpha"] == pytest.approx(expected["alpha"], rel=0.05)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0.05, atol=2e-3)  # unscaled
    history = [_amp_step(opt, model, loss_fn, scaler, x, y) for _ in range(15)]
    history.append(_amp_step(opt, model, loss_fn, scaler, x, y, clip=10.0))  # unscale_ first
    assert all(s["accepted"] for s in history)
    assert history[-1]["loss"] < 0.5 * first["loss"]


def test_a_step_whose_scaled_gradients_overflow_is_skipped():
    """The GradScaler's skip: parameters, statistics, λ and the iteration count untouched."""
    x, y = _digits(64)
    model, loss_fn = _classifier(), nn.CrossEntropyLoss()
    opt = KFAC(model, loss_fn, seed=0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    _amp_step(opt, model, loss_fn, scaler, x, y)
    state, params = copy.deepcopy(opt.state_dict()), flat_params(model)
    bad = x.clone()
    bad[0, 0] = math.inf  # non-finite scaled gradients
    skipped = _amp_step(opt, model, loss_fn, scaler, bad, y)
    assert math.isnan(skipped.pop("loss")) and math.isnan(skipped.pop("alpha"))
    assert math.isnan(skipped.pop("mu")) and math.isnan(skipped.pop("rho"))
    assert skipped == {"lambda": state["lambda"], "gamma": state["gamma"], "refreshed": False,
                       "accepted": False}
    assert opt.iteration == 1
    assert torch.equal(flat_params(model), params)
    after = opt.state_dict()
    assert after["lambda"] == state["lambda"]  # no rejection: the scale's fault, not λ's
    assert after["statistics"]["count"] == 1
    assert scaler.get_scale() == 2.0**15  # the scaler backed off
    assert _amp_step(opt, model, loss_fn, scaler, x, y)["accepted"] and opt.iteration == 2


# -- gradient clipping -------------------------------------------------------------------------
@pytest.mark.parametrize("automatic", [True, False])
def test_gradient_clipping_between_backward_and_step_is_honoured(automatic):
    """The step preconditions the clipped gradient: clipping its norm by c scales the update by c
    (with the quadratic model's α too: its linear term is the clipped gradient)."""
    x, y = data("ce", 32, SIZES[0], SIZES[-1])
    kw = {} if automatic else dict(lr=0.3, momentum=False, adapt_damping=False)
    updates = []
    for clip in (None, 0.1):
        model, loss_fn = tiny_mlp(SIZES), nn.CrossEntropyLoss()
        opt = KFAC(model, loss_fn, seed=0, damping=1e-2, **kw)
        before = flat_params(model)
        loss_fn(model(x), y).backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                              math.inf if clip is None else clip)
        opt.step()
        updates.append(flat_params(model) - before)
    factor = 0.1 / (norm + 1e-6)  # clip_grad_norm_'s
    assert factor < 0.5
    torch.testing.assert_close(updates[1], updates[0] * factor, rtol=1e-9, atol=1e-14)


# -- CUDA ----------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_forms_and_float16_autocast_with_a_grad_scaler():
    x, y = data("ce", 64, SIZES[0], SIZES[-1])
    x, y = x.float().cuda(), y.cuda()
    params = {}
    for form in FORMS:
        model, loss_fn = tiny_mlp(SIZES, dtype=torch.float32).cuda(), nn.CrossEntropyLoss()
        opt = KFAC(model, loss_fn, seed=1, stats_fraction=0.5)
        for k in range(6):
            FORMS[form](opt, model, loss_fn, *_rows(x, y, k))
        params[form] = flat_params(model)
    torch.testing.assert_close(params["b"], params["a"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(params["c"], params["a"], rtol=1e-5, atol=1e-6)
    model, loss_fn = tiny_mlp(SIZES, dtype=torch.float32).cuda(), nn.CrossEntropyLoss()
    opt, scaler = KFAC(model, loss_fn, seed=0), torch.amp.GradScaler("cuda")
    losses = []
    for _ in range(15):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(opt.last_step["loss"])
    assert losses[-1] < losses[0]
