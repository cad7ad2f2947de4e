"""Edge: Hydra app over conf/ for single runs and multirun sweeps.

    python -m initmatters.sweep --multirun experiment=heterogeneity_penalty
    python -m initmatters.sweep --multirun init=random,pretrained heterogeneity.h=0,0.5,1 seed=0,1,2

With --multirun the `shared_simulation` launcher (hydra_plugins/initmatters_launcher) runs all
jobs over one Flower simulation; each job writes the results contract into its Hydra job folder.
Without --multirun this runs one experiment into Hydra's run folder, on the backend that
hydra.launcher.backend names (inline by default, or ray). `+experiment=`
is accepted as a synonym of `experiment=` (the group is declared in conf/config.yaml so that
`debug=default` can shrink any preset).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.initmatters_launcher.shared_simulation_launcher import launcher_option_problem
from initmatters.compose import CONF_DIR, settings_from_config
from initmatters.launch import FLOWER_ENV, ray_startup_timed_out
from initmatters_core.results import SUMMARY_FILE, RunFiles
from initmatters_core.settings import ExperimentSettings, SettingError
from initmatters_core.trackers import check_trackers_installed


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sweep")
def main(config: DictConfig) -> None:
    """One job into Hydra's output folder, on the backend of hydra.launcher (inline by default)."""
    settings = settings_from_config(config)
    check_trackers_installed(settings.log)  # before any start-up
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    resolved_yaml = OmegaConf.to_yaml(config, resolve=True)
    launcher = HydraConfig.get().launcher
    problem = launcher_option_problem(launcher.get("connection"), launcher.get("client_num_cpus", 1),
                                      launcher.get("client_num_gpus", 0.0), launcher.get("backend"),
                                      launcher.get("workers"))
    if problem:
        raise SettingError(problem)
    if launcher.get("connection") is not None:
        raise SettingError(f"hydra.launcher.connection={launcher.get('connection')} applies to --multirun only "
                           f"(one run on a connection: python -m initmatters.run ... --connection NAME)")
    if (launcher.get("backend") or "inline") == "inline":
        from initmatters.inline import run_inline

        run_inline(settings, resolved_yaml, output_dir, launcher.get("workers"))
    else:
        _run_on_ray(settings, resolved_yaml, output_dir, launcher.get("client_num_cpus", 1),
                    launcher.get("client_num_gpus", 0.0))
    if not RunFiles(output_dir).finished():
        raise RuntimeError(f"the run did not finish: no {SUMMARY_FILE} in {output_dir}")


def _run_on_ray(settings: ExperimentSettings, resolved_yaml: str, output_dir: Path, num_cpus: int,
                num_gpus: float) -> None:
    """One in-process Flower simulation (Ray)."""
    from flwr.simulation import run_simulation

    from client_app.app import app as client_app
    from server_app.app import build_server_app

    server_app = build_server_app(settings, resolved_yaml, output_dir)
    for attempt in (1, 2):  # once more when Ray's node start-up timed out (nothing has run then)
        try:
            run_simulation(server_app=server_app, client_app=client_app, num_supernodes=settings.fl.num_clients,
                           backend_config={"client_resources": {"num_cpus": num_cpus, "num_gpus": float(num_gpus)}})
            break
        except Exception as error:
            if attempt == 2 or not ray_startup_timed_out(error) or RunFiles(output_dir).rounds.exists():
                raise
            print("[initmatters] Ray's node start-up timed out (a busy machine): starting the simulation once more",
                  flush=True)


def normalized_argv(argv: list[str]) -> list[str]:
    """`+experiment=x` -> `experiment=x` (the experiment group is already in the defaults list)."""
    return [arg[1:] if arg.startswith("+experiment=") else arg for arg in argv]


def cli() -> None:
    """Console script `initmatters-sweep` (and `python -m initmatters.sweep`)."""
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
    sys.argv = normalized_argv(sys.argv)
    main()


if __name__ == "__main__":
    cli()
