"""The suite's command line: run the selected workloads × optimizers, write the records and report.

See ``python -m benchmarks.workloads --help`` and the package docstring.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from kronlin_nn.distributed import join_torchrun

from .kfac_jax_runner import find_python
from .kfac_jax_runner import run as run_kfac_jax
from .machine import LoadMeter, facts
from .optimizers import FAMILIES, LAMBDA_FACTORS, RunSpec, candidate, expand
from .report import format_markdown, plot_workload, summarize, verdict
from .runner import first_use_warnings, run_isolated, run_one
from .workloads import WORKLOADS, Workload

__all__ = ["main", "parse_args"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.workloads",
        description="K-FAC workload suite: every selected optimizer on every selected workload "
                    "from the same weights and batches; iterations and seconds to fixed loss "
                    "targets, the issue-10 criteria, a JSON of everything, one plot per workload.",
        epilog="Families: " + "; ".join(f"{k}: {v}" for k, v in FAMILIES.items())
               + ". Workloads: " + ", ".join(WORKLOADS) + ".",
    )
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS), metavar="NAME",
                        help="workloads to run (default: all; see --list)")
    parser.add_argument("--optimizers", nargs="+", choices=list(FAMILIES), metavar="FAMILY",
                        help="optimizer families to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="each workload's tiny budget and two points per grid (smoke test)")
    parser.add_argument("--iterations", type=int, metavar="N",
                        help="override every workload's step budget")
    parser.add_argument("--lambda-approx", nargs="+", choices=("blockdiag", "tridiag"),
                        default=["blockdiag"], metavar="APPROX",
                        help="approximations of the λ₀ grid (default: blockdiag; tridiag "
                             "defaults are then compared with the block-diagonal grid)")
    parser.add_argument("--lambda-factors", nargs="+", type=float, metavar="F",
                        help=f"the λ₀ grid, λ₀ = F·c (default: {' '.join(f'{f:g}' for f in LAMBDA_FACTORS)})")
    parser.add_argument("--candidate", nargs=2, action="append", default=[],
                        metavar=("NAME", "JSON"),
                        help="repeatable: also run KFAC(model, loss_fn, **JSON) as a candidate "
                             "for the defaults, judged by the same criteria; \"<x>c\" values are "
                             "x times the loss's per-case scale, e.g. '{\"damping\": \"1c\"}'")
    parser.add_argument("--isolate", choices=("first-contact", "all", "none"),
                        default="first-contact",
                        help="runs in a fresh process, so one-time warnings count for each: the "
                             "K-FAC defaults and paper recipe (default), all, or none")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="torch intra-op threads, and XLA's for kfac-jax (default: %(default)s; "
                             "on a shared 2-core machine 2 threads can be several times slower)")
    parser.add_argument("--out", type=Path, default=Path("results/workloads"), metavar="DIR",
                        help="results.json and the plots go here (default: %(default)s)")
    parser.add_argument("--markdown", type=Path, metavar="PATH",
                        help="also write the report as a Markdown fragment (for docs/results/)")
    parser.add_argument("--reuse", type=Path, metavar="RESULTS_JSON",
                        help="take the runs of families not selected by --optimizers from this "
                             "earlier results.json, where its workload and budget match")
    parser.add_argument("--kfac-jax-python", metavar="PY",
                        help="a Python with the kfac-jax extra (default: $KRONLIN_KFAC_JAX_PYTHON, "
                             "then this one)")
    parser.add_argument("--render", type=Path, nargs="+", metavar="RESULTS_JSON",
                        help="run nothing: summarize earlier results.json files again (several: "
                             "their workloads merged, e.g. parts run side by side) and write the "
                             "report and plots to --out (and --markdown)")
    parser.add_argument("--list", action="store_true", help="list workloads and families, exit")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.only = list(dict.fromkeys(args.only or WORKLOADS))
    args.optimizers = list(dict.fromkeys(args.optimizers or FAMILIES))
    try:
        args.candidates = [candidate(name, text, args.isolate) for name, text in args.candidate]
    except ValueError as err:
        parser.error(str(err))
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be >= 1")
    for option, paths in (("reuse", [args.reuse]), ("render", args.render or [])):
        for path in paths:
            if path is not None and not path.is_file():
                parser.error(f"--{option}: no file {path}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the suite; write ``results.json``, the plots and (optionally) the Markdown report."""
    args = parse_args(argv)
    if args.list:
        for name, w in WORKLOADS.items():
            print(f"{name:16s} {w.iterations:4d} it  {w.description}")
        for family, text in FAMILIES.items():
            print(f"{family:16s} {text}")
        return {}
    if args.render is not None:
        return _render(args)
    torch.set_num_threads(args.threads)
    join_torchrun()  # under torchrun: every rank runs the suite, each on its shard of each batch
    if dist.is_initialized() and dist.get_world_size() > 1:
        others = [f for f in args.optimizers if not f.startswith("kfac") or f == "kfac-jax"]
        if others or args.isolate != "none":
            raise SystemExit(f"under torchrun: give --isolate none and K-FAC families only "
                             f"(kfac-jax and the torch.optim baselines run in one process), got "
                             f"--isolate {args.isolate} and {others}")
    started, meter = time.perf_counter(), LoadMeter()
    main_warnings = first_use_warnings()
    reuse = json.loads(args.reuse.read_text())["workloads"] if args.reuse else {}
    jax_python, jax_note = None, None
    if "kfac-jax" in args.optimizers and any(WORKLOADS[n].kfac_jax for n in args.only):
        jax_python, jax_note = find_python(args.kfac_jax_python)
        print(jax_note)
    results: dict[str, Any] = {"suite": {}, "workloads": {}, "verdict": {}}
    def save(name: str, entry: dict[str, Any], final: bool = False) -> None:
        """Write results.json as it stands (after every run: an interrupted suite keeps them)."""
        entry["summary"] = summarize(entry)
        results["workloads"][name] = entry
        results["verdict"] = verdict(results["workloads"])
        results["suite"] = _suite(args, started, meter, main_warnings, jax_note)
        _write(results, args, final=final)

    for name in args.only:
        entry = _run_workload(WORKLOADS[name], args, jax_python, jax_note, reuse.get(name),
                              lambda e, n=name: save(n, e))
        save(name, entry, final=name == args.only[-1])
    return results


def _render(args: argparse.Namespace) -> dict[str, Any]:
    """Summarize recorded results.json files again, merged (a later file's workload wins)."""
    parts = [json.loads(path.read_text()) for path in args.render]
    results = {"suite": parts[0]["suite"] if len(parts) == 1 else _merged_suite(parts),
               "workloads": {}}
    for part in parts:
        for name, entry in part["workloads"].items():
            results["workloads"][name] = _merged(results["workloads"].get(name), entry, name)
    for entry in results["workloads"].values():
        entry["summary"] = summarize(entry)
    results["verdict"] = verdict(results["workloads"])
    _write(results, args, final=True)
    return results


def _merged(old: dict | None, new: dict, name: str) -> dict:
    """One workload's runs from two records of the same workload and budget (``new`` wins)."""
    if old is None:
        return new
    for key in ("fingerprint", "iterations"):
        if old[key] != new[key]:
            raise SystemExit(f"--render: {name} was recorded with two different {key}s "
                             f"({old[key]} and {new[key]}); cannot merge its runs")
    return {**old, **new, "runs": {**old["runs"], **new["runs"]},
            "skipped": old["skipped"] + new["skipped"], "reused": old["reused"] + new["reused"]}


def _merged_suite(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The provenance of parts run separately: each part's, and the parts' wall-clock span."""
    suites = [p["suite"] for p in parts]
    return {**suites[0], "command": " & ".join(s["command"] for s in suites),
            "wall_seconds": max(s["wall_seconds"] for s in suites), "parts": suites}


def _run_workload(w: Workload, args: argparse.Namespace, jax_python: str | None,
                  jax_note: str | None, reused: dict | None,
                  progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every selected run of one workload (``progress(entry)`` after each), then the reused ones."""
    iterations = args.iterations or (w.quick_iterations if args.quick else w.iterations)
    entry: dict[str, Any] = {
        "description": w.description, "fingerprint": w.fingerprint(), "iterations": iterations,
        "batch_size": w.batch_size, "eval_every": w.eval_every, "dtype": str(w.dtype),
        "case_scale": w.case_scale(), "notes": list(w.notes), "skipped": [], "reused": [],
        "runs": {},
    }
    specs = [s for family in args.optimizers
             for s in expand(family, w, quick=args.quick, lambda_approx=tuple(args.lambda_approx),
                             isolate=args.isolate, lambda_factors=tuple(args.lambda_factors or ()))]
    specs += args.candidates
    print(f"== {w.name}: {w.description}; {iterations} iterations, {len(specs)} runs", flush=True)
    for spec in specs:
        if spec.family == "kfac-jax" and jax_python is None:
            entry["skipped"].append(jax_note)
            continue
        entry["runs"][spec.key] = record = _run(w, spec, iterations, args, jax_python)
        print(_line(record), flush=True)
        progress(entry)
    if reused and reused.get("fingerprint") == entry["fingerprint"] and (
            reused.get("iterations") == iterations):
        for key, record in reused["runs"].items():
            if record["family"] in FAMILIES and record["family"] not in args.optimizers and (
                    key not in entry["runs"]):
                entry["runs"][key] = record
                entry["reused"].append(key)
    elif reused:
        entry["skipped"].append("--reuse: the recorded workload differs (data, weights or "
                                "budget), nothing reused")
    return entry


def _run(w: Workload, spec: RunSpec, iterations: int, args: argparse.Namespace,
         jax_python: str | None) -> dict[str, Any]:
    """One run; an exception becomes a failed record (counted, never hidden)."""
    try:
        if spec.family == "kfac-jax":
            return run_kfac_jax(w, iterations, args.threads, jax_python)
        if spec.isolated:
            return run_isolated(w.name, spec, iterations, args.threads)
        return run_one(w.name, spec, iterations, args.threads)
    except Exception as err:  # noqa: BLE001 - a failed run is a result, the suite goes on
        return {"key": spec.key, "family": spec.family, "params": dict(spec.params),
                "error": "".join(traceback.format_exception_only(err)).strip()[-2000:],
                "eval_iterations": [], "eval_seconds": [], "eval_loss": [], "step_loss": [],
                "step_seconds": [], "accepted": [], "rejected": 0, "nonfinite": 0,
                "diverged": True, "warnings": 0, "warning_messages": [], "seconds": 0.0,
                "wall_seconds": 0.0, "iterations_done": 0}


def _line(r: dict[str, Any]) -> str:
    if r.get("error"):
        return f"   {r['key']:28s} FAILED: {r['error'].splitlines()[-1][:150]}"
    final = math.inf if r["eval_loss"][-1] is None else r["eval_loss"][-1]
    return (f"   {r['key']:28s} final loss {final:.4g} after {r['iterations_done']} it, "
            f"{r['seconds']:.1f} s timed; warnings {r['warnings']}, rejected {r['rejected']}, "
            f"non-finite {r['nonfinite']}")


def _suite(args: argparse.Namespace, started: float, meter: LoadMeter, main_warnings: list,
           jax_note: str | None) -> dict[str, Any]:
    return {
        "command": shlex.join(["python", "-m", "benchmarks.workloads", *args.argv]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": facts(),
        "threads": args.threads,
        "wall_seconds": time.perf_counter() - started,
        "load": meter.result(),
        "families": args.optimizers,
        "candidates": {s.params["name"]: s.params["kwargs"] for s in args.candidates},
        "quick": args.quick,
        "isolate": args.isolate,
        "lambda_approx": args.lambda_approx,
        "lambda_factors": args.lambda_factors or list(LAMBDA_FACTORS),
        "kfac_jax": jax_note,
        "first_use_warnings_main_process": main_warnings,
    }


def _write(results: dict[str, Any], args: argparse.Namespace, *, final: bool) -> None:
    if dist.is_initialized() and dist.get_rank() > 0:  # rank 0 writes
        return
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_strict(results), indent=None) + "\n")
    if not final:
        return
    for name, w in results["workloads"].items():
        plot_workload(name, w, out / f"{name}.png")
    text = format_markdown(results, _image_prefix(out, args.markdown))
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    print(text)
    print(f"wrote {out / 'results.json'} and {len(results['workloads'])} plots"
          + (f", {args.markdown}" if args.markdown else ""))


def _image_prefix(out: Path, markdown: Path | None) -> str:
    """How the Markdown refers to the plots: from the docs' root when ``out`` is under docs/."""
    resolved = out.resolve()
    for parent in resolved.parents:
        if parent.name == "docs":
            return "/" + resolved.relative_to(parent).as_posix() + "/"
    base = (markdown.parent if markdown else out).resolve()
    return os.path.relpath(resolved, base).replace(os.sep, "/") + "/"


def _strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``, so that its JSON is standard."""
    return json.loads(json.dumps(value), parse_constant=lambda _: None)
