"""Runs that survive real life: one-line errors before start-up, locks, signals, non-finite models.

Fast tests check each pre-start-up check and message; the slow ones start the real
`python -m initmatters.run` and stop it with SIGTERM, or SIGKILL it, and check that nothing it
started is left (every process is stopped by PID in a teardown that runs whatever happens).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from initmatters import deploy, run
from initmatters.compose import absolute_path_overrides, load_settings
from initmatters.launch import PROJECT_ROOT, Interrupted, processes_with_flwr_home, terminate_pids
from initmatters_core.results import OutputDirBusy, RunFiles, RunLock, lock_holder, output_dir_problem
from initmatters_core.settings import SettingError
from initmatters_core.tasks import load_task
from server_app.experiment import nonfinite_problem

START_TIMEOUT_S = float(os.environ.get("INITMATTERS_TEST_START_TIMEOUT_S", "600"))


# --- composition errors: one line, pointing the right way ----------------------------------------


@pytest.mark.parametrize(("overrides", "expected"), [
    ("fl.lr=0.5 fl.lr=0.6", "fl.lr is given twice (fl.lr=0.5, fl.lr=0.6): give each setting once"),
    ("fl.nonsense=1", "fl.nonsense is not a known setting: allowed fl.num_clients|"),
    ("+fl.nonsense=1", "fl.nonsense is not a known setting: allowed fl.num_clients|"),
    ("nonsense=1", "nonsense is not a known setting: allowed "),
    ("init.path=x", "init.path is not a known setting of init=random: allowed init.name"),
    ("init=pretrained init.path=x", "init.path is not a known setting of init=pretrained: allowed init.name|"),
])
def test_composition_errors_are_one_line_and_point_the_right_way(overrides: str, expected: str) -> None:
    with pytest.raises(SettingError) as error:
        load_settings(overrides)
    message = str(error.value)
    assert "\n" not in message and message.startswith(expected)
    assert "+" not in message  # no hint to append a key that validation then rejects


def test_relative_paths_become_absolute(tmp_path: Path) -> None:
    items = absolute_path_overrides(["init.path=model.pt", "data.data_dir=/abs/x", "fl.lr=0.1",
                                     "+init.path=../m.pt"], tmp_path / "here")
    assert items == [f"init.path={tmp_path / 'here' / 'model.pt'}", "data.data_dir=/abs/x", "fl.lr=0.1",
                     f"+init.path={tmp_path / 'm.pt'}"]


# --- the init file, before any start-up -----------------------------------------------------------


def _checkpoint_settings(path: Path | str):
    settings, _ = load_settings(f"debug=default init=checkpoint init.path={path}")
    return settings


@pytest.mark.parametrize(("content", "expected"), [
    (None, "does not exist"),
    (b"not a torch file", "is not a torch state dict file"),
    ({"bias": torch.zeros(3)}, "holds no 'weight' tensor"),
    ({"weight": torch.zeros(2, 3, 5)}, "has weight shape [2, 3, 5], expected [2, 4, 100]"),
    ({"weight": torch.full((2, 4, 100), float("nan"))}, "holds non-finite values"),
])
def test_unusable_init_files_fail_before_start_up(tmp_path: Path, content, expected: str) -> None:
    path = tmp_path / "init.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    settings = _checkpoint_settings(path)
    with pytest.raises(SettingError) as error:
        load_task(settings).check_before_start(settings)
    assert expected in str(error.value) and "init.path" in str(error.value) and "\n" not in str(error.value)


def test_run_rejects_a_nan_init_with_exit_2_and_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "nan.pt"
    torch.save({"weight": torch.full((2, 4, 100), float("nan"))}, path)
    assert run.main(["debug=default", "init=checkpoint", f"init.path={path}", "--output-dir",
                     str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: init.path=") and "non-finite" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_nonfinite_problem_names_the_metric_or_tensor() -> None:
    assert nonfinite_problem({"weight": torch.ones(2)}, {"test_loss": 0.5, "misaligned": 3}) is None
    # a mean over no filter is NaN by definition (nothing misaligned at init), not a diverged model
    no_misaligned = {"test_loss": 0.5, "gamma_misaligned_init_mean": math.nan}
    assert nonfinite_problem({"weight": torch.ones(2)}, no_misaligned) is None
    assert nonfinite_problem({"weight": torch.ones(2)}, {"test_loss": math.nan}) == "test_loss=nan"
    assert nonfinite_problem({"weight": torch.tensor([1.0, math.inf])}, {}) == "non-finite values in weight"


# --- the output folder ----------------------------------------------------------------------------


def test_output_dir_that_is_a_file_fails_at_once(tmp_path: Path, capsys) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    assert output_dir_problem(target) == f"output-dir {target} is a file: give a folder"
    assert output_dir_problem(tmp_path / "new" / "run") is None
    assert run.main(["debug=default", "--output-dir", str(target)]) == 2
    assert capsys.readouterr().err.strip() == f"error: output-dir {target} is a file: give a folder"


@pytest.fixture
def other_process():
    """A live process that is not this one (its PID holds a lock); stopped by PID afterwards."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        yield process
    finally:
        terminate_pids([process.pid], timeout=5.0)
        process.wait(timeout=10)


def test_a_locked_output_dir_is_refused_and_a_stale_lock_taken_over(tmp_path: Path, other_process, capsys) -> None:
    files = RunFiles(tmp_path / "run")
    files.root.mkdir()
    files.lock.write_text(f"{other_process.pid}\n")
    assert lock_holder(files) == other_process.pid
    with pytest.raises(OutputDirBusy, match=f"in use by PID {other_process.pid}"), RunLock(files):
        pass
    assert run.main(["debug=default", "--output-dir", str(files.root)]) == 2
    assert f"is in use by PID {other_process.pid}" in capsys.readouterr().err
    other_process.kill()
    other_process.wait(timeout=10)
    assert lock_holder(files) is None  # its holder is gone: stale
    with RunLock(files):
        assert files.lock.read_text().split()[0] == str(os.getpid())
    assert not files.lock.exists()


# --- signals and exit codes -----------------------------------------------------------------------


def test_interrupted_exit_codes() -> None:
    assert [Interrupted(sig).exit_code for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)] == [130, 143, 129]
    assert str(Interrupted(signal.SIGTERM)) == "SIGTERM"


def test_deploy_rejects_zero_nodes_without_a_misleading_hint(capsys) -> None:
    assert deploy.main(["--nodes", "0", "--", "debug=default"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --nodes=0 is invalid: allowed a positive integer (one SuperNode per client)")


# --- help and --cfg job answer without start-up ---------------------------------------------------


def test_help_lists_the_config_groups_and_options(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for line in ("init ", "random | misaligned_fraction", "strategy", "fedadam", "heterogeneity", "fl.num_rounds"):
        assert line.split(" | ")[0] in out


def test_cfg_job_prints_the_resolved_config_and_starts_nothing(tmp_path: Path, capsys) -> None:
    assert run.main(["--cfg", "job", "strategy=fedadam", "fl.num_rounds=3", "--output-dir", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "name: fedadam" in out and "num_rounds: 3" in out
    assert not (tmp_path / "o").exists()


# --- slow: the real launcher under SIGTERM and SIGKILL --------------------------------------------


def _start_run(tmp_path: Path, backend: str, *overrides: str) -> tuple[subprocess.Popen, Path, Path]:
    """The launcher on `backend`; every process it starts carries FLWR_HOME=<tmp_path>/flwr-home."""
    flwr_home, out, log = tmp_path / "flwr-home", tmp_path / "out", tmp_path / "run.log"
    command = [sys.executable, "-m", "initmatters.run", "debug=default", "fl.num_rounds=200", *overrides,
               "--output-dir", str(out), "--flwr-home", str(flwr_home), "--backend", backend]
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return process, flwr_home, log


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _first_round_done(out: Path) -> bool:
    return RunFiles(out).checkpoint.exists()


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "backend"), [(signal.SIGTERM, 143, "inline"), (signal.SIGHUP, 129, "inline"),
                                                      (signal.SIGTERM, 143, "ray")])
def test_stop_signal_stops_the_whole_tree_and_says_how_to_resume(tmp_path: Path, sig: int, code: int,
                                                                 backend: str) -> None:
    process, flwr_home, log = _start_run(tmp_path, backend)
    try:
        _wait_for(lambda: _first_round_done(tmp_path / "out"), START_TIMEOUT_S, "the first checkpoint")
        process.send_signal(sig)
        assert process.wait(timeout=120) == code
        _wait_for(lambda: not processes_with_flwr_home(flwr_home), 60, "every process of the run to stop")
        lines = log.read_text().strip().splitlines()
        assert lines[-1].startswith(f"initmatters: stopped by {signal.Signals(sig).name}; every process it started "
                                    "is stopped; resume it with: python -m initmatters.run debug=default")
        assert "Traceback" not in log.read_text()
        assert RunFiles(tmp_path / "out").interrupted()
    finally:
        terminate_pids([process.pid, *processes_with_flwr_home(flwr_home)], timeout=10.0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["inline", "ray"])
def test_children_of_a_sigkilled_launcher_stop_themselves(tmp_path: Path, backend: str) -> None:
    process, flwr_home, _ = _start_run(tmp_path, backend)
    try:
        _wait_for(lambda: _first_round_done(tmp_path / "out"), START_TIMEOUT_S, "the first checkpoint")
        assert processes_with_flwr_home(flwr_home)
        process.kill()
        process.wait(timeout=30)
        _wait_for(lambda: not processes_with_flwr_home(flwr_home), 120,
                  "the launcher's children (SuperLink, client workers) to stop after their launcher died")
    finally:
        terminate_pids([process.pid, *processes_with_flwr_home(flwr_home)], timeout=10.0)


@pytest.mark.slow
def test_a_diverging_model_fails_its_round_with_one_line_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    """Weights near float32's largest value overflow in the forward pass: a NaN test loss at round 0."""
    from flwr.simulation import run_simulation

    from client_app.app import app as client_app
    from server_app.app import build_server_app

    path = tmp_path / "huge.pt"
    torch.save({"weight": torch.full((2, 4, 100), 3.0e38)}, path)
    settings, yaml = load_settings(f"debug=default init=checkpoint init.path={path}")
    out = tmp_path / "out"
    with pytest.raises(Exception, match=r"round 0: the global model diverged \(test_loss=nan.*nothing was trained"):
        run_simulation(server_app=build_server_app(settings, yaml, out), client_app=client_app,
                       num_supernodes=settings.fl.num_clients,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    files = RunFiles(out)
    assert not files.finished() and not files.checkpoint.exists() and not files.lock.exists()


# --- GPUs used when asked -------------------------------------------------------------------------


def test_a_gpu_request_gets_a_share_or_says_it_trains_on_the_cpu() -> None:
    settings, _ = load_settings("fl.device=auto")
    share, note = run.client_gpu_share(settings, None)
    if torch.cuda.is_available():
        assert share == 1.0 / settings.fl.num_clients and "of the GPU" in note
    else:
        assert share == 0.0 and note == "fl.device=auto: no GPU is visible here, the clients train on the CPU"
    assert run.client_gpu_share(settings, 0.0) == (0.0, "fl.device=auto but --client-gpus=0: the clients train "
                                                        "on the CPU")
    assert run.client_gpu_share(settings, 0.25) == (0.25, None)
    cpu, _ = load_settings("")
    assert run.client_gpu_share(cpu, None) == (0.0, None)


def test_ray_startup_timeout_is_recognised_through_the_exception_chain() -> None:
    from initmatters.launch import ray_startup_timed_out

    try:
        try:
            raise Exception("The current node timed out during startup. This could happen because ...")
        except Exception as inner:
            raise RuntimeError("Simulation Runtime crashed.") from inner
    except RuntimeError as outer:
        assert ray_startup_timed_out(outer)
    assert not ray_startup_timed_out(RuntimeError("round 2: none of the 2 scheduled clients replied"))


# --- backends: each option applies to the engine it names ----------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["--workers", "2", "--backend", "ray"], "--workers=2 applies to --backend inline only"),
    (["--workers", "2", "--connection", "deploy"], "--workers=2 applies to --backend inline only"),
    (["--client-gpus", "0.5"], "--client-gpus=0.5 applies to --backend ray only"),
    (["--backend", "ray", "--connection", "deploy"], "--backend=ray does not apply with --connection"),
    (["--workers", "-1"], "--workers=-1 is invalid: allowed an integer >= 0"),
])
def test_run_options_for_another_engine_are_refused_with_one_line(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_run_defaults_to_the_inline_backend_only_without_a_connection() -> None:
    assert run.parse_args([]).backend == "inline"
    assert run.parse_args(["--connection", "deploy"]).backend is None
    assert run.parse_args(["--backend", "ray", "--client-gpus", "0.25"]).client_gpus == 0.25
