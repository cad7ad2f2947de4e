"""The shared_simulation launcher's options: checked before any start-up (fast: no Ray, no Flower run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from hydra_plugins.initmatters_launcher.shared_simulation_launcher import SharedSimulationLauncher
from initmatters.backends import RAY_INLINE_BYTES, launcher_option_problem, launcher_options
from initmatters.launch import PROJECT_ROOT

BAD = [
    ({"client_num_cpus": 0}, "hydra.launcher.client_num_cpus=0 is invalid: allowed a positive integer"),
    ({"client_num_cpus": -2}, "hydra.launcher.client_num_cpus=-2 is invalid: allowed a positive integer"),
    ({"client_num_cpus": 1.5}, "hydra.launcher.client_num_cpus=1.5 is invalid: allowed a positive integer"),
    ({"client_num_cpus": True}, "hydra.launcher.client_num_cpus=True is invalid: allowed a positive integer"),
    ({"client_num_gpus": -0.5}, "hydra.launcher.client_num_gpus=-0.5 is invalid: allowed a number >= 0 "
                                "(Ray's GPU share per simulated client)"),
    ({"client_num_gpus": float("nan")}, "hydra.launcher.client_num_gpus=nan is invalid: allowed a number >= 0 "
                                        "(Ray's GPU share per simulated client)"),
    ({"client_num_gpus": "half"}, "hydra.launcher.client_num_gpus=half is invalid: allowed a number >= 0 "
                                  "(Ray's GPU share per simulated client)"),
    ({"connection": ""}, "hydra.launcher.connection='' is invalid: allowed null (the shared simulation) "
                         "or the name of a Flower connection"),
    ({"connection": "  "}, "hydra.launcher.connection='  ' is invalid: allowed null (the shared simulation) "
                           "or the name of a Flower connection"),
    ({"backend": "dask"}, "hydra.launcher.backend='dask' is invalid: allowed inline|ray or null"),
    ({"workers": -1}, "hydra.launcher.workers=-1 is invalid: allowed an integer >= 0 (0 = clients in the sweep "
                      "process) or null (one per CPU)"),
    ({"workers": 1.5}, "hydra.launcher.workers=1.5 is invalid: allowed an integer >= 0 (0 = clients in the sweep "
                       "process) or null (one per CPU)"),
    ({"backend": "ray", "connection": "deploy"}, "hydra.launcher.backend=ray does not apply with "
                                                 "hydra.launcher.connection=deploy (the connection's SuperLink runs "
                                                 "the clients): set one of them"),
    ({"backend": "ray", "workers": 2}, "hydra.launcher.workers=2 applies to hydra.launcher.backend=inline only"),
    ({"connection": "deploy", "workers": 2}, "hydra.launcher.workers=2 applies to hydra.launcher.backend=inline only"),
    ({"client_num_cpus": 2}, "hydra.launcher.client_num_cpus=2 applies to hydra.launcher.backend=ray only"),
    ({"client_num_gpus": 0.25}, "hydra.launcher.client_num_gpus=0.25 applies to hydra.launcher.backend=ray only "
                                "(inline workers use a GPU directly when fl.device asks for one)"),
    ({"ray_address": "auto"}, "hydra.launcher.ray_address=auto applies to hydra.launcher.backend=ray only"),
    ({"backend": "inline", "ray_address": "10.0.0.1:6379"},
     "hydra.launcher.ray_address=10.0.0.1:6379 applies to hydra.launcher.backend=ray only"),
    ({"connection": "deploy", "ray_address": "auto"},
     "hydra.launcher.ray_address=auto applies to hydra.launcher.backend=ray only"),
    *[({"backend": "ray", "ray_address": address},
       f"hydra.launcher.ray_address={address!r} is invalid: allowed null (a private Ray), auto (the cluster "
       f"RAY_ADDRESS or the last `ray start` here names) or HOST:PORT of a Ray cluster's head")
      for address in ("", "head", "head:", ":6379", "head:0", "head:65536", "head:port", "ray://head:10001",
                      "head :6379", 6379)],
]


def options(**changes: object) -> dict[str, object]:
    values: dict[str, object] = {"connection": None, "client_num_cpus": 1, "client_num_gpus": 0.0, "backend": None,
                                 "workers": None}
    values.update(changes)
    return values


@pytest.mark.parametrize(("changes", "message"), BAD)
def test_bad_option_is_named_with_its_allowed_values(changes: dict[str, object], message: str) -> None:
    assert launcher_option_problem(**options(**changes)) == message


@pytest.mark.parametrize("changes", [
    {}, {"backend": "inline"}, {"workers": 0}, {"workers": 3}, {"backend": "inline", "workers": 1}, {"backend": "ray"},
    {"backend": "ray", "client_num_cpus": 2}, {"backend": "ray", "client_num_gpus": 0.25},
    {"backend": "ray", "client_num_gpus": 1}, {"backend": "ray", "client_num_gpus": 2.0}, {"connection": "deploy"},
    {"backend": "ray", "ray_address": "auto"}, {"backend": "ray", "ray_address": "127.0.0.1:6379"},
    {"backend": "ray", "ray_address": "head-node.cluster:6379"}, {"backend": "ray", "ray_address": "[::1]:6379"},
])
def test_good_options_pass(changes: dict[str, object]) -> None:
    assert launcher_option_problem(**options(**changes)) is None


def test_launch_rejects_a_bad_option_before_anything_starts(capsys) -> None:
    launcher = SharedSimulationLauncher(client_num_gpus=-1.0)  # never set up: launch must stop first
    with pytest.raises(SystemExit) as exit_info:
        launcher.launch([["init=random"]], 0)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: hydra.launcher.client_num_gpus=-1.0 is invalid: allowed a number >= 0 "
        "(Ray's GPU share per simulated client)"
    ]


def test_client_resources_carry_cpus_and_gpu_share() -> None:
    assert SharedSimulationLauncher().backend_config()["client_resources"] == {"num_cpus": 1, "num_gpus": 0.0}
    launcher = SharedSimulationLauncher(client_num_cpus=2, client_num_gpus=0.25)
    assert launcher.backend_config()["client_resources"] == {"num_cpus": 2, "num_gpus": 0.25}


def test_a_private_ray_keeps_its_transport_settings_and_a_joined_cluster_gets_only_its_address() -> None:
    private = SharedSimulationLauncher(backend="ray").backend_config()["init_args"]
    # "local": a private Ray even when RAY_ADDRESS is set or a `ray start` cluster runs on this machine
    assert private == {"address": "local", "include_dashboard": False,
                       "_system_config": {"max_direct_call_object_size": RAY_INLINE_BYTES}}
    joined = SharedSimulationLauncher(backend="ray", ray_address="10.0.0.1:6379").backend_config()
    assert joined["init_args"] == {"address": "10.0.0.1:6379"}  # Ray refuses _system_config from a joining driver
    assert joined["client_resources"] == {"num_cpus": 1, "num_gpus": 0.0}


def _launcher_node(*overrides: str):
    from hydra import compose, initialize_config_dir

    from initmatters.compose import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("sweep", overrides=list(overrides), return_hydra_config=True).hydra.launcher


def test_task_function_reads_this_launchers_options_and_defaults_under_another_launcher() -> None:
    defaults = {"connection": None, "client_num_cpus": 1, "client_num_gpus": 0.0, "backend": None, "workers": None,
                "ray_address": None}
    ours = launcher_options(_launcher_node("hydra.launcher.backend=ray", "hydra.launcher.client_num_cpus=2",
                                           "hydra.launcher.ray_address=auto"))
    assert ours == {**defaults, "backend": "ray", "client_num_cpus": 2, "ray_address": "auto"}
    # submitit's launchers declare none of these options: the job runs on the inline backend
    assert launcher_options(_launcher_node("hydra/launcher=submitit_local")) == defaults
    slurm = _launcher_node("hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                           "hydra.launcher.cpus_per_task=8", "hydra.launcher.gpus_per_node=1")
    assert launcher_options(slurm) == defaults
    # a launcher with an option of the same name means something else by it (joblib's backend: loky, ...)
    assert launcher_options(OmegaConf.create({"_target_": "other.Launcher", "backend": "loky"})) == defaults


def test_config_node_declares_the_gpu_share_with_default_zero() -> None:
    node = ConfigStore.instance().load("hydra/launcher/shared_simulation.yaml").node
    assert node.client_num_gpus == 0.0
    assert node.client_num_cpus == 1
    assert node.connection is None
    assert node.backend is None and node.workers is None  # null: inline, one worker per CPU
    assert node.ray_address is None  # null: a private Ray


def test_sweep_command_exits_2_with_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "initmatters.sweep", "--multirun", "debug=default",
               "hydra.launcher.client_num_cpus=0", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    completed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert completed.stderr.strip().splitlines() == [
        "error: hydra.launcher.client_num_cpus=0 is invalid: allowed a positive integer"
    ]
    assert "[sweep]" not in completed.stdout  # no job was prepared


@pytest.mark.parametrize(("option", "message"), [
    ("hydra.launcher.ray_address=auto", "hydra.launcher.ray_address=auto applies to hydra.launcher.backend=ray only"),
    ("hydra.launcher.connection=deploy", "hydra.launcher.connection=deploy applies to --multirun only (one run on a "
                                         "connection: python -m initmatters.run ... --connection NAME)"),
])
def test_single_run_exits_2_with_one_line(tmp_path: Path, option: str, message: str) -> None:
    command = [sys.executable, "-m", "initmatters.sweep", "debug=default", option, f"hydra.run.dir={tmp_path / 'run'}"]
    completed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert completed.stderr.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "run" / "rounds.csv").exists()
