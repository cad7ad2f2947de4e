"""One experiment on a connected grid: w(0), node discovery, the strategy, checkpoints, results.

Task-agnostic: the task's `server_setup` gives w(0) as a state dict and the global model's
measurements (test error and alignment, logged by evaluate_fn every round); the strategy
(conf/strategy/, with ExperimentTracking) adds the reply-dependent metrics.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from initmatters.protocol import arrays_to_state, settings_to_config, state_to_arrays
from initmatters_core.results import (
    RoundLog,
    RoundProgress,
    RunFiles,
    RunLock,
    cpu_state,
    output_dir_problem,
    save_state,
    save_tensor_atomic,
    write_json_atomic,
    write_text_atomic,
)
from initmatters_core.settings import ExperimentSettings, client_settings, flatten_settings
from initmatters_core.tasks import load_task
from initmatters_core.trackers import check_trackers_installed, open_trackers
from server_app.checkpoint import load_checkpoint, save_checkpoint
from server_app.discovery import check_federation_size, discover_partitions
from server_app.summary import run_summary
from strategies import build_strategy


def report_to_log(message: str) -> None:
    log(INFO, "[initmatters] %s", message)


class _ContinuedClock:
    """time.monotonic, but the first reading is `earlier` seconds back (RoundLog's start)."""

    def __init__(self, earlier: float) -> None:
        self.earlier = earlier
        self.first = True

    def __call__(self) -> float:
        now = time.monotonic()
        if self.first:
            self.first = False
            return now - self.earlier
        return now


def run_federated(
    grid: Grid,
    settings: ExperimentSettings,
    resolved_config_yaml: str,
    output_dir: Path,
    report: Callable[[str], None] = report_to_log,
    *,
    resume: bool = False,
    checkpoint: bool = True,
    on_round: Callable[[RoundProgress], None] | None = None,
) -> dict[str, Any]:
    """Run one experiment on the connected SuperNodes and write the results contract.

    checkpoint: write <output_dir>/checkpoint/checkpoint.pt every log.checkpoint_every rounds, and
        for the last completed round when the run stops early (a signal, an error).
    resume: continue from that checkpoint (same settings) instead of starting at round 0.
    on_round: receives each round's progress (e.g. a live bar) instead of `report` receiving its line.
    The folder is locked while the run writes it (a second run on it fails at once); the trackers of
    log.tensorboard / log.wandb are closed (their files flushed) however the run ends.
    """
    files = RunFiles(output_dir.resolve())
    problem = output_dir_problem(files.root)
    if problem:
        raise RuntimeError(problem)
    check_federation_size(grid, settings.fl.num_clients)  # e.g. plain `flwr run` on a 10-node federation
    if resume and files.finished():
        raise RuntimeError(f"cannot resume: {files.root} already holds a finished run")
    check_trackers_installed(settings.log)
    with RunLock(files), ExitStack() as closing:
        return _run_locked(grid, settings, resolved_config_yaml, files, report, closing, resume=resume,
                           checkpoint=checkpoint, on_round=on_round)


# The measurements of a global model that are finite for every model that is still a model; other
# columns may be NaN by definition (e.g. the mean gamma of the filters misaligned at init when none is).
MUST_BE_FINITE = ("test_loss", "test_error")


def nonfinite_problem(state: Mapping[str, torch.Tensor], metrics: Mapping[str, float]) -> str | None:
    """What is not finite in a global model or its test loss and error (None when all is finite)."""
    bad_metrics = [key for key in MUST_BE_FINITE if key in metrics and not math.isfinite(metrics[key])]
    if bad_metrics:
        return ", ".join(f"{key}={metrics[key]}" for key in bad_metrics)
    bad_tensors = [key for key, value in state.items()
                   if value.is_floating_point() and not bool(value.isfinite().all())]
    return f"non-finite values in {', '.join(bad_tensors)}" if bad_tensors else None


def _run_locked(grid: Grid, settings: ExperimentSettings, resolved_config_yaml: str, files: RunFiles,
                report: Callable[[str], None], closing: ExitStack, *, resume: bool, checkpoint: bool,
                on_round: Callable[[RoundProgress], None] | None) -> dict[str, Any]:
    started = time.monotonic()
    report(f"writing results to {files.root}")

    setup = load_task(settings).server_setup(settings)
    bad_init = nonfinite_problem(setup.init_state, {})
    if bad_init:
        raise RuntimeError(f"the initial model w(0) has {bad_init} (init={settings.init.name}): nothing to train")
    saved = load_checkpoint(files, resolved_config_yaml, setup.init_state) if resume else None
    if not saved:  # a fresh run: an earlier run's results in this folder are no longer a finished run
        files.summary.unlink(missing_ok=True)
        shutil.rmtree(files.checkpoint_dir, ignore_errors=True)
    write_text_atomic(files.config, resolved_config_yaml)
    save_state(files.model_init, setup.init_state)
    for name, tensor in setup.artifacts.items():
        save_tensor_atomic(files.root / name, tensor)
    write_json_atomic(files.partition, setup.partition)
    report(f"init={settings.init.name}: {setup.description}")
    for line in setup.warnings:
        report(f"warning: {line}")
    report(f"client sizes {setup.client_sizes}")
    start_round = int(saved["round"]) if saved else 0
    if saved:
        report(f"resuming after round {start_round}/{settings.fl.num_rounds} from {files.checkpoint}")

    node_of_partition = discover_partitions(grid, settings.fl.num_clients, settings.fl.wait_for_nodes_s)
    earlier = float(saved["rows"][-1].get("elapsed_s") or 0.0) if saved else 0.0
    log_rounds = RoundLog(files.rounds, settings.fl.num_rounds, report, setup.round_columns,
                          clock=_ContinuedClock(earlier), progress_metric=setup.progress_metric, on_round=on_round)
    if saved:
        log_rounds.rows.extend(dict(row) for row in saved["rows"])
    trackers = closing.enter_context(open_trackers(settings.log, files, flatten_settings(settings.to_dict()),
                                                   resume=resume))
    trackers.log_rows(log_rounds.rows)  # a resumed run's rows so far (the trackers' folders start afresh)
    for tracker in trackers.trackers:
        report(tracker.description)
    strategy = build_strategy(
        settings.strategy,
        node_of_partition=node_of_partition,
        schedule=setup.schedule,
        init_arrays=state_to_arrays(setup.init_state) if setup.send_init_state else None,
        round_offset=start_round,
        round_sink=log_rounds.add_train,
        report=report,
    )
    if saved:
        strategy.load_server_state(saved["server_state"])

    unsaved: dict[str, Any] = {}  # the last completed round's checkpoint, while not yet written

    def write_checkpoint() -> None:
        if unsaved:
            save_checkpoint(files, unsaved["round"], unsaved["state"], setup.init_state,
                            log_rounds.rows[:unsaved["rows"]], resolved_config_yaml, unsaved["server_state"])
            unsaved.clear()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """The global model's test error and alignment; closes the round's row and checkpoints."""
        if server_round == 0 and saved:
            return None  # round start_round is already logged and checkpointed
        true_round = server_round + start_round
        global_state = arrays_to_state(arrays)
        metrics = setup.central_metrics(global_state)
        problem = nonfinite_problem(global_state, metrics)
        if problem:  # a diverged model is not a result: stop, keep the last good checkpoint
            kept = (f"the checkpoint of round {true_round - 1} is the last good one" if true_round
                    else "nothing was trained")
            raise RuntimeError(f"round {true_round}: the global model diverged ({problem}); {kept} (lower fl.lr "
                               f"or the strategy's server learning rate)")
        trackers.log_rows([log_rounds.add_eval(true_round, metrics)])
        if checkpoint:
            unsaved.update(round=true_round, state=cpu_state(global_state), rows=len(log_rounds.rows),
                           server_state=copy.deepcopy(strategy.server_state()))
            if true_round % settings.log.checkpoint_every == 0:
                write_checkpoint()
        return MetricRecord(metrics)

    try:
        summary = _train_and_finish(strategy, grid, settings, setup, files, log_rounds, saved, start_round,
                                    started, evaluate)
    except BaseException:  # a signal or an error: keep the last completed round resumable
        write_checkpoint()
        raise
    shutil.rmtree(files.checkpoint_dir, ignore_errors=True)  # redundant once the run is complete
    final_row = log_rounds.rows[-1]
    alignment = (f", misaligned {log_rounds.rows[0]['misaligned']} -> {final_row['misaligned']}"
                 if "misaligned" in final_row else "")
    report(f"done: test_error {final_row['test_error']:.4f}{alignment} in {summary['wall_time_s']:.1f}s; "
           f"results in {files.root}")
    return summary


def _train_and_finish(strategy: Any, grid: Grid, settings: ExperimentSettings, setup: Any, files: RunFiles,
                      log_rounds: RoundLog, saved: Mapping[str, Any] | None, start_round: int, started: float,
                      evaluate: Callable[[int, ArrayRecord], MetricRecord | None]) -> dict[str, Any]:
    """The remaining rounds, then model_final.pt, plots and summary.json (written last)."""
    initial_arrays = state_to_arrays(saved["state"] if saved else setup.init_state)
    rounds_left = settings.fl.num_rounds - start_round
    result = strategy.start(
        grid=grid,
        initial_arrays=initial_arrays,
        num_rounds=rounds_left,
        train_config=ConfigRecord(settings_to_config(client_settings(settings))),
        evaluate_fn=evaluate,
    )
    log_rounds.finish()
    final_arrays = result.arrays if len(result.arrays) else initial_arrays
    if rounds_left and not len(result.arrays):
        raise RuntimeError("no round produced a global model: every client failed (see the log)")
    save_state(files.model_final, arrays_to_state(final_arrays))

    plots = []
    if settings.log.plots:
        from initmatters_core.plots import plot_run  # matplotlib: about a second to import, only when drawing

        title = f"init={settings.init.name}, {settings.heterogeneity.name}, realised h={setup.realised_h:.2f}"
        drawn = plot_run(files.rounds, files.plots, title, partition_json=files.partition)
        plots = [str(path.relative_to(files.root)) for path in drawn]
    summary = run_summary(settings, setup, log_rounds.rows, start_round if saved else None,
                          time.monotonic() - started, plots)
    write_json_atomic(files.summary, summary)  # last: its presence marks a complete run
    return summary
