import json
import subprocess
import sys

import pytest

from kronlin_nn.experiments.autoencoder import DEFAULT_OPTIMIZERS, parse_args

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


def test_figures_and_table(cli_run):
    out, done = cli_run
    for name in ("error_vs_time.png", "error_vs_iteration.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    for name in CONTRACT_NAMES:
        assert f"| {name} |" in done.stdout
    assert "grid search" in done.stdout


def test_parse_args_defaults_and_validation():
    args = parse_args([])
    assert args.problem == "mnist" and args.optimizer == list(DEFAULT_OPTIMIZERS)
    assert args.device == "cpu" and args.time_budget > 0
    args = parse_args(["--optimizer", "sgd", "--optimizer", "sgd", "--optimizer", "kfac-tridiag"])
    assert args.optimizer == ["sgd", "kfac-tridiag"]
    for bad in (["--optimizer", "adam"], ["--time-budget", "0"], ["--problem", "faces"],
                ["--threads", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
