"""Edge: run one experiment through `flwr run` on a private local simulation SuperLink.

    python -m initmatters.run [HYDRA OVERRIDES ...] [--output-dir DIR] [--connection NAME]

Validates the settings first (a bad one fails in a second, before any start-up), sets the Flower
environment, runs the app with one SuperNode per client, and exits 0 only if the run wrote its
summary.json (plain `flwr run --stream` exits 0 even when the run failed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from initmatters.compose import load_settings
from initmatters.launch import DEFAULT_FLWR_HOME, PROJECT_ROOT, flower_env, flwr_run, simulation_superlink
from initmatters_core.results import SUMMARY_FILE, default_output_dir
from initmatters_core.settings import ExperimentSettings, SettingError
from initmatters_core.tasks import load_task


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m initmatters.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. init=pretrained heterogeneity.h=1.0")
    parser.add_argument("--output-dir", type=Path, default=None, help="results folder (default: outputs/<date>/<time>)")
    parser.add_argument("--connection", default=None,
                        help="a SuperLink connection of $FLWR_HOME/config.toml (default: a private local simulation)")
    parser.add_argument("--flwr-home", type=Path, default=DEFAULT_FLWR_HOME,
                        help="FLWR_HOME (default: .flwr/ in the checkout)")
    parser.add_argument("--client-gpus", type=float, default=0.0,
                        help="GPU share of each simulated client (e.g. 0.2 = five per GPU; default 0: none)")
    args = parser.parse_args(argv)
    if not (args.client_gpus >= 0.0 and args.client_gpus < float("inf")):
        parser.error(f"--client-gpus={args.client_gpus} is invalid: allowed a number >= 0")
    return args


def load_settings_or_report(overrides: Sequence[str], *, local_data: bool = True
                            ) -> tuple[ExperimentSettings, str] | None:
    """load_settings(overrides) (settings, resolved YAML); on a bad setting, print its one-line
    `error: ...` to stderr and return None (the command line then exits 2).

    local_data: the clients run on this machine, so data they need and do not have (e.g. an image
    dataset neither in data.data_dir nor downloadable) is reported the same way, before anything starts.
    """
    try:
        settings, resolved_yaml = load_settings(overrides)
        if local_data:
            load_task(settings).check_local_data(settings)
        return settings, resolved_yaml
    except SettingError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    loaded = load_settings_or_report(args.overrides, local_data=args.connection is None)
    if loaded is None:
        return 2
    settings, _ = loaded
    output_dir = (args.output_dir or default_output_dir(PROJECT_ROOT)).resolve()
    if (output_dir / SUMMARY_FILE).exists():
        print(f"error: --output-dir={output_dir} already holds a finished run: choose another folder", file=sys.stderr)
        return 2
    print(f"initmatters: {settings.fl.num_clients} clients, {settings.fl.num_rounds} rounds, "
          f"init={settings.init.name}, heterogeneity={settings.heterogeneity.name}; results -> {output_dir}",
          flush=True)
    flwr_home = args.flwr_home.resolve()
    run_config = {"overrides": " ".join(args.overrides), "output-dir": str(output_dir)}
    if args.connection:
        superlink = nullcontext(flower_env(flwr_home))
        federation_config = None
    else:
        superlink = simulation_superlink(flwr_home)
        federation_config = {"num-supernodes": settings.fl.num_clients, "client-resources-num-cpus": 1,
                             "client-resources-num-gpus": args.client_gpus}
    with superlink as env:
        flwr_run(PROJECT_ROOT, env, run_config, federation_config, args.connection)
    if not (output_dir / SUMMARY_FILE).exists():
        print(f"error: the run did not finish (no {SUMMARY_FILE} in {output_dir}); see the log above", file=sys.stderr)
        return 1
    print(f"initmatters: finished; results in {output_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
