"""Calm output: which of Flower's lines a user sees, and a federation larger than the run (fast: no Flower run)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flower_fakes import FakeGrid

from initmatters.compose import load_settings
from initmatters.flower_log import FLOWER_LOGGER, CalmFlowerLog, calm_flower_logs, is_flower_noise
from initmatters.launch import flower_env, run_filtered
from initmatters.sweep import flower_verbose
from initmatters_core.settings import SettingError
from server_app.discovery import check_federation_size, discover_partitions
from server_app.experiment import run_federated

GREEN, YELLOW, RED, RESET = "\x1b[92m", "\x1b[93m", "\x1b[91m", "\x1b[0m"

# Lines of `python -m initmatters.run debug=default` before this change (colours as Flower prints them).
NOISE = [
    "Using SuperLink: local (127.0.0.1:43263)\n",
    "Successfully started run 17773722228734152215\n",
    f"{GREEN}INFO {RESET}:      Starting logstream for run_id `17773722228734152215`\n",
    f"{GREEN}INFO {RESET}:      Starting Flower Simulation\n",
    f"{YELLOW}WARNING {RESET}:   Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.\n",
    f"{GREEN}INFO {RESET}:      Federation `@none/default` (2 simulated SuperNodes)\n",
    f"{GREEN}INFO {RESET}:      \tflwr federation simulation-config @none/default <superlink> --num-supernodes <N>\n",
    "Successfully installed initmatters to /tmp/wt/.flwr/apps/initmatters.initmatters.0.1.0.2b872501.\n",
    f"{YELLOW}WARNING {RESET}:   fraction_evaluate is set to 0.0. Federated evaluation will be skipped.\n",
    f"{GREEN}INFO {RESET}:      [ROUND 1/2]\n",
    f"{GREEN}INFO {RESET}:      aggregate_train: Received 2 results and 0 failures\n",
    f"{GREEN}INFO {RESET}:      \n",
    f"\x1b[36m(ClientAppActor pid=28766)\x1b[0m {YELLOW}WARNING {RESET}:   Manually terminating ClientAppActor\n",
]
KEPT = [
    f"{GREEN}INFO {RESET}:      [initmatters] round 1/2 | test_error 0.3500 | misaligned 2 | 0.1s elapsed\n",
    f"{GREEN}INFO {RESET}:      [initmatters] done: test_error 0.2950, misaligned 4 -> 0 in 11.5s\n",
    f"{YELLOW}WARNING {RESET}:   No train replies received\n",
    f"{RED}ERROR {RESET}:     Simulation raised an exception\n",
    "Traceback (most recent call last):\n",
    "⚠️ Warning: `options.` fields in the SuperLink connection configuration are deprecated.\n",
    "RuntimeError: the run did not finish\n",
    f"\x1b[36m(ClientAppActor pid=28766)\x1b[0m {RED}ERROR {RESET}:     ClientApp raised an exception\n",
]


@pytest.mark.parametrize("line", NOISE)
def test_flower_noise_is_dropped(line: str) -> None:
    assert is_flower_noise(line)


@pytest.mark.parametrize("line", KEPT)
def test_project_lines_warnings_and_errors_are_kept(line: str) -> None:
    assert not is_flower_noise(line)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def flower_records() -> Iterator[Collect]:
    """Records that pass Flower's logger; its filters are restored afterwards."""
    logger = logging.getLogger(FLOWER_LOGGER)
    saved = list(logger.filters)
    handler = Collect()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = saved


def test_calm_log_keeps_project_lines_warnings_and_errors(flower_records: Collect) -> None:
    calm_flower_logs(verbose=False)
    calm_flower_logs(verbose=False)  # once only, however often it is called
    assert sum(isinstance(f, CalmFlowerLog) for f in logging.getLogger(FLOWER_LOGGER).filters) == 1
    logger = logging.getLogger(FLOWER_LOGGER)
    logger.info("aggregate_train: Received %s results and %s failures", 2, 0)
    logger.info("[initmatters] round %s/%s", 1, 2)
    logger.warning("fraction_evaluate is set to 0.0. Federated evaluation will be skipped.")
    logger.warning("No train replies received")
    try:
        raise ValueError("a bug")
    except ValueError as bug:
        logger.error("Simulation raised an exception", exc_info=bug)
    assert [record.getMessage() for record in flower_records.records] == [
        "[initmatters] round 1/2", "No train replies received", "Simulation raised an exception"]
    assert flower_records.records[-1].exc_info is not None  # a bug keeps its traceback


def test_a_setting_error_loses_its_traceback(flower_records: Collect) -> None:
    calm_flower_logs(verbose=False)
    try:
        try:
            raise SettingError("fl.num_clients=2 is invalid here: the federation has 10 SuperNodes")
        except SettingError as error:
            raise RuntimeError("An error was encountered. Ending simulation.") from error
    except RuntimeError as wrapped:
        logging.getLogger(FLOWER_LOGGER).error("%s raised an exception", "Simulation", exc_info=wrapped)
    (record,) = flower_records.records
    assert record.getMessage() == "error: fl.num_clients=2 is invalid here: the federation has 10 SuperNodes"
    assert record.exc_info is None


def test_verbose_shows_everything(flower_records: Collect) -> None:
    calm_flower_logs(verbose=False)
    calm_flower_logs(verbose=True)
    logging.getLogger(FLOWER_LOGGER).info("aggregate_train: Received 2 results and 0 failures")
    assert len(flower_records.records) == 1


@pytest.mark.parametrize(("value", "verbose"), [(False, False), (True, True), ("flwr", True), (["__main__"], False),
                                                (["__main__", "flwr"], True), ("flwr.simulation", True),
                                                ("flwrx", False), (None, False)])
def test_hydra_verbose_names_flower(value: object, verbose: bool) -> None:
    assert flower_verbose(value) is verbose


def test_run_filtered_passes_the_other_lines_to_the_same_stream(capfd) -> None:
    script = ("import sys; print('keep out'); print('drop out'); print('keep err', file=sys.stderr); "
              "print('drop err', file=sys.stderr); sys.exit(3)")
    code = run_filtered([sys.executable, "-c", script], flower_env(Path("/nonexistent")),
                        lambda line: line.startswith("drop"))
    captured = capfd.readouterr()
    assert code == 3
    assert captured.out == "keep out\n"
    assert captured.err == "keep err\n"


# --- a federation with more SuperNodes than clients: one line, before anything is written --------


TOO_MANY = ('fl.num_clients=2 is invalid here: the federation has 10 SuperNodes, one per client is needed: run it '
            'with --federation-config "num-supernodes=2" (simulation), or set fl.num_clients=10')


def test_more_supernodes_than_clients_is_one_line_naming_both_ways_out() -> None:
    with pytest.raises(SettingError) as error:
        check_federation_size(FakeGrid(range(10)), 2)
    assert str(error.value) == TOO_MANY
    check_federation_size(FakeGrid(range(2)), 2)
    check_federation_size(FakeGrid(range(1)), 2)  # still connecting: discovery waits for the other one


def test_discovery_names_a_larger_federation_at_once() -> None:
    with pytest.raises(SettingError, match="the federation has 3 SuperNodes"):
        discover_partitions(FakeGrid(range(3)), 2, wait_s=600.0)


def test_a_run_on_a_larger_federation_writes_nothing(tmp_path: Path) -> None:
    settings, resolved_yaml = load_settings(["debug=default"])
    with pytest.raises(SettingError) as error:
        run_federated(FakeGrid(range(10)), settings, resolved_yaml, tmp_path / "out")
    assert str(error.value) == TOO_MANY
    assert not (tmp_path / "out").exists()


# --- the verbosity switch reaches every place it is accepted -------------------------------------


def flower_filters() -> list[logging.Filter]:
    return [f for f in logging.getLogger(FLOWER_LOGGER).filters if isinstance(f, CalmFlowerLog)]


@pytest.mark.parametrize("verbose", [False, True])
def test_plain_flwr_run_honours_run_config_verbose(flower_records: Collect, tmp_path: Path, verbose: bool) -> None:
    from flwr.app import Context, RecordDict

    from server_app.app import main as server_main

    run_config = {"overrides": "debug=default", "output-dir": str(tmp_path / "out"), "verbose": verbose}
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    with pytest.raises(SettingError, match="the federation has 10 SuperNodes"):
        server_main(FakeGrid(range(10)), context)
    assert len(flower_filters()) == (0 if verbose else 1)


@pytest.mark.parametrize("verbose", [False, True])
def test_run_and_deploy_pass_verbose_to_the_app_and_the_line_filter(tmp_path: Path, monkeypatch,
                                                                    verbose: bool) -> None:
    from contextlib import nullcontext

    from initmatters import deploy, run

    calls: list[tuple[dict, object]] = []

    def fake_flwr_run(project, env, run_config, federation_config=None, connection=None, drop_line=None,
                      prefix=()) -> int:
        calls.append((dict(run_config), drop_line))
        return 0

    monkeypatch.setattr(run, "flwr_run", fake_flwr_run)
    monkeypatch.setattr(run, "simulation_superlink", lambda home: nullcontext({}))
    monkeypatch.setattr(deploy, "flwr_run", fake_flwr_run)
    flag = ["--verbose"] if verbose else []
    run.main(["debug=default", "--output-dir", str(tmp_path / "run"), "--flwr-home", str(tmp_path / "home"),
              "--backend", "ray", *flag])
    deploy.LocalDeployment(tmp_path / "deploy").run_app(["debug=default"], tmp_path / "deployed", verbose=verbose)
    assert [(config["verbose"], drop is None) for config, drop in calls] == [(verbose, verbose)] * 2
    assert all(drop is is_flower_noise for _, drop in calls if drop is not None)
    assert deploy.parse_args(["--nodes", "2", *flag]).verbose is verbose


@pytest.mark.parametrize("verbose", [False, True])
def test_the_inline_backend_calms_flowers_log_in_its_own_process(tmp_path: Path, monkeypatch, verbose: bool) -> None:
    import logging

    import initmatters.inline
    from initmatters import run

    filtered: list[bool] = []
    monkeypatch.setattr(initmatters.inline, "run_inline", lambda *args, **kwargs: filtered.append(
        any(isinstance(f, CalmFlowerLog) for f in logging.getLogger(FLOWER_LOGGER).filters)))
    run.main(["debug=default", "--output-dir", str(tmp_path / "run"), "--flwr-home", str(tmp_path / "home"),
              *(["--verbose"] if verbose else [])])
    assert filtered == [not verbose]
    calm_flower_logs(verbose=True)  # leave the logger as it was
