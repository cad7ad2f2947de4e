"""Edge: Hydra app over conf/ for single runs and multirun sweeps.

    python -m initmatters.sweep --multirun experiment=heterogeneity_penalty
    python -m initmatters.sweep --multirun init=random,pretrained heterogeneity.h=0,0.5,1 seed=0,1,2

With --multirun the `shared_simulation` launcher (hydra_plugins/initmatters_launcher) runs all
jobs over one Flower simulation; each job writes the results contract into its Hydra job folder.
Without --multirun this runs one experiment into Hydra's run folder, on the backend that
hydra.launcher.backend names (inline by default, or ray). Any other Hydra launcher (e.g.
`hydra/launcher=submitit_slurm`, docs/cluster.md) runs `main` once per job, on the inline backend.
A job whose folder already holds a finished run of the same resolved config is not run again,
whichever launcher runs it. A bad setting (also one value of a
sweep) gets one line and exit code 2 before anything starts, as with initmatters-run.
`+experiment=` is accepted as a synonym of `experiment=` (the group is declared in conf/config.yaml
so that `debug=default` can shrink any preset). Flower's log is calmed to this project's lines and
Flower's warnings and errors; `hydra.verbose=flwr` shows all of it (with --multirun:
`hydra.launcher.quiet_flower=false`). On a terminal a live bar replaces the per-round lines (with
--multirun: the per-job lines); INITMATTERS_PROGRESS=auto|bar|plain chooses (initmatters.progress).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from initmatters.backends import engine, launcher_option_problem, launcher_options, ray_backend_config
from initmatters.compose import CONF_DIR, load_settings, override_key, override_syntax_problem, settings_from_config
from initmatters.flower_log import FLOWER_LOGGER, calm_flower_logs
from initmatters.launch import FLOWER_ENV, Interrupted, ray_startup_timed_out, stop_signals_raise
from initmatters.progress import OnRound, progress_mode, run_progress, wants_bar
from initmatters_core.results import SUMMARY_FILE, RunFiles
from initmatters_core.settings import ExperimentSettings, SettingError
from initmatters_core.tasks import load_task
from initmatters_core.trackers import check_trackers_installed


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sweep")
def main(config: DictConfig) -> None:
    """One job into Hydra's output folder, on the backend of hydra.launcher (inline by default).

    Skipped, with one line, when that folder already holds a finished run of the same resolved
    config (a re-submitted sweep resumes under any launcher).
    """
    verbose = flower_verbose(HydraConfig.get().verbose)
    calm_flower_logs(verbose)  # first: importing Flower already logs
    # Flower's console handler prints its records; Hydra's root handler would print them once more.
    logging.getLogger(FLOWER_LOGGER).propagate = verbose
    settings = settings_from_config(config)
    check_trackers_installed(settings.log)  # before any start-up
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    resolved_yaml = OmegaConf.to_yaml(config, resolve=True)
    options = launcher_options(HydraConfig.get().launcher)
    problem = launcher_option_problem(**options)
    if problem is None and options["connection"] is not None:
        problem = (f"hydra.launcher.connection={options['connection']} applies to --multirun only "
                   f"(one run on a connection: python -m initmatters.run ... --connection NAME)")
    if problem:  # one line and exit code 2, as for a bad experiment setting (not Hydra's traceback)
        print(f"error: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    if RunFiles(output_dir).holds_finished_run(resolved_yaml):
        print(f"[initmatters] {output_dir} already holds a finished run of this config: not run again", flush=True)
        return
    with run_progress(settings.fl.num_rounds, wants_bar()) as on_round:
        if engine(options["connection"], options["backend"]) == "inline":
            from initmatters.inline import run_inline

            run_inline(settings, resolved_yaml, output_dir, options["workers"], on_round=on_round)
        else:
            _run_on_ray(settings, resolved_yaml, output_dir,
                        ray_backend_config(options["client_num_cpus"], options["client_num_gpus"],
                                           options["ray_address"]), on_round)
    if not RunFiles(output_dir).finished():
        raise RuntimeError(f"the run did not finish: no {SUMMARY_FILE} in {output_dir}")


def _run_on_ray(settings: ExperimentSettings, resolved_yaml: str, output_dir: Path,
                backend_config: dict[str, Any], on_round: OnRound | None) -> None:
    """One in-process Flower simulation (Ray: a private one, or a running cluster it joins);
    on_round: the live bar's callback (None: the lines)."""
    from flwr.simulation import run_simulation

    from client_app.app import app as client_app
    from server_app.app import build_server_app

    server_app = build_server_app(settings, resolved_yaml, output_dir, on_round=on_round)
    for attempt in (1, 2):  # once more when Ray's node start-up timed out (nothing has run then)
        try:
            run_simulation(server_app=server_app, client_app=client_app, num_supernodes=settings.fl.num_clients,
                           backend_config=backend_config)
            break
        except Exception as error:
            if attempt == 2 or not ray_startup_timed_out(error) or RunFiles(output_dir).rounds.exists():
                raise
            print("[initmatters] Ray's node start-up timed out (a busy machine): starting the simulation once more",
                  flush=True)


def flower_verbose(hydra_verbose: Any) -> bool:
    """Whether Hydra's own verbosity switch asks for Flower's full log: hydra.verbose=true, or
    hydra.verbose=flwr (also in a list, e.g. [flwr,__main__])."""
    if isinstance(hydra_verbose, bool):
        return hydra_verbose
    names = [hydra_verbose] if isinstance(hydra_verbose, str) else list(hydra_verbose or [])
    return any(str(name) == FLOWER_LOGGER or str(name).startswith(f"{FLOWER_LOGGER}.") for name in names)


def normalized_argv(argv: list[str]) -> list[str]:
    """`+experiment=x` -> `experiment=x` (the experiment group is already in the defaults list)."""
    return [arg[1:] if arg.startswith("+experiment=") else arg for arg in argv]


def is_hydra_override(item: str) -> bool:
    """True for overrides of Hydra's own config (hydra.run.dir=..., hydra/launcher=...)."""
    key = override_key(item)
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def sweep_variants(overrides: Sequence[str]) -> list[list[str]]:
    """`overrides` with each value of every sweep (a,b,c / range() / choice()) once, the other sweeps
    at their first value: every value is checked without composing the whole product.

    Sweeps that only Hydra's config loader expands (glob()) or that list no values (interval()) are
    left out here: the launcher checks every job.
    """
    choices: list[list[str]] = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if not override.is_sweep_override():
            choices.append([override.input_line])
            continue
        try:
            values = [f"{override.get_key_element()}={value}" for value in override.sweep_string_iterator()]
        except HydraException:  # glob() needs Hydra's config loader
            values = []
        if values:
            choices.append(values)
    base = [values[0] for values in choices]
    variants = [base]
    for index, values in enumerate(choices):
        variants += [[*base[:index], value, *base[index + 1:]] for value in values[1:]]
    return variants


def command_line_problem(args: Sequence[str]) -> str | None:
    """The one-line problem with the experiment settings on a sweep command line (None if fine).

    Checked before Hydra starts, so a bad setting gets the one line and exit code 2 of
    initmatters-run instead of Hydra's report. Without --multirun the run's files (init.path, a
    dataset copy, the device) are checked too; with --multirun every value of each sweep is checked,
    and the launcher checks every job (combinations, presets' own sweeps) before anything starts.
    """
    parsed = get_args_parser().parse_args(list(args))  # Hydra's own: its usage errors stay its own
    if parsed.help or parsed.hydra_help or parsed.info or parsed.shell_completion:
        return None
    items = [item for item in parsed.overrides if not is_hydra_override(item)]
    problem = override_syntax_problem(items)
    if problem:
        return problem
    if not parsed.multirun:
        for override in OverridesParser.create().parse_overrides(items):
            if override.is_sweep_override():
                return f"{override.input_line} is invalid: allowed one value (sweep several with --multirun)"
    try:
        for variant in sweep_variants(items):
            settings, _ = load_settings(variant)
            if not parsed.multirun and parsed.cfg is None:
                load_task(settings).check_before_start(settings)
    except SettingError as error:
        return str(error)
    return None


def check_command_line(args: Sequence[str]) -> int:
    """0 when the command line's settings (and INITMATTERS_PROGRESS) are fine; else print their
    one-line `error: ...` and return 2."""
    try:
        progress_mode()
    except SettingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    problem = command_line_problem(normalized_argv(list(args)))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


def cli() -> None:
    """Console script `initmatters-sweep` (and `python -m initmatters.sweep`)."""
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
    code = check_command_line(sys.argv[1:])
    if code:
        raise SystemExit(code)
    sys.argv = normalized_argv(sys.argv)
    try:
        with stop_signals_raise():
            main()
    except Interrupted as stop:
        print(f"initmatters-sweep: stopped by {stop}; every process it started is stopped; run the same command "
              f"again to resume (finished jobs are skipped, an interrupted one continues from its checkpoint)",
              file=sys.stderr, flush=True)
        raise SystemExit(stop.exit_code) from None


if __name__ == "__main__":
    cli()
