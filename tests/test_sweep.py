"""The Hydra sweep end to end: shared simulation, resume, failure isolation (slow: starts Ray)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from initmatters.compose import load_settings
from initmatters.launch import PROJECT_ROOT, stop_process
from initmatters.sweep import normalized_argv, sweep_variants
from initmatters_core.results import RunFiles

CONTRACT = ("config.yaml", "rounds.csv", "summary.json", "model_init.pt", "model_final.pt", "signal.pt")


def sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "initmatters.sweep", "--multirun", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)


def sweep_command(*arguments: str, timeout: float = 300.0) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m initmatters.sweep ARGUMENTS`; stopped by PID in any case."""
    process = subprocess.Popen([sys.executable, "-m", "initmatters.sweep", *arguments], cwd=PROJECT_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        stop_process(process)
    return process.returncode, out, err


def test_plus_experiment_is_accepted() -> None:
    assert normalized_argv(["x", "+experiment=a", "+seed=1"]) == ["x", "experiment=a", "+seed=1"]


def test_each_sweep_value_is_checked_once_with_the_others_at_their_first() -> None:
    variants = sweep_variants(["a=1,2", "b=3", "c=range(4,7)"])
    assert variants == [["a=1", "b=3", "c=4"], ["a=2", "b=3", "c=4"], ["a=1", "b=3", "c=5"], ["a=1", "b=3", "c=6"]]


INIT_OPTIONS = "|".join(sorted(path.stem for path in (PROJECT_ROOT / "conf" / "init").glob("*.yaml")))
FL_KEYS = "|".join(f"fl.{key}" for key in yaml.safe_load((PROJECT_ROOT / "conf" / "fl" / "fedavg.yaml").read_text()))


@pytest.mark.parametrize(("arguments", "expected"), [
    (["heterogeneity.h=1.5"], "error: heterogeneity.h=1.5 is invalid: allowed a number in [0, 1]"),
    (["--multirun", "heterogeneity.h=0.0,1.5"], "error: heterogeneity.h=1.5 is invalid: allowed a number in [0, 1]"),
    (["init=nonsense"], f"error: init='nonsense' is invalid: allowed {INIT_OPTIONS}"),
    (["--multirun", "fl.nonsense=1"], f"error: fl.nonsense is not a known setting: allowed {FL_KEYS}"),
    (["fl.lr=[1,2"], "error: fl.lr=[1,2 is invalid: allowed <setting>=<value> in Hydra's override syntax "
                     "(no viable alternative at input '[1,2')"),
    # each value is fine alone; only the job label_skew x 3 clients is not: the launcher's check
    (["--multirun", "heterogeneity=iid,label_skew", "fl.num_clients=2,3"],
     "error: fl.num_clients=3 is invalid: allowed an even number with heterogeneity=label_skew "
     "(clients alternate majority label)"),
])
def test_bad_setting_gets_one_line_and_exit_2_before_anything_starts(tmp_path: Path, arguments: list[str],
                                                                      expected: str) -> None:
    code, out, err = sweep_command(*arguments, "debug=default", f"hydra.run.dir={tmp_path / 'run'}",
                                   f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == 2, out[-2000:] + err[-2000:]
    assert err.strip().splitlines() == [expected]
    assert "[sweep]" not in out  # no job was prepared or started
    assert not (tmp_path / "run").exists()
    assert not list((tmp_path / "sweep").glob("*/config.yaml"))


def test_the_task_function_does_not_run_a_finished_run_of_the_same_config_again(tmp_path: Path) -> None:
    """The resume rule of every launcher (submitit's call the task function once per job)."""
    files = RunFiles(tmp_path / "run")
    files.root.mkdir()
    files.config.write_text(load_settings("debug=default")[1])
    files.summary.write_text("{}")
    code, out, err = sweep_command("debug=default", f"hydra.run.dir={files.root}")
    assert code == 0, out[-2000:] + err[-2000:]
    assert f"[initmatters] {files.root} already holds a finished run of this config: not run again" in out.splitlines()
    assert not files.rounds.exists() and files.summary.read_text() == "{}"


@pytest.mark.slow
def test_the_task_function_runs_again_over_a_finished_run_of_another_config(tmp_path: Path) -> None:
    files = RunFiles(tmp_path / "run")
    files.root.mkdir()
    files.config.write_text(load_settings("debug=default seed=1")[1])
    files.summary.write_text("{}")
    code, out, err = sweep_command("debug=default", f"hydra.run.dir={files.root}")
    assert code == 0, out[-2000:] + err[-2000:]
    assert "not run again" not in out
    assert files.config.read_text() == load_settings("debug=default")[1]
    assert json.loads(files.summary.read_text())["settings"]["seed"] == 0
    assert [row.split(",")[0] for row in files.rounds.read_text().splitlines()[1:]] == ["0", "1", "2"]


@pytest.mark.slow
def test_two_job_sweep_runs_resumes_and_reports(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    first = sweep(sweep_dir, "debug=default", "init=random,pretrained")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "[sweep] 2/2 jobs (0 failed, 0 resumed)" in first.stdout
    assert first.stdout.count("client worker process(es) for 2 jobs (backend=inline)") == 1  # started once
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
    """A job that fails while it runs (its init file is missing) is reported; the other one finishes."""
    sweep_dir = tmp_path / "sweep"
    completed = sweep(sweep_dir, "debug=default", "init=random,checkpoint", "++init.path=/nonexistent/model.pt")
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    failures = [line for line in completed.stdout.splitlines() if line.startswith("[sweep] FAILED")]
    assert len(failures) == 1
    assert "init=checkpoint" in failures[0] and "does not exist" in failures[0]
    assert "[sweep] 2/2 jobs (1 failed" in completed.stdout
    finished = [p for p in sweep_dir.iterdir() if (p / "summary.json").is_file()]
    assert len(finished) == 1
    assert json.loads((finished[0] / "summary.json").read_text())["settings"]["init"]["name"] == "random"


@pytest.mark.slow
def test_sigterm_stops_the_sweep_and_the_same_command_resumes_it(tmp_path: Path) -> None:
    """SIGTERM: exit 143 with one line, no process left, the running job resumable; the same command
    then skips nothing it must not and continues that job from its checkpoint."""
    import os
    import signal
    import time

    from initmatters.launch import processes_with_flwr_home, terminate_pids
    from initmatters_core.results import RunFiles

    wait_s = float(os.environ.get("INITMATTERS_TEST_START_TIMEOUT_S", "600"))
    home = tmp_path / "flwr-home"
    env = {**os.environ, "FLWR_HOME": str(home)}  # every process of the sweep carries it
    command = [sys.executable, "-m", "initmatters.sweep", "--multirun", "debug=default", "fl.num_rounds=400",
               "log.checkpoint_every=5", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    first = RunFiles(tmp_path / "sweep" / "0")
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + wait_s
        while not (first.checkpoint.exists() and first.rounds.exists() and first.rounds.read_text().count("\n") > 12):
            assert time.monotonic() < deadline and process.poll() is None, "the first job never got going"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=wait_s)
        assert process.returncode == 143, stderr[-2000:]
        assert stderr.strip().splitlines()[-1].startswith("initmatters-sweep: stopped by SIGTERM; every process it "
                                                          "started is stopped; run the same command again")
        assert "Traceback" not in stderr
        assert processes_with_flwr_home(home) == []
        assert first.interrupted() and not first.lock.exists()
    finally:
        terminate_pids([process.pid, *processes_with_flwr_home(home)], timeout=10.0)
    completed = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=wait_s)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    summary = json.loads(first.summary.read_text())
    assert summary["resumed_from_round"] is not None and summary["resumed_from_round"] >= 10
    assert summary["rounds_completed"] == 400
