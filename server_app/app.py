"""ServerApp: builds w(0), runs AlignmentTrackingFedAvg and writes the results contract.

`flwr run .` reaches `app` with run_config {"overrides": "<hydra overrides>", "output-dir": ...};
Python launchers (sweeps, tests) build an app for already-validated settings with
`build_server_app`. Both end in `run_federated`.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from datetime import datetime
from importlib import metadata
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from initmatters.compose import load_settings
from initmatters.federated import central_metrics, finite_or_none, flatten_settings, server_setup
from initmatters.plots import plot_run
from initmatters.results import (
    SUMMARY_FILE,
    RoundLog,
    save_tensor_atomic,
    save_weight,
    write_json_atomic,
    write_text_atomic,
)
from initmatters.settings import ExperimentSettings
from strategies.alignment_fedavg import AlignmentTrackingFedAvg, arrays_to_weight, weight_to_arrays

VERSIONED_PACKAGES = ("torch", "flwr", "flwr-datasets", "hydra-core", "numpy", "datasets")
QUERY_TIMEOUT_S = 120.0


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
            raise RuntimeError(f"SuperNode {node} rejected the run: {reply.error.reason}")
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
) -> dict[str, Any]:
    """Run one experiment on the connected SuperNodes and write the results contract."""
    started = time.monotonic()
    output_dir = output_dir.resolve()
    report(f"writing results to {output_dir}")
    write_text_atomic(output_dir / "config.yaml", resolved_config_yaml)

    setup = server_setup(settings)
    save_weight(output_dir / "model_init.pt", setup.init_weight)
    save_tensor_atomic(output_dir / "signal.pt", setup.signal.clone())
    report(f"init={settings.init.name}: realised h={setup.realised_h:.4f}, client sizes {setup.client_sizes}")

    node_of_partition = discover_partitions(grid, settings.fl.num_clients, settings.fl.wait_for_nodes_s)
    log_rounds = RoundLog(output_dir / "rounds.csv", settings.fl.num_rounds, report)
    strategy = AlignmentTrackingFedAvg(
        signal=setup.signal,
        init_weight=setup.init_weight,
        node_of_partition=node_of_partition,
        schedule=setup.schedule,
        send_init_arrays=settings.log.noise_memorization,
        round_sink=log_rounds.add_train,
    )

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if server_round == 0:
            log_rounds.add_train(0, strategy.alignment_metrics(arrays))
        metrics = central_metrics(arrays_to_weight(arrays), setup.test)
        log_rounds.add_eval(server_round, metrics)
        return MetricRecord(metrics)

    initial_arrays = weight_to_arrays(setup.init_weight)
    result = strategy.start(
        grid=grid,
        initial_arrays=initial_arrays,
        num_rounds=settings.fl.num_rounds,
        train_config=ConfigRecord(flatten_settings(settings)),
        evaluate_fn=evaluate,
    )
    final_arrays = result.arrays if len(result.arrays) else initial_arrays
    if settings.fl.num_rounds and not len(result.arrays):
        raise RuntimeError("no round produced a global model: every client failed (see the log)")
    save_weight(output_dir / "model_final.pt", arrays_to_weight(final_arrays))

    plots = []
    if settings.log.plots:
        title = f"init={settings.init.name}, {settings.heterogeneity.name}, realised h={setup.realised_h:.2f}"
        drawn = plot_run(output_dir / "rounds.csv", output_dir / "plots", title)
        plots = [str(path.relative_to(output_dir)) for path in drawn]
    final_row = log_rounds.rows[-1]
    summary = {
        "final": {key: finite_or_none(float(value)) for key, value in final_row.items()},
        "initial_misaligned": log_rounds.rows[0]["misaligned"],
        "realised_h": setup.realised_h,
        "client_sizes": setup.client_sizes,
        "rounds_completed": int(final_row["round"]),
        "wall_time_s": round(time.monotonic() - started, 3),
        "settings": settings.to_dict(),
        "plots": plots,
        "versions": package_versions(),
    }
    write_json_atomic(output_dir / SUMMARY_FILE, summary)  # last: its presence marks a complete run
    report(
        f"done: test_error {final_row['test_error']:.4f}, misaligned {log_rounds.rows[0]['misaligned']} -> "
        f"{final_row['misaligned']} in {summary['wall_time_s']:.1f}s; results in {output_dir}"
    )
    return summary


def build_server_app(settings: ExperimentSettings, resolved_config_yaml: str, output_dir: Path) -> ServerApp:
    """A ServerApp bound to already-validated settings (for in-process simulation)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federated(grid, settings, resolved_config_yaml, output_dir)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of `flwr run .`: compose conf/ with the run-config overrides, then run."""
    settings, resolved_yaml = load_settings(str(context.run_config.get("overrides", "")))
    output = str(context.run_config.get("output-dir", "")).strip()
    run_federated(grid, settings, resolved_yaml, Path(output) if output else default_output_dir())
