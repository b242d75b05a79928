"""From the runs to the verdict: targets, tuned choices, the tables, the plots, the criteria.

Targets (per workload): tuned Adam's final loss :math:`L_A`, and the levels
:math:`L_0^{1-f} L_A^{f}` for ``f`` in :data:`LEVELS` (a quarter, half and three quarters of the
way from the initial loss :math:`L_0` to :math:`L_A` on a log scale). A run reaches a target at
the first measurement (every ``eval_every`` iterations) whose whole-set loss is at or below it;
its seconds are the timed seconds up to that iteration.

Choices: the tuned Adam and SGD are the grid points with the lowest final loss (ties: the
smaller learning rate); the best λ₀ of an approximation is the grid point that reaches
:math:`L_A` in the fewest iterations (then: the lowest final loss). A choice at the edge of its
grid is flagged.

Criteria (issue 10, per K-FAC-defaults run and per ``--candidate`` run): it reaches
:math:`L_A` in at most half of the iterations tuned Adam needs to reach it, and in at most 1.5×
the iterations of the best λ₀ of its own approximation's grid (of the block-diagonal grid when
its own was not run); and it had no rejected step, no warning and no non-finite loss. A
criterion whose reference was not run is "not evaluated" and the workload does not pass.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only

import matplotlib.pyplot as plt  # noqa: E402

from .optimizers import CANDIDATE  # noqa: E402

__all__ = ["LEVELS", "format_markdown", "plot_workload", "reach", "summarize", "verdict"]

LEVELS = (0.25, 0.5, 0.75)
DEFAULTS = ("kfac-blockdiag", "kfac-tridiag")
ADAM_RATIO, LAMBDA_RATIO = 0.5, 1.5


def final_loss(run: Mapping[str, Any]) -> float:
    """The last measured whole-set loss (``inf`` for a diverged run)."""
    value = run["eval_loss"][-1] if run["eval_loss"] else None
    return math.inf if value is None or run.get("diverged") else float(value)


def reach(run: Mapping[str, Any], target: float) -> tuple[int, float] | None:
    """``(iteration, timed seconds)`` of the first measurement at or below ``target``."""
    for k, s, loss in zip(run["eval_iterations"], run["eval_seconds"], run["eval_loss"], strict=True):
        if loss is not None and loss <= target:
            return k, s
    return None


def _tuned(runs: Mapping[str, Mapping], family: str) -> dict[str, Any] | None:
    grid = [(key, r) for key, r in runs.items() if r["family"] == family]
    if not grid:
        return None
    grid.sort(key=lambda kr: kr[1]["params"]["lr"])
    key, run = min(grid, key=lambda kr: final_loss(kr[1]))  # min keeps the first: smaller lr
    lrs = [r["params"]["lr"] for _, r in grid]
    return {"key": key, "lr": run["params"]["lr"], "final_loss": final_loss(run),
            "at_grid_edge": len(lrs) > 1 and run["params"]["lr"] in (lrs[0], lrs[-1]),
            "grid": lrs, "finals": [final_loss(r) for _, r in grid], **_cost(grid)}


def _best_lambda(runs: Mapping[str, Mapping], approx: str, target: float | None) -> dict | None:
    grid = [(key, r) for key, r in runs.items()
            if r["family"] == "kfac-lambda" and r["params"]["approx"] == approx]
    if not grid:
        return None
    grid.sort(key=lambda kr: kr[1]["params"]["factor"])

    def score(run: Mapping) -> tuple[float, float]:
        hit = None if target is None else reach(run, target)
        return (math.inf if hit is None else hit[0], final_loss(run))

    key, run = min(grid, key=lambda kr: score(kr[1]))
    factors = [r["params"]["factor"] for _, r in grid]
    return {"key": key, "factor": run["params"]["factor"], "final_loss": final_loss(run),
            "at_grid_edge": len(factors) > 1 and run["params"]["factor"] in (factors[0], factors[-1]),
            "grid": factors, "iterations_to_adam": [score(r)[0] for _, r in grid], **_cost(grid)}


def _cost(grid: list[tuple[str, Mapping]]) -> dict[str, float]:
    return {"grid_timed_seconds": sum(r["seconds"] for _, r in grid),
            "grid_wall_seconds": sum(r["wall_seconds"] for _, r in grid), "grid_runs": len(grid)}


def summarize(workload: Mapping[str, Any]) -> dict[str, Any]:
    """Targets, tuned choices, the headline rows and the criteria of one workload's runs."""
    runs = workload["runs"]
    adam, sgd = _tuned(runs, "adam"), _tuned(runs, "sgd")
    initial = next((r["eval_loss"][0] for r in runs.values() if r["eval_loss"]), None)
    targets: list[float] = []
    main = None
    if adam is not None and math.isfinite(adam["final_loss"]) and initial:
        main = adam["final_loss"]
        targets = [initial ** (1 - f) * main ** f for f in LEVELS] + [main]
    lambdas = {a: _best_lambda(runs, a, main) for a in ("blockdiag", "tridiag")}
    headline: list[tuple[str, str]] = []
    for family in ("kfac-blockdiag", "kfac-tridiag", "kfac-paper"):
        if family in runs:
            headline.append((family, family))
    headline += [(key, key) for key, r in runs.items() if r["family"] == CANDIDATE]
    for approx, best in lambdas.items():
        if best is not None:
            headline.append((f"kfac best λ₀ ({approx}, {best['factor']:g}·c)", best["key"]))
    if adam is not None:
        headline.append((f"adam tuned (lr {adam['lr']:g})", adam["key"]))
    if sgd is not None:
        headline.append((f"sgd-nesterov tuned (lr {sgd['lr']:g}/c)", sgd["key"]))
    if "kfac-jax" in runs:
        headline.append(("kfac-jax (paper recipe)", "kfac-jax"))
    rows = [_row(label, runs[key], targets, workload["case_scale"]) for label, key in headline]
    return {"initial_loss": initial, "targets": targets, "adam": adam, "sgd": sgd,
            "best_lambda": lambdas, "rows": rows,
            "criteria": _criteria(runs, adam, lambdas, main)}


def _row(label: str, run: Mapping[str, Any], targets: list[float], c: float) -> dict[str, Any]:
    steps = sorted(run["step_seconds"])
    lambdas = run.get("diagnostics", {}).get("lambda") or [None]
    return {"label": label, "key": run["key"], "final_loss": final_loss(run),
            "lambda0_per_case": None if lambdas[0] is None else lambdas[0] / c,
            "reach": [reach(run, t) for t in targets],
            "median_step_ms": 1000 * steps[len(steps) // 2] if steps else None,
            "iterations_done": run["iterations_done"], "seconds": run["seconds"],
            "warnings": run["warnings"], "rejected": run["rejected"], "nonfinite": run["nonfinite"]}


def _criteria(runs: Mapping[str, Mapping], adam: dict | None, lambdas: dict, main: float | None):
    out = {}
    adam_hit = None if adam is None or main is None else reach(runs[adam["key"]], main)
    for key, run in runs.items():
        if run["family"] not in (*DEFAULTS, CANDIDATE):
            continue
        hit = None if main is None else reach(run, main)
        best = lambdas.get(_approx(run)) or lambdas["blockdiag"]
        best_hit = None if best is None or main is None else reach(runs[best["key"]], main)
        clean = (run["rejected"] == 0 and run["warnings"] == 0 and run["nonfinite"] == 0
                 and not run.get("error"))
        checks = {
            "vs_adam": _ratio_check(hit, adam_hit, ADAM_RATIO, adam is not None and main is not None),
            "vs_best_lambda": _ratio_check(hit, best_hit, LAMBDA_RATIO,
                                           best is not None and main is not None),
            "clean": {"pass": clean, "warnings": run["warnings"], "rejected": run["rejected"],
                      "nonfinite": run["nonfinite"]},
        }
        checks["vs_best_lambda"]["reference"] = None if best is None else best["key"]
        out[key] = {"checks": checks, "pass": all(c["pass"] is True for c in checks.values())}
    return out


def _approx(run: Mapping[str, Any]) -> str:
    """The approximation of a K-FAC-defaults or candidate run."""
    if run["family"] == CANDIDATE:
        return run["params"]["kwargs"].get("approx", "blockdiag")
    return run["family"].removeprefix("kfac-")


def _ratio_check(hit: tuple | None, reference: tuple | None, limit: float,
                 ran: bool) -> dict[str, Any]:
    """``hit[0] <= limit * reference[0]``.

    ``pass`` is ``None`` (not evaluated) when the reference was not run. A reference that ran
    but never reached the target bounds nothing: the check passes if ``hit`` reached it.
    """
    if reference is None:
        return {"pass": (hit is not None) if ran else None,
                "iterations": None if hit is None else hit[0], "reference_iterations": None,
                "ratio": None, "limit": limit}
    ratio = math.inf if hit is None else hit[0] / reference[0] if reference[0] else math.inf
    return {"pass": ratio <= limit, "iterations": None if hit is None else hit[0],
            "reference_iterations": reference[0], "ratio": ratio, "limit": limit}


def verdict(workloads: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The overall pass/fail: every default run of every workload passes every criterion."""
    per = {name: all(c["pass"] for c in w["summary"]["criteria"].values())
           and bool(w["summary"]["criteria"]) for name, w in workloads.items()}
    return {"pass": bool(per) and all(per.values()), "workloads": per,
            "passed": sum(per.values()), "total": len(per)}


# -- Markdown ---------------------------------------------------------------------------------
def _g(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.{digits}g}"
    return str(value)


def _hit(hit: tuple | None) -> str:
    return "not reached" if hit is None else f"{hit[0]} ({hit[1]:.2g} s)"


def _check(check: Mapping[str, Any]) -> str:
    if check["pass"] is None:
        return "not evaluated"
    mark = "✓" if check["pass"] else "✗"
    if "ratio" in check:
        if check["reference_iterations"] is None:
            return f"{mark} (reference did not reach it)"
        return f"{mark} {_g(check['ratio'], 2)}"
    return f"{mark} {check['warnings']}/{check['rejected']}/{check['nonfinite']}"


def format_markdown(results: Mapping[str, Any], image_prefix: str) -> str:
    """The suite's report as Markdown: provenance, the verdict, then one section per workload."""
    suite = results["suite"]
    verdict_ = results["verdict"]
    lines = []
    for part in suite.get("parts", [suite]):
        lines += [f"`{part['command']}`, finished {part['date']}, {part['machine']['machine']}, "
                  f"{part['threads']} torch thread(s), commit {part['machine']['commit']}; "
                  f"{part['wall_seconds'] / 60:.1f} min; load average {_load(part['load'])}.", ""]
    if "parts" in suite:
        lines += [f"The {len(suite['parts'])} parts ran side by side and were merged with "
                  "`--render`.", ""]
    lines += [
        f"**Issue 10 criteria: {'PASS' if verdict_['pass'] else 'FAIL'}** "
        f"({verdict_['passed']} of {verdict_['total']} workloads pass). Per K-FAC-defaults run: "
        f"iterations to tuned Adam's final loss ÷ Adam's (≤ {ADAM_RATIO}), ÷ the best λ₀'s "
        f"(≤ {LAMBDA_RATIO}), and warnings/rejected steps/non-finite losses (all 0).",
        "",
        "| workload | run | its to Adam's final loss | Adam's its | ratio | best λ₀ (its) | ratio | "
        "warnings/rejected/NaN | pass |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, w in results["workloads"].items():
        s = w["summary"]
        for family, c in s["criteria"].items():
            k = c["checks"]
            best = s["best_lambda"].get(_approx(w["runs"][family])) or s["best_lambda"]["blockdiag"]
            best_text = "—" if best is None else (
                f"{best['factor']:g}·c ({_g(k['vs_best_lambda'].get('reference_iterations'))})")
            reached = k['vs_adam']['iterations']
            lines.append(f"| {name} | {family} | {'not reached' if reached is None else reached} | "
                         f"{_g(k['vs_adam'].get('reference_iterations'))} | "
                         f"{_check(k['vs_adam'])} | {best_text} | {_check(k['vs_best_lambda'])} | "
                         f"{_check(k['clean'])} | {'✓' if c['pass'] else '✗'} |")
    for name, w in results["workloads"].items():
        lines += ["", *_workload_markdown(name, w, image_prefix)]
    return "\n".join(lines) + "\n"


def _load(load: Mapping[str, Any]) -> str:
    start, end = load.get("loadavg_start"), load.get("loadavg_end")
    share = load.get("other_cpu_share")
    text = f"{start[0] if start else '?'} at start, {end[0] if end else '?'} at end"
    return text + ("" if share is None else f", other processes used {100 * share:.0f} % of the CPUs")


def _workload_markdown(name: str, w: Mapping[str, Any], image_prefix: str) -> list[str]:
    s = w["summary"]
    batch = "full batch" if w["batch_size"] is None else f"batch {w['batch_size']}"
    lines = [f"#### {name}", "",
             f"{w['description']}. {w['iterations']} iterations, {batch}, whole-set loss every "
             f"{w['eval_every']} iteration(s), {w['dtype']}, c = {w['case_scale']:.4g}. "
             f"Initial loss {_g(s['initial_loss'], 4)}."]
    lines += [f"{note}." for note in w.get("notes", ())]
    lines += [f"Skipped: {msg}" for msg in w.get("skipped", ())]
    if w.get("reused"):
        lines.append(f"Reused from an earlier record: {', '.join(sorted(w['reused']))}.")
    names = [f"{f:g} way" for f in LEVELS] + ["Adam's final"]
    header = [f"{n} ({_g(t, 3)})" for n, t in zip(names, s["targets"], strict=False)]
    lines += ["", "Iterations (timed seconds) to reach each target loss:", "",
              "| run | final loss | " + " | ".join(header)
              + (" | " if header else "") + "λ₀/c | median ms/step | warnings | rejected | NaN |",
              "|---|---|" + "---|" * len(header) + "---|---|---|---|---|"]
    for r in s["rows"]:
        cells = [_hit(h) for h in r["reach"]]
        lines.append(f"| {r['label']} | {_g(r['final_loss'], 4)} | " + " | ".join(cells)
                     + (" | " if cells else "") + f"{_g(r['lambda0_per_case'], 3)} | "
                     f"{_g(r['median_step_ms'], 3)} | {r['warnings']} | {r['rejected']} | "
                     f"{r['nonfinite']} |")
    lines += ["", _grids(s)]
    lines += ["", f"![{name}]({image_prefix}{name}.png)"]
    return lines


def _grids(s: Mapping[str, Any]) -> str:
    parts = []
    for label, tuned, unit in (("Adam", s["adam"], "lr"), ("SGD-Nesterov", s["sgd"], "lr/c")):
        if tuned is not None:
            parts.append(_grid_sentence(f"{label} grid ({unit}: final loss)", tuned["grid"],
                                        [_g(f, 3) for f in tuned["finals"]], tuned,
                                        "chosen at the grid's edge"))
    for approx, best in s["best_lambda"].items():
        if best is not None:
            parts.append(_grid_sentence(
                f"λ₀ grid {approx} (f, λ₀ = f·c: iterations to Adam's final loss)", best["grid"],
                [_g(i) for i in best["iterations_to_adam"]], best, "best at the grid's edge"))
    return ". ".join(parts) + ("." if parts else "")


def _grid_sentence(label: str, grid: Sequence[float], values: Sequence[str],
                   record: Mapping[str, Any], edge: str) -> str:
    """``label g₁: v₁, g₂: v₂, …; n runs, t s timed``, flagged when the pick is at the edge."""
    pairs = ", ".join(f"{g:g}: {v}" for g, v in zip(grid, values, strict=True))
    return (f"{label} {pairs}; {record['grid_runs']} runs, "
            f"{record['grid_timed_seconds']:.1f} s timed"
            + (f" — **{edge}**" if record["at_grid_edge"] else ""))


# -- plots ------------------------------------------------------------------------------------
def plot_workload(name: str, w: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Whole-set loss against iterations and against timed seconds, one line per headline run.

    The λ₀ grid's other runs are drawn thin and grey; tuned Adam's final loss is the dashed line.
    """
    s, runs = w["summary"], w["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    shown = {r["key"] for r in s["rows"]}
    for ax, x in zip(axes, ("eval_iterations", "eval_seconds"), strict=True):
        for key, run in runs.items():
            if run["family"] == "kfac-lambda" and key not in shown:
                ax.plot(run[x], _finite(run["eval_loss"]), color="0.75", lw=0.7)
        for row in s["rows"]:
            run = runs[row["key"]]
            ax.plot(run[x], _finite(run["eval_loss"]), marker="." if len(run[x]) < 60 else None,
                    ms=3, label=row["label"])
        if s["targets"]:
            ax.axhline(s["targets"][-1], color="k", ls="--", lw=0.8, label="tuned Adam's final loss")
        ax.set_yscale("log")
        ax.set_xlabel("iteration" if x == "eval_iterations" else "timed seconds")
        ax.set_ylabel("training loss (whole set)")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{name}: {w['description']}", fontsize=9)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _finite(values: list) -> list[float]:
    return [math.nan if v is None or not math.isfinite(v) else v for v in values]
