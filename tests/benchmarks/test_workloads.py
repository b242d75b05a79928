"""The workload suite (benchmarks/workloads): one tiny workload end to end, and its bookkeeping."""

import json
import math
import sys
import warnings

import pytest
import torch
from torch import nn

from benchmarks.workloads import report, runner
from benchmarks.workloads.cli import main
from benchmarks.workloads.kfac_jax_runner import export_network, find_python
from benchmarks.workloads.optimizers import RunSpec, expand
from benchmarks.workloads.workloads import WORKLOADS

QUICK = ["--only", "digits-tanh", "--quick", "--isolate", "none"]


def test_quick_end_to_end_records_every_run_from_the_same_start(tmp_path):
    md = tmp_path / "report.md"
    results = main([*QUICK, "--optimizers", "kfac-blockdiag", "kfac-lambda", "adam",
                    "--out", str(tmp_path), "--markdown", str(md)])
    saved = json.loads((tmp_path / "results.json").read_text())
    entry = saved["workloads"]["digits-tanh"]
    runs = entry["runs"]
    assert set(runs) == {"kfac-blockdiag", "kfac-lambda blockdiag f=0.1", "kfac-lambda blockdiag f=10",
                         "adam lr=0.001", "adam lr=0.01"}
    initial = {r["eval_loss"][0] for r in runs.values()}
    assert len(initial) == 1  # the same initial weights for every optimizer
    x, y = WORKLOADS["digits-tanh"].dataset()
    assert initial.pop() == pytest.approx(math.log(10), rel=0.05)  # a fresh 10-class classifier
    for run in runs.values():
        assert run["iterations_done"] == WORKLOADS["digits-tanh"].quick_iterations
        assert run["eval_iterations"] == list(range(run["iterations_done"] + 1))
        assert len(run["step_loss"]) == len(run["step_seconds"]) == run["iterations_done"]
    assert len(runs["kfac-blockdiag"]["diagnostics"]["lambda"]) == runs["kfac-blockdiag"]["iterations_done"]
    # full batch: the first step's loss (before it) is the whole-set loss at the start, plus
    # K-FAC's default weight decay for K-FAC
    assert runs["adam lr=0.01"]["step_loss"][0] == pytest.approx(runs["adam lr=0.01"]["eval_loss"][0])
    criteria = entry["summary"]["criteria"]["kfac-blockdiag"]["checks"]
    assert set(criteria) == {"vs_adam", "vs_best_lambda", "clean"}
    assert saved["suite"]["threads"] == 1 and saved["suite"]["load"]["loadavg_start"] is not None
    assert results["verdict"]["total"] == 1
    assert (tmp_path / "digits-tanh.png").stat().st_size > 0
    text = md.read_text()
    assert "#### digits-tanh" in text and "adam tuned (lr 0.01)" in text
    assert "](./digits-tanh.png)" in text  # the plot sits beside the fragment


def test_reuse_takes_the_families_not_rerun(tmp_path):
    first = tmp_path / "first"
    main([*QUICK, "--optimizers", "kfac-blockdiag", "adam", "--out", str(first)])
    second = main([*QUICK, "--optimizers", "kfac-blockdiag", "--out", str(tmp_path / "second"),
                   "--reuse", str(first / "results.json")])
    entry = second["workloads"]["digits-tanh"]
    assert sorted(entry["reused"]) == ["adam lr=0.001", "adam lr=0.01"]
    recorded = json.loads((first / "results.json").read_text())["workloads"]["digits-tanh"]["runs"]
    assert entry["runs"]["adam lr=0.01"] == recorded["adam lr=0.01"]
    # the rerun K-FAC defaults retrace the recorded trajectory (deterministic)
    assert entry["runs"]["kfac-blockdiag"]["eval_loss"] == recorded["kfac-blockdiag"]["eval_loss"]


def test_render_summarizes_a_record_again_without_running(tmp_path):
    main([*QUICK, "--optimizers", "adam", "--out", str(tmp_path / "a")])
    again = main(["--render", str(tmp_path / "a" / "results.json"), "--out", str(tmp_path / "b")])
    assert again["workloads"]["digits-tanh"]["summary"]["adam"]["lr"] in (0.001, 0.01)
    assert (tmp_path / "b" / "digits-tanh.png").is_file()


def test_every_workload_gives_the_same_weights_and_batches_each_time():
    for w in WORKLOADS.values():
        if w.name in ("mnist-ae", "curves-ae", "mnist-relu"):
            continue  # same code path, larger data: covered by the small ones
        a, b = w.build_model().state_dict(), w.build_model().state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert next(iter(a.values())).dtype == w.dtype
    w = WORKLOADS["friedman-relu"]
    n = w.dataset()[0].shape[0]
    batches = w.batches(15)  # 10 batches per epoch: one epoch and a half
    assert len(batches) == 15 and all(len(b) == w.batch_size for b in batches)
    assert sorted(torch.cat(batches[:10]).tolist()) == list(range(n))  # an epoch: each case once
    assert not torch.equal(batches[0], batches[10])  # the next epoch is shuffled anew
    assert all(torch.equal(p, q) for p, q in zip(batches, w.batches(15), strict=True))
    assert WORKLOADS["digits-tanh"].batches(5) is None  # full batch


def test_case_scale_is_the_loss_per_case_over_the_mean_nll():
    # BCE averaged over 64 outputs, MSE over 1, cross-entropy per case
    assert WORKLOADS["digits-ae"].case_scale() == pytest.approx(1 / 64)
    assert WORKLOADS["diabetes-mse"].case_scale() == pytest.approx(1.0)
    assert WORKLOADS["digits-tanh"].case_scale() == pytest.approx(1.0)


def test_expand_marks_first_contact_runs_for_a_fresh_process():
    w = WORKLOADS["digits-ae"]
    specs = {f: expand(f, w, quick=False, lambda_approx=("blockdiag", "tridiag"),
                       isolate="first-contact") for f in ("kfac-blockdiag", "kfac-lambda", "adam")}
    assert specs["kfac-blockdiag"][0].isolated
    assert not any(s.isolated for s in specs["kfac-lambda"] + specs["adam"])
    assert len(specs["kfac-lambda"]) == 18  # both approximations over the grid
    assert expand("kfac-jax", WORKLOADS["digits-tanh"], quick=False, lambda_approx=(),
                  isolate="none") == []  # kfac-jax only where the workload allows it
    with pytest.raises(ValueError, match="unknown optimizer family 'lbfgs'"):
        expand("lbfgs", w, quick=False, lambda_approx=(), isolate="none")


class _Scripted:
    """A stepper that replays given losses, warning on every step."""

    def __init__(self, losses, accepted):
        self.losses, self.accepted, self.k = losses, accepted, 0

    def step(self, inputs, targets):
        self.k += 1
        warnings.warn(f"step {self.k}", UserWarning, stacklevel=2)
        return {"loss": self.losses[self.k - 1], "accepted": self.accepted[self.k - 1]}


def test_run_counts_warnings_rejections_and_stops_at_divergence(monkeypatch):
    nan = math.nan
    scripted = _Scripted([1.0, nan, 0.5, nan, 0.2], [True, False, True, True, True])
    monkeypatch.setattr(runner, "build", lambda *a: (scripted, {"constructor": "scripted"}))
    run = runner.run_one("digits-tanh", RunSpec("adam", "scripted", {"lr": 1.0}), 5)
    assert run["warnings"] == 4  # one per step taken; the run stopped after step 4
    assert run["rejected"] == 1  # step 2: not accepted, the run goes on
    assert run["nonfinite"] == 2  # steps 2 and 4
    assert run["diverged"] and run["iterations_done"] == 4  # an accepted non-finite step ends it
    assert run["step_loss"] == [1.0, None, 0.5, None]
    assert [w["message"] for w in run["warning_messages"]] == ["step 1", "step 2", "step 3", "step 4"]


@pytest.mark.slow  # a fresh interpreter imports torch: seconds on a busy machine
def test_isolated_run_retraces_the_in_process_run_and_records_first_use_warnings():
    spec = RunSpec("kfac-blockdiag", "kfac-blockdiag", {}, isolated=True)
    fresh = runner.run_isolated("cancer-f64", spec, 3, 1)
    here = runner.run_one("cancer-f64", spec, 3, 1)
    assert fresh["eval_loss"] == here["eval_loss"]
    assert fresh["pid"] != here["pid"] and fresh["isolated"]
    assert fresh["warnings"] == here["warnings"] + sum(w["count"] for w in fresh["first_use_warnings"])


def _run(family, key, params, losses, every=1):
    its = list(range(0, every * len(losses), every))
    return {"family": family, "key": key, "params": params, "eval_iterations": its,
            "eval_seconds": [0.1 * k for k in its], "eval_loss": losses, "step_seconds": [0.1] * its[-1],
            "seconds": 0.1 * its[-1], "wall_seconds": 0.2 * its[-1], "iterations_done": its[-1],
            "warnings": 0, "rejected": 0, "nonfinite": 0, "diverged": False,
            "diagnostics": {"lambda": [2.0] * its[-1]}}


def test_summary_targets_choices_and_criteria():
    runs = {
        "adam lr=0.001": _run("adam", "adam lr=0.001", {"lr": 1e-3}, [1.0, 0.8, 0.5, 0.3]),
        "adam lr=0.01": _run("adam", "adam lr=0.01", {"lr": 1e-2}, [1.0, 0.5, 0.2, 0.1, 0.1, 0.1]),
        "kfac-lambda blockdiag f=1": _run("kfac-lambda", "kfac-lambda blockdiag f=1",
                                          {"approx": "blockdiag", "factor": 1.0}, [1.0, 0.05, 0.01]),
        "kfac-lambda blockdiag f=10": _run("kfac-lambda", "kfac-lambda blockdiag f=10",
                                           {"approx": "blockdiag", "factor": 10.0}, [1.0, 0.2, 0.09]),
        "kfac-blockdiag": _run("kfac-blockdiag", "kfac-blockdiag", {}, [1.0, 0.3, 0.1]),
        "kfac-tridiag": _run("kfac-tridiag", "kfac-tridiag", {}, [1.0, 0.5, 0.3, 0.2, 0.1]),
    }
    runs["kfac-tridiag"]["warnings"] = 1
    s = report.summarize({"runs": runs, "case_scale": 0.5})
    assert s["adam"]["lr"] == 1e-2 and s["adam"]["at_grid_edge"]  # lowest final loss, at the edge
    assert s["adam"]["grid_timed_seconds"] == pytest.approx(0.3 + 0.5)
    # targets: ¼, ½, ¾ of the way from 1.0 to 0.1 on a log scale, then 0.1
    assert s["targets"] == pytest.approx([10**-0.25, 10**-0.5, 10**-0.75, 0.1])
    assert s["best_lambda"]["blockdiag"]["factor"] == 1.0  # reaches 0.1 at iteration 1
    c = s["criteria"]
    # Adam reaches 0.1 at iteration 3; K-FAC blockdiag at 2 (ratio 2/3 > 1/2), best λ₀ at 1
    assert c["kfac-blockdiag"]["checks"]["vs_adam"]["ratio"] == pytest.approx(2 / 3)
    assert c["kfac-blockdiag"]["checks"]["vs_best_lambda"]["ratio"] == pytest.approx(2.0)
    assert c["kfac-blockdiag"]["checks"]["clean"]["pass"] and not c["kfac-blockdiag"]["pass"]
    # tridiag: no grid of its own, compared with the block-diagonal one; a warning fails it
    assert c["kfac-tridiag"]["checks"]["vs_best_lambda"]["reference"] == "kfac-lambda blockdiag f=1"
    assert not c["kfac-tridiag"]["checks"]["clean"]["pass"]
    row = next(r for r in s["rows"] if r["key"] == "kfac-blockdiag")
    assert row["reach"][-1] == (2, pytest.approx(0.2)) and row["lambda0_per_case"] == 4.0


def test_criteria_pass_at_the_limits_and_need_their_references():
    runs = {  # Adam measured every 2 iterations: it reaches its final 0.3 at iteration 8
        "adam lr=0.01": _run("adam", "adam lr=0.01", {"lr": 1e-2}, [1.0, 0.9, 0.7, 0.5, 0.3], every=2),
        "kfac-lambda blockdiag f=1": _run("kfac-lambda", "kfac-lambda blockdiag f=1",
                                          {"approx": "blockdiag", "factor": 1.0}, [1.0, 0.9, 0.3]),
        "kfac-blockdiag": _run("kfac-blockdiag", "kfac-blockdiag", {}, [1.0, 0.5, 0.4, 0.3]),
    }
    c = report.summarize({"runs": runs, "case_scale": 1.0})["criteria"]["kfac-blockdiag"]
    assert c["checks"]["vs_adam"]["ratio"] == pytest.approx(3 / 8)
    assert c["checks"]["vs_best_lambda"]["ratio"] == pytest.approx(1.5)  # exactly at the limit
    assert c["pass"]
    workloads = {"w": {"summary": report.summarize({"runs": runs, "case_scale": 1.0})}}
    assert report.verdict(workloads) == {"pass": True, "workloads": {"w": True}, "passed": 1, "total": 1}
    del runs["kfac-lambda blockdiag f=1"]
    c = report.summarize({"runs": runs, "case_scale": 1.0})["criteria"]["kfac-blockdiag"]
    assert c["checks"]["vs_best_lambda"]["pass"] is None and not c["pass"]  # not evaluated


def test_kfac_jax_is_skipped_with_a_reason_when_not_importable(monkeypatch):
    monkeypatch.delenv("KRONLIN_KFAC_JAX_PYTHON", raising=False)
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    python, note = find_python("/also/nonexistent")
    assert python is None
    assert note.startswith("kfac-jax is not importable, skipped") and "--kfac-jax-python" in note


def test_the_kfac_jax_runner_exports_the_network_it_can_run():
    arrays = export_network(WORKLOADS["digits-ae"].build_model())
    # 64-100-50-25-10-25-50-100-64: logistic hidden units, linear code and output layers
    assert list(arrays["activations"]) == ["sigmoid"] * 3 + ["linear"] + ["sigmoid"] * 3 + ["linear"]
    assert arrays["W0"].shape == (100, 64) and arrays["b7"].shape == (64,)
    with pytest.raises(ValueError, match="unsupported module"):
        export_network(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))


def test_a_candidate_runs_with_per_case_keywords_and_is_judged_like_the_defaults(tmp_path):
    results = main([*QUICK, "--optimizers", "adam", "--out", str(tmp_path),
                    "--candidate", "small-lambda", '{"damping": "0.5c", "inverse_every": 2, "gamma_every": 2}'])
    entry = results["workloads"]["digits-tanh"]
    run = entry["runs"]["candidate small-lambda"]
    c = WORKLOADS["digits-tanh"].case_scale()
    assert run["config"]["kwargs"] == {"damping": 0.5 * c, "inverse_every": 2, "gamma_every": 2}
    assert run["diagnostics"]["lambda"][0] == pytest.approx(0.5 * c)  # the λ₀ it was given
    checks = entry["summary"]["criteria"]["candidate small-lambda"]["checks"]
    assert checks["vs_adam"]["pass"] is not None and checks["vs_best_lambda"]["pass"] is None
    with pytest.raises(SystemExit):
        main([*QUICK, "--candidate", "bad", '{"damping": "xc"}'])


def test_a_reference_that_never_reaches_the_target_bounds_nothing():
    runs = {
        "adam lr=0.01": _run("adam", "adam lr=0.01", {"lr": 1e-2}, [1.0, 0.5, 0.3]),
        "kfac-lambda blockdiag f=1": _run("kfac-lambda", "kfac-lambda blockdiag f=1",
                                          {"approx": "blockdiag", "factor": 1.0}, [1.0, 0.9, 0.8]),
        "kfac-blockdiag": _run("kfac-blockdiag", "kfac-blockdiag", {}, [1.0, 0.3, 0.3]),
        "kfac-tridiag": _run("kfac-tridiag", "kfac-tridiag", {}, [1.0, 0.9, 0.9]),
    }
    c = report.summarize({"runs": runs, "case_scale": 1.0})["criteria"]
    assert c["kfac-blockdiag"]["checks"]["vs_best_lambda"]["pass"] is True  # it reached, the grid did not
    assert c["kfac-tridiag"]["checks"]["vs_best_lambda"]["pass"] is False  # neither did
    assert c["kfac-tridiag"]["checks"]["vs_adam"]["pass"] is False
