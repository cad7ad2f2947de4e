"""Edge: Hydra app over conf/ for single runs and multirun sweeps.

    python -m initmatters.sweep --multirun experiment=heterogeneity_penalty
    python -m initmatters.sweep --multirun init=random,pretrained heterogeneity.h=0,0.5,1 seed=0,1,2

With --multirun the `shared_simulation` launcher (hydra_plugins/initmatters_launcher) runs all
jobs over one Flower simulation; each job writes the results contract into its Hydra job folder.
Without --multirun this runs one in-process simulation into Hydra's run folder. `+experiment=`
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

from initmatters.compose import CONF_DIR, settings_from_config
from initmatters.launch import FLOWER_ENV, ray_startup_timed_out
from initmatters_core.results import SUMMARY_FILE, RunFiles
from initmatters_core.trackers import check_trackers_installed


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sweep")
def main(config: DictConfig) -> None:
    """One job: an in-process Flower simulation writing into Hydra's output folder."""
    from flwr.simulation import run_simulation

    from client_app.app import app as client_app
    from server_app.app import build_server_app

    settings = settings_from_config(config)
    check_trackers_installed(settings.log)  # before Ray starts
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    server_app = build_server_app(settings, OmegaConf.to_yaml(config, resolve=True), output_dir)
    for attempt in (1, 2):  # once more when Ray's node start-up timed out (nothing has run then)
        try:
            run_simulation(server_app=server_app, client_app=client_app, num_supernodes=settings.fl.num_clients,
                           backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
            break
        except Exception as error:
            if attempt == 2 or not ray_startup_timed_out(error) or RunFiles(output_dir).rounds.exists():
                raise
            print("[initmatters] Ray's node start-up timed out (a busy machine): starting the simulation once more",
                  flush=True)
    if not RunFiles(output_dir).finished():
        raise RuntimeError(f"the run did not finish: no {SUMMARY_FILE} in {output_dir}")


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
