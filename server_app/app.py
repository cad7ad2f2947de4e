"""ServerApp: builds w(0), runs AlignmentTrackingFedAvg and writes the results contract.

Task-agnostic: `initmatters.tasks.server_setup` gives w(0) as a state dict and the task's
per-round measurements (synthetic data or real images, chosen by the settings).

`flwr run .` reaches `app` with run_config {"overrides": "<hydra overrides>", "output-dir": ...};
Python launchers (sweeps, tests) build an app for already-validated settings with
`build_server_app`. Both end in `run_federated`.

Checkpoints: after every round (round 0 included) the global model, the round number and the
rows of rounds.csv so far are written atomically to <output-dir>/checkpoint/checkpoint.pt; the
folder is removed once summary.json is written. A run started on an output-dir that holds a
checkpoint (and no summary.json) resumes from it: same settings required, rounds continue at
the next round number (the client schedule and the clients' batch streams are indexed by it),
so the final model equals that of an uninterrupted run.
"""

from __future__ import annotations

import numbers
import platform
import shutil
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from importlib import metadata
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from initmatters.compose import load_settings
from initmatters.federated import finite_or_none, flatten_settings
from initmatters.plots import plot_run
from initmatters.results import (
    SUMMARY_FILE,
    RoundLog,
    cpu_state,
    save_state,
    save_tensor_atomic,
    write_json_atomic,
    write_text_atomic,
)
from initmatters.settings import ExperimentSettings
from initmatters.tasks import server_setup
from strategies.alignment_fedavg import arrays_to_state, state_to_arrays
from strategies.resumable_fedavg import ResumableFedAvg, error_reason

VERSIONED_PACKAGES = ("torch", "flwr", "flwr-datasets", "hydra-core", "numpy", "datasets")
QUERY_TIMEOUT_S = 120.0
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "checkpoint.pt"
PARTITION_FILE = "partition.json"


def _report(message: str) -> None:
    log(INFO, "[initmatters] %s", message)


def default_output_dir() -> Path:
    """outputs/<date>/<time> under the working directory of the process running the ServerApp."""
    return Path.cwd() / "outputs" / datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")


def discover_partitions(grid: Grid, num_clients: int, wait_s: float) -> dict[int, int]:
    """Map partition-id -> node id by asking every connected SuperNode (one query message each)."""
    deadline = time.monotonic() + wait_s
    while len(node_ids := list(grid.get_node_ids())) < num_clients and time.monotonic() < deadline:
        time.sleep(0.2)
    if len(node_ids) != num_clients:
        raise RuntimeError(
            f"fl.num_clients={num_clients} but {len(node_ids)} SuperNodes are connected after {wait_s:g}s: "
            f"run exactly {num_clients} (simulation: --federation-config 'num-supernodes={num_clients}')"
        )
    queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in node_ids]
    node_of_partition: dict[int, int] = {}
    for reply in grid.send_and_receive(queries, timeout=QUERY_TIMEOUT_S):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise RuntimeError(f"SuperNode {node} rejected the run: {error_reason(reply)}")
        partition = reply.content["partition"]
        partition_id, num_partitions = int(partition["partition-id"]), int(partition["num-partitions"])
        if num_partitions != num_clients:
            raise RuntimeError(
                f"SuperNode {node} has num-partitions={num_partitions}, but fl.num_clients={num_clients}"
            )
        if partition_id in node_of_partition:
            raise RuntimeError(f"two SuperNodes hold partition-id={partition_id}: give each a distinct one")
        node_of_partition[partition_id] = node
    missing = sorted(set(range(num_clients)) - set(node_of_partition))
    if missing:
        raise RuntimeError(f"no SuperNode answered for partition-id(s) {missing}")
    return node_of_partition


def checkpoint_path(output_dir: Path) -> Path:
    """<output_dir>/checkpoint/checkpoint.pt: the state after the last completed round."""
    return output_dir / CHECKPOINT_DIR / CHECKPOINT_FILE


def _plain(value: Any) -> Any:
    """A rounds.csv cell as a plain Python int/float/str/None (loadable with weights_only)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)


def save_checkpoint(output_dir: Path, server_round: int, state: Mapping[str, torch.Tensor],
                    init_state: Mapping[str, torch.Tensor], rows: list[dict[str, Any]],
                    resolved_config_yaml: str) -> None:
    """Write the checkpoint of `server_round` atomically (a crash leaves the previous one intact)."""
    checkpoint = {
        "round": server_round,
        "state": cpu_state(state),
        "init_state": cpu_state(init_state),
        "rows": [{key: _plain(value) for key, value in row.items()} for row in rows],
        "config_yaml": resolved_config_yaml,
    }
    save_tensor_atomic(checkpoint_path(output_dir), checkpoint)


def load_checkpoint(output_dir: Path, resolved_config_yaml: str,
                    init_state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The checkpoint in `output_dir`, checked against this run's settings and w(0)."""
    path = checkpoint_path(output_dir)
    if not path.exists():
        raise RuntimeError(f"cannot resume: no checkpoint at {path}")
    state = torch.load(path, weights_only=True)
    if state["config_yaml"] != resolved_config_yaml:
        raise RuntimeError(f"cannot resume from {path}: it was made with other settings "
                           f"(see {output_dir / 'config.yaml'}): pass the same overrides or choose another output-dir")
    saved_init = state["init_state"]
    same = set(saved_init) == set(init_state) and all(
        torch.equal(saved_init[key], value.detach().cpu()) for key, value in init_state.items())
    if not same:
        raise RuntimeError(f"cannot resume from {path}: its initial model differs from this run's w(0)")
    return state


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


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def run_federated(
    grid: Grid,
    settings: ExperimentSettings,
    resolved_config_yaml: str,
    output_dir: Path,
    report: Callable[[str], None] = _report,
    *,
    resume: bool = False,
    checkpoint: bool = True,
) -> dict[str, Any]:
    """Run one experiment on the connected SuperNodes and write the results contract.

    checkpoint: write <output_dir>/checkpoint/checkpoint.pt after every round.
    resume: continue from that checkpoint (same settings) instead of starting at round 0.
    """
    started = time.monotonic()
    output_dir = output_dir.resolve()
    if resume and (output_dir / SUMMARY_FILE).exists():
        raise RuntimeError(f"cannot resume: {output_dir} already holds a finished run")
    report(f"writing results to {output_dir}")

    setup = server_setup(settings)
    state = load_checkpoint(output_dir, resolved_config_yaml, setup.init_state) if resume else None
    write_text_atomic(output_dir / "config.yaml", resolved_config_yaml)
    save_state(output_dir / "model_init.pt", setup.init_state)
    for name, tensor in setup.artifacts.items():
        save_tensor_atomic(output_dir / name, tensor)
    write_json_atomic(output_dir / PARTITION_FILE, setup.partition)
    report(f"init={settings.init.name}: {setup.description}")
    report(f"client sizes {setup.client_sizes}")
    start_round = int(state["round"]) if state else 0
    if state:
        report(f"resuming after round {start_round}/{settings.fl.num_rounds} from {checkpoint_path(output_dir)}")

    node_of_partition = discover_partitions(grid, settings.fl.num_clients, settings.fl.wait_for_nodes_s)
    earlier = float(state["rows"][-1].get("elapsed_s") or 0.0) if state else 0.0
    log_rounds = RoundLog(output_dir / "rounds.csv", settings.fl.num_rounds, report, clock=_ContinuedClock(earlier),
                          columns=setup.round_columns)
    if state:
        log_rounds.rows.extend(dict(row) for row in state["rows"])
    strategy = ResumableFedAvg(
        round_offset=start_round,
        report=report,
        alignment_fn=setup.alignment_metrics,
        node_of_partition=node_of_partition,
        schedule=setup.schedule,
        init_arrays=state_to_arrays(setup.init_state) if setup.send_init_state else None,
        round_sink=log_rounds.add_train,
    )

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        true_round = server_round + start_round
        if server_round == 0:
            if state:
                return None  # round start_round is already logged and checkpointed
            log_rounds.add_train(0, strategy.alignment_metrics(arrays))
        global_state = arrays_to_state(arrays)
        metrics = setup.central_metrics(global_state)
        log_rounds.add_eval(true_round, metrics)
        if checkpoint:
            save_checkpoint(output_dir, true_round, global_state, setup.init_state, log_rounds.rows,
                            resolved_config_yaml)
        return MetricRecord(metrics)

    initial_arrays = state_to_arrays(state["state"] if state else setup.init_state)
    rounds_left = settings.fl.num_rounds - start_round
    result = strategy.start(
        grid=grid,
        initial_arrays=initial_arrays,
        num_rounds=rounds_left,
        train_config=ConfigRecord(flatten_settings(settings)),
        evaluate_fn=evaluate,
    )
    final_arrays = result.arrays if len(result.arrays) else initial_arrays
    if rounds_left and not len(result.arrays):
        raise RuntimeError("no round produced a global model: every client failed (see the log)")
    save_state(output_dir / "model_final.pt", arrays_to_state(final_arrays))

    plots = []
    if settings.log.plots:
        title = f"init={settings.init.name}, {settings.heterogeneity.name}, realised h={setup.realised_h:.2f}"
        drawn = plot_run(output_dir / "rounds.csv", output_dir / "plots", title,
                         partition_json=output_dir / PARTITION_FILE)
        plots = [str(path.relative_to(output_dir)) for path in drawn]
    final_row = log_rounds.rows[-1]
    short_rounds = [int(row["round"]) for row in log_rounds.rows[1:] if row.get("clients") is not None
                    and int(row["clients"]) < len(setup.schedule[int(row["round"]) - 1])]
    summary = {
        "task": "image" if settings.image_task else "synthetic",
        "final": {key: finite_or_none(float(value)) for key, value in final_row.items()},
        "initial_misaligned": log_rounds.rows[0].get("misaligned"),
        "realised_h": setup.realised_h,  # H of partition.json: the paper's h on the binary task
        "client_sizes": setup.client_sizes,
        "rounds_completed": int(final_row["round"]),
        "resumed_from_round": start_round if state else None,
        "rounds_with_missing_clients": short_rounds,  # fewer replies than scheduled clients (a node failed)
        "wall_time_s": round(time.monotonic() - started, 3),
        "settings": settings.to_dict(),
        "plots": plots,
        "versions": package_versions(),
    }
    write_json_atomic(output_dir / SUMMARY_FILE, summary)  # last: its presence marks a complete run
    shutil.rmtree(output_dir / CHECKPOINT_DIR, ignore_errors=True)  # redundant once the run is complete
    alignment = (f", misaligned {log_rounds.rows[0]['misaligned']} -> {final_row['misaligned']}"
                 if "misaligned" in final_row else "")
    report(f"done: test_error {final_row['test_error']:.4f}{alignment} in {summary['wall_time_s']:.1f}s; "
           f"results in {output_dir}")
    return summary


def build_server_app(settings: ExperimentSettings, resolved_config_yaml: str, output_dir: Path, *,
                     resume: bool = False) -> ServerApp:
    """A ServerApp bound to already-validated settings (for in-process simulation)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federated(grid, settings, resolved_config_yaml, output_dir, resume=resume)

    return server_app


def interrupted_run(output_dir: Path) -> bool:
    """True when `output_dir` holds a checkpoint and no summary.json (a run to resume)."""
    return checkpoint_path(output_dir).exists() and not (output_dir / SUMMARY_FILE).exists()


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of `flwr run .`: compose conf/ with the run-config overrides, then run.

    An output-dir holding an interrupted run's checkpoint is resumed (same overrides required).
    """
    settings, resolved_yaml = load_settings(str(context.run_config.get("overrides", "")))
    output = str(context.run_config.get("output-dir", "")).strip()
    output_dir = Path(output) if output else default_output_dir()
    run_federated(grid, settings, resolved_yaml, output_dir, resume=interrupted_run(output_dir))
