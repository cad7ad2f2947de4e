"""Hydra launcher that runs a whole multirun over one set of simulated clients.

(No `from __future__ import annotations` here: Hydra loads plugin modules in a way that
breaks dataclasses with string annotations.)

Clients of this project are stateless (each message carries the run's settings), so consecutive
experiments can share one set of simulated SuperNodes, and every job runs through Hydra's own
`run_job` (job folders, .hydra/ files, output_dir as usual). Two engines (hydra.launcher.backend):
inline (default): the client worker processes of initmatters.inline are started once and serve
every job (no Ray, no polling); ray: one Flower simulation (Ray) per distinct `fl.num_clients`,
its ServerApp running every job on the same grid (Flower's run_simulation starts Ray on every
call, ~8 s here; with hydra.launcher.ray_address it joins a running Ray cluster instead).
Results are bit-identical across the two.

It also makes sweeps livable: every job's settings are checked before anything starts (a bad
one: a one-line error, exit 2), a progress line per job (done/total, time left; on a terminal a live
bar instead, see initmatters.progress: INITMATTERS_PROGRESS=auto|bar|plain), a job failing
while it runs is reported with its overrides and the others go on, and a job whose folder
already holds a finished run of the same resolved config is skipped (resume with the same
hydra.sweep.dir).
With `hydra.launcher.connection=<name>` every job goes through `flwr run` to that Flower
connection instead (e.g. a real deployment).

Options (hydra.launcher.*), checked before anything starts (a bad one: a one-line error, exit 2):
backend (inline|ray; null = inline, or the connection when one is given), workers (inline: client
worker processes, null = one per CPU, 0 = clients in the sweep process), connection (a Flower
connection name, or null for the shared simulation), client_num_cpus (ray: Ray CPUs per simulated
client, a positive integer), client_num_gpus (ray: Ray's GPU share per simulated client, a number
>= 0, e.g. 0.25 puts four clients on a GPU; 0 = CPU only), ray_address (ray: null = a private Ray
started for the simulation; auto or HOST:PORT = join that running Ray cluster, see docs/cluster.md),
quiet_flower.

Other Hydra launchers (e.g. hydra-submitit-launcher's submitit_slurm) run initmatters.sweep's task
function `main` once per job instead, which applies the same resume rule.
"""

import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from initmatters.backends import (
    LAUNCHER_TARGET,
    REPLY_POLL_S,
    LauncherOptions,
    engine,
    launcher_option_problem,
    ray_backend_config,
)

log = logging.getLogger(__name__)

@dataclass
class SharedSimulationLauncherConf(LauncherOptions):
    _target_: str = LAUNCHER_TARGET
    quiet_flower: bool = True  # hide Flower's INFO logs and expected warnings (the launcher prints per job)


ConfigStore.instance().store(
    group="hydra/launcher", name="shared_simulation", node=SharedSimulationLauncherConf, provider="initmatters"
)


def torch_threads_for_server() -> None:
    """One torch thread in the sweep process (central evaluation): the cores go to the actors."""
    import torch

    torch.set_num_threads(1)


class SweepJobFailed(RuntimeError):
    """A sweep job failed; the message holds its number, overrides and reason."""


@dataclass
class _Job:
    index: int
    overrides: list[str]
    config: DictConfig
    output_dir: Path
    settings: Any = None  # ExperimentSettings once validated
    resolved_yaml: str = ""
    finished_before: bool = False
    resumable: bool = False


@dataclass
class _Progress:
    """The sweep's progress: one line per finished job, or a live bar (initmatters.progress.SweepBar)
    that shows them instead (a failed job's line is still printed, above the bar)."""

    total: int
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    failed: int = 0
    resumed: int = 0
    job_seconds: list[float] = field(default_factory=list)
    bar: Any = None  # a SweepBar while it is shown, else None (plain lines)

    def starting(self, job: _Job) -> None:
        if self.bar is not None:
            self.bar.job_started(f"#{job.index} {_label(job)}", job.settings.fl.num_rounds)

    @property
    def on_round(self) -> Callable[[Any], None] | None:
        """The current job's on_round callback: the bar's, or None (its round lines go to the debug log)."""
        return None if self.bar is None else self.bar.round_done

    def record(self, job: _Job, status: str, seconds: float | None, detail: str) -> None:
        self.done += 1
        self.failed += status == "FAILED"
        self.resumed += status == "resumed"
        if seconds is not None:
            self.job_seconds.append(seconds)
        remaining = self.total - self.done
        mean = sum(self.job_seconds) / len(self.job_seconds) if self.job_seconds else 0.0
        elapsed = time.monotonic() - self.started
        if self.bar is not None:
            self.bar.job_finished(self.done, self.failed, self.resumed, mean * remaining if self.job_seconds else None)
            if status != "FAILED":
                return
        print(
            f"[sweep] {self.done}/{self.total} jobs ({self.failed} failed, {self.resumed} resumed) | "
            f"#{job.index} {_label(job)}: {status} {detail} | "
            f"{elapsed:.0f}s elapsed, ~{mean * remaining:.0f}s left",
            flush=True,
        )


def _label(job: _Job) -> str:
    return " ".join(job.overrides) or "(defaults)"


class SharedSimulationLauncher(Launcher):
    def __init__(self, quiet_flower: bool = True, **options: Any) -> None:
        """options: LauncherOptions' fields (where the clients run); an unknown one is a TypeError."""
        super().__init__()
        self.options = LauncherOptions(**options)
        self.quiet_flower = quiet_flower
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        problem = launcher_option_problem(**asdict(self.options))
        from initmatters.progress import SweepBar, wants_bar
        from initmatters_core.settings import SettingError

        try:
            bar = wants_bar()
        except SettingError as error:  # INITMATTERS_PROGRESS
            problem = problem or str(error)
        if problem:  # before any start-up, like a bad experiment setting
            print(f"error: {problem}", file=sys.stderr, flush=True)
            raise SystemExit(2)
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        from initmatters.flower_log import calm_flower_logs

        calm_flower_logs(verbose=not self.quiet_flower)  # also Flower's start-up lines, before any job
        torch_threads_for_server()
        try:  # every job's settings, before anything starts: a bad one stops the sweep like a bad option
            jobs = [self._prepare(initial_job_idx + i, list(overrides)) for i, overrides in enumerate(job_overrides)]
        except SettingError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        print(f"[sweep] {len(jobs)} jobs -> {sweep_dir}", flush=True)
        progress = _Progress(total=len(jobs))
        with (SweepBar(len(jobs)).shown() if bar else nullcontext()) as progress.bar:
            returns = self._run_all(jobs, progress)
        failed = [job for job in jobs if returns[job.index].status == JobStatus.FAILED]
        print(f"[sweep] finished {len(jobs) - len(failed)}/{len(jobs)} jobs in "
              f"{time.monotonic() - progress.started:.0f}s; results in {sweep_dir}", flush=True)
        for job in failed:
            print(f"[sweep] FAILED {returns[job.index]._return_value}", flush=True)
        if failed:  # a clean non-zero exit instead of Hydra re-raising the first failure with a traceback
            raise SystemExit(1)
        return [returns[job.index] for job in jobs]

    def _run_all(self, jobs: list[_Job], progress: _Progress) -> dict[int, JobReturn]:
        """Every job's JobReturn by index: finished ones resumed, the others run on the chosen engine."""
        returns: dict[int, JobReturn] = {}
        for job in jobs:
            if job.finished_before:
                returns[job.index] = self._resumed(job, progress)
        pending = [job for job in jobs if job.index not in returns]
        if pending and engine(self.options.connection, self.options.backend) == "inline":
            returns.update(self._run_inline(pending, progress))
            pending = []
        for num_clients in sorted({job.settings.fl.num_clients for job in pending}):
            group = [job for job in pending if job.settings.fl.num_clients == num_clients]
            if self.options.connection:
                for job in group:
                    returns[job.index] = self._run_with_flwr(job, progress)
            else:
                returns.update(self._run_in_shared_simulation(group, num_clients, progress))
        return returns

    # -- preparing jobs --------------------------------------------------------------------------

    def _prepare(self, index: int, overrides: list[str]) -> _Job:
        """Compose the job's config, find its folder, validate its settings (and, in the shared simulation,
        that the packages of its trackers are installed), check for resume.

        Raises SettingError (one line naming the setting) for a job Hydra cannot compose or whose
        settings are invalid.
        """
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        from initmatters.compose import composition_problem, settings_from_config
        from initmatters_core.results import RunFiles
        from initmatters_core.settings import SettingError
        from initmatters_core.trackers import check_trackers_installed

        assert self.config is not None and self.hydra_context is not None
        try:
            config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        except (HydraException, OmegaConfBaseException) as error:
            raise SettingError(composition_problem(error, overrides)) from None
        with open_dict(config):
            config.hydra.job.id = index
            config.hydra.job.num = index
        HydraConfig.instance().set_config(config)
        output_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        job = _Job(index, filter_overrides(overrides), config, output_dir.resolve())
        task_config = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
        job.settings = settings_from_config(task_config)
        if not self.options.connection:  # the trackers' packages are needed where the server runs
            check_trackers_installed(job.settings.log)
        job.resolved_yaml = OmegaConf.to_yaml(task_config, resolve=True)
        files = RunFiles(job.output_dir)
        job.finished_before = files.holds_finished_run(job.resolved_yaml)
        job.resumable = files.holds_interrupted_run(job.resolved_yaml)  # continues from its checkpoint
        return job

    def _resumed(self, job: _Job, progress: _Progress) -> JobReturn:
        """The JobReturn of a job that finished earlier (same resolved config in its folder)."""
        progress.record(job, "resumed", None, f"(finished run in {job.output_dir})")
        return self._job_return(job, JobStatus.COMPLETED, "resumed")

    def _job_return(self, job: _Job, status: JobStatus, value: Any) -> JobReturn:
        result = JobReturn(overrides=job.overrides, cfg=job.config, hydra_cfg=job.config,
                           working_dir=str(job.output_dir), task_name=str(job.config.hydra.job.name), status=status)
        result.return_value = value
        return result

    @staticmethod
    def _failure(job: _Job, reason: str) -> str:
        return f"#{job.index} {' '.join(job.overrides)}: {reason}"

    # -- running jobs ----------------------------------------------------------------------------

    def _run_in_shared_simulation(
        self, group: list[_Job], num_clients: int, progress: _Progress
    ) -> dict[int, JobReturn]:
        """Run every job of `group` on one in-process simulation with `num_clients` SuperNodes."""
        from flwr.serverapp import Grid, ServerApp
        from flwr.simulation import run_simulation

        from client_app.app import app as client_app

        returns: dict[int, JobReturn] = {}
        server_app = ServerApp()

        @server_app.main()
        def run_all(grid: Grid, context: Any) -> None:
            if hasattr(grid, "pull_interval"):  # InMemoryGrid polls replies every 100 ms by default
                grid.pull_interval = REPLY_POLL_S
            for job in group:
                returns[job.index] = self._run_job_on_grid(job, grid, progress)

        from initmatters.launch import ray_startup_timed_out

        where = f" on the Ray cluster at {self.options.ray_address}" if self.options.ray_address else ""
        print(f"[sweep] one Flower simulation with {num_clients} SuperNodes for {len(group)} jobs{where}", flush=True)
        for attempt in (1, 2):  # once more when Ray's node start-up timed out before any job ran
            try:
                run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_clients,
                               backend_config=self.backend_config())
                break
            except Exception as error:
                if attempt == 2 or returns or not ray_startup_timed_out(error):
                    raise
                print("[sweep] Ray's node start-up timed out (a busy machine): starting the simulation once more",
                      flush=True)
        for job in group:  # a simulation that died before reaching a job
            if job.index not in returns:
                returns[job.index] = self._job_return(
                    job, JobStatus.FAILED, SweepJobFailed(self._failure(job, "the shared simulation stopped early")))
        return returns

    def _run_inline(self, jobs: list[_Job], progress: _Progress) -> dict[int, JobReturn]:
        """Run every job on one set of inline client workers (initmatters.inline), one after another."""
        from initmatters.inline import InlineGrid, client_runner, default_workers, take_server_identity
        from initmatters.launch import FLOWER_ENV
        from initmatters_core.tasks import task_module_name

        largest = max(job.settings.fl.num_clients for job in jobs)
        workers = default_workers(largest) if self.options.workers is None else self.options.workers
        print(f"[sweep] {workers} client worker process(es) for {len(jobs)} jobs (backend=inline)", flush=True)
        take_server_identity()
        tasks = sorted({task_module_name(job.settings) for job in jobs})
        with client_runner(workers, env={**FLOWER_ENV, **os.environ}, preload=tasks) as runner:
            return {job.index: self._run_job_on_grid(job, InlineGrid(runner, job.settings.fl.num_clients), progress)
                    for job in jobs}

    def backend_config(self) -> dict[str, Any]:
        """run_simulation's backend_config for this launcher's options."""
        return ray_backend_config(self.options.client_num_cpus, self.options.client_num_gpus,
                                  self.options.ray_address)

    def _run_job_on_grid(self, job: _Job, grid: Any, progress: _Progress) -> JobReturn:
        from server_app.experiment import run_federated

        started = time.monotonic()
        progress.starting(job)

        def task(_: DictConfig) -> dict[str, Any]:
            if self.quiet_flower:  # run_job has just reconfigured logging for this job
                flower_logger = logging.getLogger("flwr")
                flower_logger.setLevel(logging.WARNING)
                flower_logger.propagate = False
            return run_federated(grid, job.settings, job.resolved_yaml, job.output_dir, report=log.debug,
                                 resume=job.resumable, on_round=progress.on_round)

        assert self.hydra_context is not None
        result = run_job(hydra_context=self.hydra_context, task_function=task, config=job.config,
                         job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        seconds = time.monotonic() - started
        if result.status == JobStatus.COMPLETED:
            final = result.return_value["final"]
            progress.record(job, "done", seconds, f"(test_error {final['test_error']:.4f}, {seconds:.1f}s)")
        else:
            reason = " ".join(str(result._return_value).split())
            progress.record(job, "FAILED", seconds, f"({reason})")
            result.return_value = SweepJobFailed(self._failure(job, reason))
        return result

    def _run_with_flwr(self, job: _Job, progress: _Progress) -> JobReturn:
        """One job through `flwr run <project> <connection>`; success = its summary.json exists."""
        from initmatters.launch import DEFAULT_FLWR_HOME, PROJECT_ROOT, flower_env, flwr_run
        from initmatters.progress import streamed_rounds_to
        from initmatters_core.results import SUMMARY_FILE

        started = time.monotonic()
        progress.starting(job)
        job.output_dir.mkdir(parents=True, exist_ok=True)
        run_config = {"overrides": shlex.join(job.overrides), "output-dir": str(job.output_dir)}
        on_round = progress.on_round
        flwr_run(PROJECT_ROOT, flower_env(DEFAULT_FLWR_HOME), run_config, connection=self.options.connection,
                 drop_line=None if on_round is None else streamed_rounds_to(on_round, None))
        seconds = time.monotonic() - started
        if (job.output_dir / SUMMARY_FILE).is_file():
            progress.record(job, "done", seconds, f"({seconds:.1f}s via {self.options.connection})")
            return self._job_return(job, JobStatus.COMPLETED, str(job.output_dir))
        reason = f"the run on connection {self.options.connection!r} did not finish (no {SUMMARY_FILE})"
        progress.record(job, "FAILED", seconds, f"({reason})")
        return self._job_return(job, JobStatus.FAILED, SweepJobFailed(self._failure(job, reason)))
