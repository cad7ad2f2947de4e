"""Edge: run one experiment on this machine (inline backend, default), on Flower's Ray simulation
engine through `flwr run`, or on a Flower connection (e.g. a real deployment).

    python -m initmatters.run [HYDRA OVERRIDES ...] [--output-dir DIR] [--backend inline|ray] [--connection NAME]
                              [--verbose]
    initmatters-run [the same]

Validates the settings first (a bad one fails in a second, before any start-up) and exits 0 only
if the run wrote its summary.json (plain `flwr run --stream` exits 0 even when the run failed).
`--backend inline` runs the ServerApp here and the ClientApp in long-lived worker processes
(initmatters.inline); `--backend ray` starts a private simulation SuperLink and `flwr run` with one
SuperNode per client. Both give bit-identical results. The terminal shows the run's progress and
result lines and Flower's warnings and errors; --verbose shows Flower's full log. On a terminal the
per-round lines become a live bar (INITMATTERS_PROGRESS=auto|bar|plain, initmatters.progress).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from initmatters.backends import BACKENDS
from initmatters.compose import CONF_DIR, absolute_path_overrides, group_options, load_settings
from initmatters.failure import report_failure
from initmatters.flower_log import calm_flower_logs, is_flower_noise
from initmatters.launch import (
    DEFAULT_FLWR_HOME,
    PROJECT_ROOT,
    Interrupted,
    flower_env,
    flwr_run,
    simulation_superlink,
    stop_signals_raise,
)
from initmatters.progress import PROGRESS_ENV, OnRound, run_progress, streamed_rounds_to, wants_bar
from initmatters_core.results import RunFiles, default_output_dir, lock_holder, output_dir_problem
from initmatters_core.settings import ExperimentSettings, SettingError
from initmatters_core.tasks import load_task
from initmatters_core.trackers import check_trackers_installed

GROUPS = ("data", "model", "init", "heterogeneity", "fl", "strategy", "experiment", "debug")
MAIN_SETTINGS = ("seed", "fl.num_rounds", "fl.num_clients", "fl.local_steps", "fl.lr", "heterogeneity.h",
                 "init.steps", "model.init_std", "data.dim")


def settings_help() -> str:
    """The epilog of --help: every config group with its options, and the main settings."""
    lines = ["config groups (choose with <group>=<option>):"]
    lines += [f"  {group:<14} {' | '.join(group_options(group))}" for group in GROUPS]
    lines += ["", f"main settings (set with <key>=<value>; all of them: conf/ in {CONF_DIR}):",
              "  " + " ".join(MAIN_SETTINGS), "",
              "examples:", "  initmatters-run init=pretrained heterogeneity.h=1.0 fl.local_steps=50",
              "  initmatters-run data=digits fl.num_rounds=2", "  initmatters-run --cfg job strategy=fedadam", "",
              f"progress: a live bar on a terminal, plain lines otherwise; {PROGRESS_ENV}=auto|bar|plain chooses"]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m initmatters.run", description=__doc__.split("\n\n")[0],
                                     epilog=settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. init=pretrained heterogeneity.h=1.0")
    parser.add_argument("--output-dir", type=Path, default=None, help="results folder (default: outputs/<date>/<time>)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="local simulation engine: inline (default; client worker processes, no Ray) or ray "
                             "(Flower's simulation engine through `flwr run`: GPUs shared by Ray, Ray clusters)")
    parser.add_argument("--workers", type=int, default=None,
                        help="inline backend: client worker processes (default: one per CPU, at most one per "
                             "client; 0 = clients run in this process)")
    parser.add_argument("--connection", default=None,
                        help="a SuperLink connection of $FLWR_HOME/config.toml (default: a local simulation)")
    parser.add_argument("--flwr-home", type=Path, default=DEFAULT_FLWR_HOME,
                        help="FLWR_HOME (default: .flwr/ in the checkout)")
    parser.add_argument("--client-gpus", type=float, default=None,
                        help="ray backend: GPU share of each simulated client (e.g. 0.2 = five per GPU); default: "
                             "1/K of the GPU when fl.device is cuda or auto and a GPU is visible, else 0")
    parser.add_argument("--cfg", choices=["job"], default=None,
                        help="print the resolved configuration and exit (nothing runs)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--verbose", action="store_true",
                        help="show Flower's full log (default: this project's progress and result lines, "
                             "Flower's warnings and errors)")
    args = parser.parse_args(argv)
    if args.client_gpus is not None and not (args.client_gpus >= 0.0 and args.client_gpus < float("inf")):
        parser.error(f"--client-gpus={args.client_gpus} is invalid: allowed a number >= 0")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers={args.workers} is invalid: allowed an integer >= 0")
    if args.connection and args.backend:
        parser.error(f"--backend={args.backend} does not apply with --connection (the connection's SuperLink "
                     f"runs the clients): give one of them")
    if args.connection is None and args.backend is None:
        args.backend = "inline"
    if args.workers is not None and args.backend != "inline":
        parser.error(f"--workers={args.workers} applies to --backend inline only (the ray backend and a "
                     f"connection place clients themselves)")
    if args.client_gpus is not None and args.backend != "ray":
        parser.error(f"--client-gpus={args.client_gpus:g} applies to --backend ray only (inline workers use "
                     f"a GPU directly when fl.device asks for one)")
    return args


def load_settings_or_report(overrides: Sequence[str], *, local_data: bool = True
                            ) -> tuple[ExperimentSettings, str, list[str]] | None:
    """(settings, resolved YAML, overrides with absolute paths); on a bad setting, print its one-line
    `error: ...` to stderr and return None (the command line then exits 2).

    Path settings (init.path, data.data_dir) are made absolute against this working directory, so
    the ServerApp (whose working directory is the SuperLink's) finds the same files.
    local_data: the run happens on this machine, so what it needs beyond valid settings (an image
    dataset, the training device, an init file, the packages of log.tensorboard / log.wandb) is
    checked the same way, before anything starts.
    """
    try:
        absolute = absolute_path_overrides(overrides, Path.cwd())
        settings, resolved_yaml = load_settings(absolute)
        if local_data:
            load_task(settings).check_before_start(settings)
            check_trackers_installed(settings.log)
        return settings, resolved_yaml, absolute
    except SettingError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def gpu_note(settings: ExperimentSettings) -> str | None:
    """A line for the user when fl.device asks for a GPU and none is visible (None otherwise)."""
    if settings.fl.device not in ("cuda", "auto"):
        return None
    import torch

    if torch.cuda.is_available():
        return None
    return f"fl.device={settings.fl.device}: no GPU is visible here, the clients train on the CPU"


def client_gpu_share(settings: ExperimentSettings, requested: float | None) -> tuple[float, str | None]:
    """Ray backend: (GPU share per simulated client, a line to tell the user or None).

    Ray hides GPUs from clients that ask for none, so fl.device=cuda|auto alone would train on the
    CPU in simulation: when a GPU is visible and no share was given, each client gets 1/K of it.
    """
    wants_gpu = settings.fl.device in ("cuda", "auto")
    if requested is not None:
        if wants_gpu and requested == 0:
            return 0.0, f"fl.device={settings.fl.device} but --client-gpus=0: the clients train on the CPU"
        return requested, None
    if not wants_gpu:
        return 0.0, None
    import torch

    if not torch.cuda.is_available():
        return 0.0, f"fl.device={settings.fl.device}: no GPU is visible here, the clients train on the CPU"
    share = 1.0 / settings.fl.num_clients
    return share, f"fl.device={settings.fl.device}: each simulated client gets {share:g} of the GPU (--client-gpus)"


def output_dir_error(output_dir: Path) -> str | None:
    """The one-line problem with starting a run in `output_dir` (None if fine)."""
    files = RunFiles(output_dir)
    if files.finished():
        return f"--output-dir={output_dir} already holds a finished run: choose another folder"
    holder = lock_holder(files)
    if holder is not None:
        return f"--output-dir={output_dir} is in use by PID {holder} (another run writes there): choose another folder"
    return output_dir_problem(output_dir)


def resume_command(overrides: Sequence[str], output_dir: Path) -> str:
    """The command that continues an interrupted run from its checkpoint."""
    return shlex.join(["python", "-m", "initmatters.run", *overrides, "--output-dir", str(output_dir)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        with stop_signals_raise():
            return _main(args)
    except Interrupted as stop:
        print(f"initmatters: stopped by {stop}; every process it started is stopped", file=sys.stderr)
        return stop.exit_code
    except Exception as error:  # a one-line error for the user; --debug shows the traceback
        return report_failure(error, args.debug)


def _main(args: argparse.Namespace) -> int:
    try:
        bar = wants_bar()
    except SettingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    loaded = load_settings_or_report(args.overrides, local_data=args.connection is None and args.cfg is None)
    if loaded is None:
        return 2
    settings, resolved_yaml, overrides = loaded
    if args.cfg == "job":
        print(resolved_yaml, end="")
        return 0
    output_dir = (args.output_dir or default_output_dir(PROJECT_ROOT)).resolve()
    problem = output_dir_error(output_dir)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    where = f"backend={args.backend}" if args.backend else f"connection={args.connection}"
    print(f"initmatters: {settings.fl.num_clients} clients, {settings.fl.num_rounds} rounds, "
          f"init={settings.init.name}, heterogeneity={settings.heterogeneity.name}, "
          f"strategy={settings.strategy.name}, {where}; results -> {output_dir}", flush=True)
    try:
        with run_progress(settings.fl.num_rounds, bar) as on_round:
            if args.backend == "inline":
                _run_inline(args, settings, resolved_yaml, output_dir, on_round)
            else:
                _run_with_flwr(args, settings, overrides, output_dir, on_round)
    except Interrupted as stop:
        files = RunFiles(output_dir)
        resume = (f"; resume it with: {resume_command(overrides, output_dir)}" if files.interrupted()
                  else " before its first checkpoint")
        print(f"initmatters: stopped by {stop}; every process it started is stopped{resume}", file=sys.stderr)
        return stop.exit_code
    if not RunFiles(output_dir).finished():
        print(f"error: the run did not finish (no summary.json in {output_dir}); see the log above", file=sys.stderr)
        return 1
    print(f"initmatters: finished; results in {output_dir}", flush=True)
    return 0


def _run_inline(args: argparse.Namespace, settings: ExperimentSettings, resolved_yaml: str,
                output_dir: Path, on_round: OnRound | None) -> None:
    """The ServerApp in this process, the ClientApp in worker processes (initmatters.inline);
    on_round: the live bar's callback (None: the per-round lines)."""
    from initmatters.inline import run_inline

    note = gpu_note(settings)
    if note:
        print(f"initmatters: {note}", flush=True)
    calm_flower_logs(args.verbose)
    run_inline(settings, resolved_yaml, output_dir, args.workers, env=flower_env(args.flwr_home.resolve()),
               on_round=on_round)


def _run_with_flwr(args: argparse.Namespace, settings: ExperimentSettings, overrides: list[str],
                   output_dir: Path, on_round: OnRound | None) -> None:
    """`flwr run` on a private simulation SuperLink (ray backend) or on args.connection; on_round:
    the live bar's callback, fed from the streamed progress lines (None: the lines pass through)."""
    flwr_home = args.flwr_home.resolve()
    run_config = {"overrides": shlex.join(overrides), "output-dir": str(output_dir), "verbose": args.verbose}
    if args.connection:
        superlink = nullcontext(flower_env(flwr_home))
        federation_config = None
    else:
        superlink = simulation_superlink(flwr_home)
        share, note = client_gpu_share(settings, args.client_gpus)
        if note:
            print(f"initmatters: {note}", flush=True)
        federation_config = {"num-supernodes": settings.fl.num_clients, "client-resources-num-cpus": 1,
                             "client-resources-num-gpus": share}
    drop_line = None if args.verbose else is_flower_noise
    if on_round is not None:
        drop_line = streamed_rounds_to(on_round, drop_line)
    with superlink as env:
        flwr_run(PROJECT_ROOT, env, run_config, federation_config, args.connection, drop_line=drop_line)


if __name__ == "__main__":
    sys.exit(main())
