import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kronlin_nn.experiments.autoencoder import DEFAULT_OPTIMIZERS, build_parser, parse_args

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
                ["--threads", "0"], ["--progress-every", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_the_docs_option_table_lists_every_option():
    page = (Path(__file__).resolve().parents[3] / "docs" / "experiment.md").read_text()
    documented = set(re.findall(r"^\| `(--[a-z-]+)", page, flags=re.MULTILINE))
    options = {opt for action in build_parser()._actions for opt in action.option_strings
               if opt.startswith("--") and opt != "--help"}
    assert documented == options
