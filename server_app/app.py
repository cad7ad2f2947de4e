"""ServerApp: the entry of `flwr run .`, a thin adapter over `server_app.experiment.run_federated`.

`flwr run .` reaches `app` with run_config {"overrides": "<hydra overrides>", "output-dir": ...,
"verbose": false};
Python launchers (sweeps, tests) build an app for already-validated settings with
`build_server_app`. An output-dir holding an interrupted run's checkpoint (and no summary.json)
is resumed (same overrides required).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from initmatters.compose import load_settings
from initmatters.flower_log import calm_flower_logs
from initmatters_core.results import RoundProgress, RunFiles, default_output_dir
from initmatters_core.settings import ExperimentSettings
from server_app.experiment import run_federated


def build_server_app(settings: ExperimentSettings, resolved_config_yaml: str, output_dir: Path, *,
                     resume: bool = False, on_round: Callable[[RoundProgress], None] | None = None) -> ServerApp:
    """A ServerApp bound to already-validated settings (for in-process simulation); on_round: see run_federated."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federated(grid, settings, resolved_config_yaml, output_dir, resume=resume, on_round=on_round)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of `flwr run .`: compose conf/ with the run-config overrides, then run.

    Flower's log in this process is calmed (calm_flower_logs) unless run-config verbose=true.
    """
    calm_flower_logs(verbose=bool(context.run_config.get("verbose", False)))
    settings, resolved_yaml = load_settings(str(context.run_config.get("overrides", "")))
    output = str(context.run_config.get("output-dir", "")).strip()
    output_dir = Path(output) if output else default_output_dir(Path.cwd())  # the SuperLink's folder
    run_federated(grid, settings, resolved_yaml, output_dir, resume=RunFiles(output_dir).interrupted())
