"""End to end through the real `flwr run` (private SuperLink started and stopped by PID)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from initmatters.launch import PROJECT_ROOT, flwr_run, processes_with_flwr_home, simulation_superlink
from initmatters_core.results import read_rounds_csv
from initmatters_core.tasks.synthetic.task import ROUND_COLUMNS

pytestmark = pytest.mark.slow

CONTRACT_FILES = ("config.yaml", "rounds.csv", "summary.json", "model_init.pt", "model_final.pt", "signal.pt",
                  "plots/misaligned.png", "plots/test_error.png")


def launch(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m initmatters.run ARGS` with its own FLWR_HOME under tmp_path."""
    command = [sys.executable, "-m", "initmatters.run", *args, "--flwr-home", str(tmp_path / "flwr-home")]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)


def recount_misaligned(weight: torch.Tensor, signal: torch.Tensor) -> int:
    """Brute-force recount: filter (j, r) is misaligned when <w_jr, j mu> <= 0."""
    count = 0
    for row, j in enumerate((1.0, -1.0)):
        for r in range(weight.shape[1]):
            count += int(float(torch.dot(weight[row, r].double(), j * signal.double())) <= 0)
    return count


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    tmp_path = tmp_path_factory.mktemp("flwr-run")
    out = tmp_path / "results"
    completed = launch(tmp_path, "debug=default", "init=pretrained", "fl.num_rounds=3", "--backend", "ray",
                       "--output-dir", str(out))
    return completed, out, tmp_path / "flwr-home"


def test_flwr_run_writes_the_results_contract(pretrained_run) -> None:
    completed, out, _ = pretrained_run
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    for name in CONTRACT_FILES:
        assert (out / name).is_file(), name
    rows = read_rounds_csv(out / "rounds.csv")
    assert [int(row["round"]) for row in rows] == [0, 1, 2, 3]
    with open(out / "rounds.csv") as handle:
        assert tuple(handle.readline().strip().split(",")) == ROUND_COLUMNS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 3
    assert summary["realised_h"] == 0.0
    assert summary["versions"]["flwr"] == "1.41.0"
    assert "name: pretrained" in (out / "config.yaml").read_text()


def test_flwr_run_counts_match_the_saved_models(pretrained_run) -> None:
    _, out, _ = pretrained_run
    rows = read_rounds_csv(out / "rounds.csv")
    signal = torch.load(out / "signal.pt", weights_only=True)
    init = torch.load(out / "model_init.pt", weights_only=True)["weight"]
    final = torch.load(out / "model_final.pt", weights_only=True)["weight"]
    assert signal.dim() == 1 and init.shape == final.shape == (2, 4, signal.shape[0])
    assert rows[0]["misaligned"] == recount_misaligned(init, signal)
    assert rows[-1]["misaligned"] == recount_misaligned(final, signal)
    assert rows[0]["misaligned"] <= 1  # pre-training aligns (almost) every filter


def test_flwr_run_leaves_no_process_behind(pretrained_run) -> None:
    _, _, flwr_home = pretrained_run
    deadline = time.monotonic() + 10
    while processes_with_flwr_home(flwr_home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_with_flwr_home(flwr_home) == []


@pytest.mark.parametrize(("backend", "message"), [
    ("ray", "error: the run did not finish (no summary.json in"),
    ("inline", "error: round 0: the global model diverged (test_loss=nan"),
])
def test_failed_run_exits_non_zero(tmp_path: Path, backend: str, message: str) -> None:
    """A run that starts and then fails (weights near float32's limit overflow: the model diverges)."""
    out, huge = tmp_path / "results", tmp_path / "huge.pt"
    torch.save({"weight": torch.full((2, 4, 100), 3.0e38)}, huge)
    completed = launch(tmp_path, "debug=default", "init=checkpoint", f"init.path={huge}", "--output-dir", str(out),
                       "--backend", backend)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1].startswith(message), completed.stderr[-2000:]
    assert not (out / "summary.json").exists()
    assert processes_with_flwr_home(tmp_path / "flwr-home") == []


def test_bad_setting_fails_before_start_up(tmp_path: Path) -> None:
    started = time.monotonic()
    completed = launch(tmp_path, "heterogeneity.h=1.5", "--output-dir", str(tmp_path / "results"))
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        "error: heterogeneity.h=1.5 is invalid: allowed a number in [0, 1]"
    ]
    assert not (tmp_path / "flwr-home").exists()  # nothing was started
    assert time.monotonic() - started < 60


def test_plain_flwr_run_on_a_larger_federation_fails_at_once_with_one_line(tmp_path: Path, capfd) -> None:
    """Plain `flwr run .` with debug=default (2 clients) on a 10-SuperNode federation: one error line
    naming both ways out, no traceback, nothing written."""
    out = tmp_path / "results"
    with simulation_superlink(tmp_path / "flwr-home") as env:
        flwr_run(PROJECT_ROOT, env, {"overrides": "debug=default", "output-dir": str(out)},
                 {"num-supernodes": 10, "client-resources-num-cpus": 1})
    output = capfd.readouterr()
    text = output.out + output.err
    expected = ('error: fl.num_clients=2 is invalid here: the federation has 10 SuperNodes, one per client is '
                'needed: run it with --federation-config "num-supernodes=2" (simulation), or set fl.num_clients=10')
    assert text.count(expected) == 1, text[-3000:]
    assert "Traceback" not in text
    assert not out.exists()
    deadline = time.monotonic() + 10
    while processes_with_flwr_home(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_with_flwr_home(tmp_path) == []
