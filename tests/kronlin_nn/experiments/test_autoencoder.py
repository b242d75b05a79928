import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kronlin_nn.experiments import training
from kronlin_nn.experiments.autoencoder import DEFAULT_OPTIMIZERS, build_parser, main, parse_args
from kronlin_nn.experiments.data import load_problem
from kronlin_nn.experiments.models import ARCHITECTURES, autoencoder, reconstruction_error
from kronlin_nn.init import sparse_init_

CONTRACT_NAMES = ["kfac-blockdiag", "kfac-tridiag", "kfac-blockdiag-nomomentum", "sgd"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    command = [sys.executable, "-m", "kronlin_nn.experiments.autoencoder", "--problem", "digits",
               "--time-budget", "60", "--seed", "3", "--device", "cpu", "--out", str(out),
               "--max-iterations", "3", "--threads", "1"]
    for name in CONTRACT_NAMES:
        command += ["--optimizer", name]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out, done


def test_results_json_follows_the_contract(cli_run):
    out, _ = cli_run
    results = json.loads((out / "results.json").read_text())
    assert results["problem"] == "digits"
    config = results["config"]
    assert config["seed"] == 3 and config["device"] == "cpu" and config["time_budget"] == 60
    assert config["world_size"] == 1 and config["backend"] is None
    assert config["architecture"][0] == 64 and config["n_train"] == 1797
    search = config["sgd_grid_search"]
    assert search["chosen"] in search["grid_paper_units"] and search["seconds"] > 0
    assert set(results["runs"]) == set(CONTRACT_NAMES)
    for name, records in results["runs"].items():
        assert records[0]["iteration"] == 0 and records[-1]["iteration"] == 3
        initial_error = records[0]["train_error"]
        for record in records:
            assert isinstance(record["iteration"], int)
            assert isinstance(record["batch_size"], int)
            assert record["seconds"] >= 0 and record["train_error"] > 0
        # the same initialization for every method
        assert initial_error == results["runs"]["sgd"][0]["train_error"]
        assert records[-1]["train_error"] < initial_error
        # the default --polyak-start 200 is past these 3 steps: the average is the iterate
        assert records[-1]["train_error_average"] == records[-1]["train_error_current"]
        if name.startswith("kfac"):
            assert {"loss", "lambda", "gamma", "alpha", "mu", "rho", "refreshed",
                    "accepted"} <= set(records[-1])
    assert set(results["summary"]) == set(CONTRACT_NAMES)


def test_figures_and_tables(cli_run):
    out, done = cli_run
    for name in ("error_vs_time.png", "error_vs_iteration.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    # printed: aligned plain text with its legend; written: Markdown
    printed = done.stdout
    assert "|" not in printed
    table = printed[printed.index("\noptimizer "):].split("\n\n")[0].splitlines()[3:]
    rows = {line.split()[0]: line for line in table}
    assert list(rows) == CONTRACT_NAMES
    for name in CONTRACT_NAMES:
        assert rows[name].split()[1] == "3"  # iterations
    assert "m: mini-batch size of the last step" in printed
    assert "grid search (3 steps each" in printed
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("`python -m kronlin_nn.experiments.autoencoder --problem digits")
    for name in CONTRACT_NAMES:
        assert f"| {name} | 3 |" in markdown
    assert "- m: mini-batch size of the last step" in markdown


def test_without_a_terminal_progress_is_plain_lines(cli_run):
    _, done = cli_run
    assert "\r" not in done.stdout and "\r" not in done.stderr and "\x1b" not in done.stdout
    progress = [line for line in done.stdout.splitlines() if ", done" in line]
    # one closing line per run: the 4 grid-search candidates, then each optimizer
    assert len(progress) == 4 + len(CONTRACT_NAMES)
    for name, line in zip(CONTRACT_NAMES, progress[4:], strict=True):
        assert line.startswith(f"{name}: ") and ", it 3, " in line and ", err " in line


def test_every_option_has_help_and_its_default():
    parser = build_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help and "(default: " in action.help, action.option_strings
    text = parser.format_help()
    for shown in ("(default: results/autoencoder)", "(default: mnist)", "(default: 0)",
                  "(default: cpu)", "(default: 200)", "--threads N", "--progress-every"):
        assert shown in " ".join(text.split()), shown


def test_parse_args_defaults_and_validation():
    args = parse_args([])
    assert args.problem == "mnist" and args.optimizer == list(DEFAULT_OPTIMIZERS)
    assert args.device == "cpu" and args.time_budget > 0
    args = parse_args(["--optimizer", "sgd", "--optimizer", "sgd", "--optimizer", "kfac-tridiag"])
    assert args.optimizer == ["sgd", "kfac-tridiag"]
    for bad in (["--optimizer", "adam"], ["--time-budget", "0"], ["--problem", "faces"],
                ["--threads", "0"], ["--progress-every", "-1"],
                *([["--device", "cuda"]] if not torch.cuda.is_available() else [])):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_the_docs_option_table_lists_every_option():
    page = (Path(__file__).resolve().parents[3] / "docs" / "experiment.md").read_text()
    documented = set(re.findall(r"^\| `(--[a-z-]+)", page, flags=re.MULTILINE))
    options = {opt for action in build_parser()._actions for opt in action.option_strings
               if opt.startswith("--") and opt != "--help"}
    assert documented == options


# -- each option's effect, in process ----------------------------------------------------------
def _strict_json(text):
    """``json.loads`` that refuses NaN and ±Infinity (not standard JSON)."""
    def refuse(constant):
        raise AssertionError(f"results.json holds the non-standard constant {constant}")

    return json.loads(text, parse_constant=refuse)


def _run_main(tmp_path, *options, threads=1):
    out = tmp_path / "out"
    try:
        results = main(["--out", str(out), "--threads", str(threads), *options])
    finally:
        torch.set_num_threads(1)  # as tests/kronlin_nn/conftest.py sets it
    return results, _strict_json((out / "results.json").read_text())


def _initial_error(problem, seed, x):
    model = sparse_init_(autoencoder(ARCHITECTURES[problem]),
                         generator=torch.Generator().manual_seed(seed))
    return reconstruction_error(model, x)


def test_options_take_effect(tmp_path, capsys):
    """--n-train, --seed, --sgd-lr (no grid search), --polyak-start, --max-iterations,
    --progress-every and --threads."""
    results, saved = _run_main(
        tmp_path, "--problem", "digits", "--n-train", "40", "--seed", "5", "--sgd-lr", "0.0123",
        "--polyak-start", "1", "--max-iterations", "3", "--progress-every", "0",
        "--optimizer", "sgd", "--optimizer", "kfac-blockdiag", threads=2)
    printed = capsys.readouterr().out
    config = saved["config"]
    x = load_problem("digits", n_train=40).x
    assert config["n_train"] == 40 and config["dataset"] == "digits-40"
    assert config["seed"] == 5 and config["threads"] == 2 and config["polyak"]["start"] == 1
    # --sgd-lr: the given rate, no grid search
    assert config["sgd_grid_search"] is None and "grid search" not in printed
    assert config["optimizers"]["sgd"]["lr_paper_units"] == 0.0123
    for name, records in saved["runs"].items():
        # --seed: the initialization of that seed, on the first 40 images
        assert records[0]["train_error"] == pytest.approx(_initial_error("digits", 5, x),
                                                          rel=1e-6)
        assert [r["iteration"] for r in records][-1] == 3
        # --polyak-start 1: the average departs from the iterate after step 1
        last = records[-1]
        assert last["train_error_average"] != last["train_error_current"]
        assert last["train_error"] == min(last["train_error_average"], last["train_error_current"])
        # --progress-every 0: a line at every step and evaluation, not only the closing one
        assert sum(line.startswith(f"{name}: ") for line in printed.splitlines()) > 3


def test_data_dir_time_budget_and_no_progress(tmp_path, capsys):
    """--data-dir reads the MNIST IDX file; --time-budget stops each run (here after its first
    step); --no-progress prints no progress line."""
    images = np.random.default_rng(0).integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    header = bytes([0, 0, 0x08, 3]) + np.array(images.shape, dtype=">u4").tobytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(header + images.tobytes())
    _, saved = _run_main(tmp_path, "--problem", "mnist", "--data-dir", str(tmp_path),
                         "--n-train", "20", "--optimizer", "sgd", "--sgd-lr", "0.01",
                         "--time-budget", "1e-9", "--no-progress")
    printed = capsys.readouterr().out
    config = saved["config"]
    assert config["n_train"] == 20 and str(tmp_path) in config["source"]
    x = torch.tensor(images[:20].reshape(20, -1) / 255.0, dtype=torch.float32)
    records = saved["runs"]["sgd"]
    assert records[0]["train_error"] == pytest.approx(_initial_error("mnist", 0, x), rel=1e-6)
    assert records[-1]["iteration"] == 1 and config["time_budget"] == 1e-9
    assert not any(line.startswith("sgd: ") for line in printed.splitlines())


def test_non_finite_values_are_written_as_null(tmp_path, monkeypatch):
    """Strict JSON: a diverged run (every error NaN, so the grid search scores ∞) is null."""
    monkeypatch.setattr(training, "reconstruction_error", lambda *args, **kwargs: math.nan)
    results, saved = _run_main(tmp_path, "--problem", "digits", "--n-train", "40",
                               "--max-iterations", "2", "--optimizer", "sgd", "--no-progress")
    assert all(e == math.inf for e in results["config"]["sgd_grid_search"]["final_errors"])
    assert all(e is None for e in saved["config"]["sgd_grid_search"]["final_errors"])
    assert all(math.isnan(r["train_error"]) for r in results["runs"]["sgd"])
    assert all(r["train_error"] is None for r in saved["runs"]["sgd"])
