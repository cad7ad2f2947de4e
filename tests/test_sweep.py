"""The Hydra sweep end to end: shared simulation, resume, failure isolation (slow: starts Ray)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from initmatters.launch import PROJECT_ROOT
from initmatters.sweep import normalized_argv

CONTRACT = ("config.yaml", "rounds.csv", "summary.json", "model_init.pt", "model_final.pt", "signal.pt")


def sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "initmatters.sweep", "--multirun", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)


def test_plus_experiment_is_accepted() -> None:
    assert normalized_argv(["x", "+experiment=a", "+seed=1"]) == ["x", "experiment=a", "+seed=1"]


@pytest.mark.slow
def test_two_job_sweep_runs_resumes_and_reports(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    first = sweep(sweep_dir, "debug=default", "init=random,pretrained")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "[sweep] 2/2 jobs (0 failed, 0 resumed)" in first.stdout
    assert first.stdout.count("[sweep] one Flower simulation with 2 SuperNodes for 2 jobs") == 1
    jobs = sorted(path for path in sweep_dir.iterdir() if path.is_dir())
    assert len(jobs) == 2
    inits = set()
    for job in jobs:
        for name in CONTRACT:
            assert (job / name).is_file(), (job, name)
        inits.add(json.loads((job / "summary.json").read_text())["settings"]["init"]["name"])
    assert inits == {"random", "pretrained"}
    # Paired: both jobs saw the same clients, so the realised h and sizes agree.
    summaries = [json.loads((job / "summary.json").read_text()) for job in jobs]
    assert summaries[0]["client_sizes"] == summaries[1]["client_sizes"]

    finished = {job: (job / "model_final.pt").stat().st_mtime_ns for job in jobs}
    again = sweep(sweep_dir, "debug=default", "init=random,pretrained")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(0 failed, 2 resumed)" in again.stdout
    assert {job: (job / "model_final.pt").stat().st_mtime_ns for job in jobs} == finished


@pytest.mark.slow
def test_failing_jobs_are_reported_and_others_finish(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    completed = sweep(sweep_dir, "debug=default", "init=random,checkpoint", "++init.path=/nonexistent/model.pt",
                      "heterogeneity.h=0.0,1.5")
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    failures = [line for line in completed.stdout.splitlines() if line.startswith("[sweep] FAILED")]
    assert len(failures) == 3
    assert any("init=checkpoint" in line and "heterogeneity.h=0.0" in line and "does not exist" in line
               for line in failures)
    assert sum("heterogeneity.h=1.5 is invalid: allowed a number in [0, 1]" in line for line in failures) == 2
    assert "[sweep] 4/4 jobs (3 failed" in completed.stdout
    finished = [p for p in sweep_dir.iterdir() if (p / "summary.json").is_file()]
    assert len(finished) == 1
    assert json.loads((finished[0] / "summary.json").read_text())["settings"]["init"]["name"] == "random"
