"""Sweeps on existing distributed engines (slow: real sweeps), as docs/cluster.md describes them.

Hydra's submitit launcher (its local executor here; SLURM on a cluster) runs every job as a process
of its own through the task function, and a running Ray cluster serves the shared simulation with
hydra.launcher.ray_address: both give the bits of the default sweep. Every process a test starts
carries a FLWR_HOME under the test's folder, which finds and stops them by PID afterwards (also the
daemons `ray start` leaves behind and the processes submitit starts).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from test_inline_backend import _same_run

from initmatters.launch import (
    PROJECT_ROOT,
    flower_env,
    free_port,
    processes_with_flwr_home,
    stop_process,
    terminate_pids,
    venv_script,
)
from initmatters_core.results import pid_alive

WAIT_S = float(os.environ.get("INITMATTERS_TEST_WAIT_S", "120"))  # generous: the machine may be busy
SKIPPED = "already holds a finished run of this config: not run again"


@pytest.fixture
def marker() -> Iterator[Path]:
    """A short folder (Ray's socket paths are limited) whose `home` is the FLWR_HOME of every process
    a test starts; whatever still runs with it at the end is stopped by PID, then the folder removed."""
    base = Path(tempfile.mkdtemp(prefix="im-cluster-", dir="/tmp"))
    try:
        yield base
    finally:
        terminate_pids(processes_with_flwr_home(base), timeout=15.0)
        shutil.rmtree(base, ignore_errors=True)


def sweep(env: Mapping[str, str], *arguments: str) -> str:
    """stdout of a successful `python -m initmatters.sweep --multirun ARGUMENTS`; stopped by PID in any case."""
    process = subprocess.Popen([sys.executable, "-m", "initmatters.sweep", "--multirun", *arguments],
                               cwd=PROJECT_ROOT, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=WAIT_S * 8)
    finally:
        stop_process(process)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    return out


def wait_until_none_left(base: Path) -> list[int]:
    """The processes marked with `base` still alive after up to WAIT_S (each ends on its own)."""
    deadline = time.monotonic() + WAIT_S
    while processes_with_flwr_home(base) and time.monotonic() < deadline:
        time.sleep(0.5)
    return processes_with_flwr_home(base)


SWEEP = ("debug=default", "seed=0,1", "init=random,pretrained")


@pytest.mark.slow
def test_submitit_jobs_give_the_bits_of_the_shared_sweep_and_resume(marker: Path) -> None:
    env = flower_env(marker / "home")
    sweep(env, *SWEEP, f"hydra.sweep.dir={marker / 'shared'}")
    submitit_dir = marker / "submitit"
    sweep(env, "hydra/launcher=submitit_local", *SWEEP, f"hydra.sweep.dir={submitit_dir}")
    for job in range(4):
        _same_run(marker / "shared" / str(job), submitit_dir / str(job))
        assert (submitit_dir / str(job) / "config.yaml").read_text() == (
            marker / "shared" / str(job) / "config.yaml").read_text()  # so each launcher resumes the other's
    assert wait_until_none_left(marker) == []  # submitit's controllers, the jobs and their client workers

    finished = {job: (submitit_dir / str(job) / "model_final.pt").stat().st_mtime_ns for job in range(4)}
    sweep(env, "hydra/launcher=submitit_local", *SWEEP, f"hydra.sweep.dir={submitit_dir}")
    assert {job: (submitit_dir / str(job) / "model_final.pt").stat().st_mtime_ns for job in range(4)} == finished
    job_logs = [path.read_text() for path in (submitit_dir / ".submitit").glob("*/*_log.out")]
    assert sum(log.count(SKIPPED) for log in job_logs) == 4  # the second submission's jobs, one line each
    assert wait_until_none_left(marker) == []


def _ray_head_processes(base: Path) -> list[int]:
    """The GCS server and raylet of the Ray cluster started with FLWR_HOME under `base`."""
    found = []
    for pid in processes_with_flwr_home(base):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"gcs_server" in command or b"raylet" in command:
            found.append(pid)
    return found


@pytest.mark.slow
def test_the_shared_simulation_joins_a_running_ray_cluster_and_leaves_it_running(marker: Path) -> None:
    port = free_port()
    # `ray stop` would stop every Ray of this machine's user (other runs too): this test stops its own by PID.
    started = subprocess.run(
        [venv_script("ray"), "start", "--head", "--port", str(port), "--num-cpus", "2", "--disable-usage-stats",
         "--include-dashboard=false", "--temp-dir", str(marker / "ray")],
        env=flower_env(marker / "home"), capture_output=True, text=True, timeout=WAIT_S * 2, start_new_session=True)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    head = _ray_head_processes(marker)
    assert len(head) >= 2, started.stdout[-3000:]

    driver_env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    jobs = ("debug=default", "init=random,pretrained")
    sweep(driver_env, *jobs, f"hydra.sweep.dir={marker / 'inline'}")
    out = sweep(driver_env, *jobs, f"hydra.sweep.dir={marker / 'ray'}", "hydra.launcher.backend=ray",
                f"hydra.launcher.ray_address=127.0.0.1:{port}")

    assert f"[sweep] one Flower simulation with 2 SuperNodes for 2 jobs on the Ray cluster at 127.0.0.1:{port}" in out
    assert list((marker / "ray").glob("session_*/logs/python-core-driver-*")), "the sweep did not join the cluster"
    for job in range(2):
        _same_run(marker / "inline" / str(job), marker / "ray" / str(job))
    assert all(pid_alive(pid) for pid in head)  # the sweep only disconnected from the cluster
    terminate_pids(processes_with_flwr_home(marker), timeout=30.0)
    assert processes_with_flwr_home(marker) == []
