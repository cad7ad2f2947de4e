"""The experiment trackers mirror rounds.csv: TensorBoard read back with its own reader, W&B's offline file.

Fast: rows written through `open_trackers` (TensorBoard and W&B offline), a resumed run that must
not log a round twice, and the one-line error when an extra is not installed (its import made to
fail). Slow: a real short run (in-process Flower simulation) with both trackers on, interrupted
after round 1 and resumed: every rounds.csv column equals, per round, the scalars in TensorBoard's
event files and in the W&B run's history, each round once.

Equality is on the float32 value TensorBoard stores (W&B keeps the float64); a blank rounds.csv
cell (NaN, e.g. a gamma of an empty filter group) is no point in either tracker.
"""

from __future__ import annotations

import glob
import json
import math
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from initmatters import run
from initmatters.compose import load_settings
from initmatters.launch import PROJECT_ROOT
from initmatters_core.results import RunFiles, read_rounds_csv
from initmatters_core.settings import SettingError, flatten_settings
from initmatters_core.trackers import check_trackers_installed, open_trackers, previous_wandb_id

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TRACKERS_ON = "debug=default log.tensorboard=true log.wandb=true log.wandb_project=trackers-test"
NAN = float("nan")
ROWS = [  # rounds.csv rows as RoundLog writes them: ints, floats, NaN cells
    {"round": 0, "test_error": 0.5, "misaligned": 7, "gamma_misaligned_init": NAN, "elapsed_s": 0.0},
    {"round": 1, "test_error": 0.3125, "misaligned": 4, "gamma_misaligned_init": 0.12345678901, "elapsed_s": 1.5},
    {"round": 2, "test_error": 0.1, "misaligned": 0, "gamma_misaligned_init": NAN, "elapsed_s": 2.25},
]


@pytest.fixture(autouse=True)
def wandb_offline_here(tmp_path: Path, monkeypatch) -> Iterator[None]:
    """W&B offline, its settings and caches in the test's folder; its service process stopped after."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    yield
    wandb.teardown()


# --- readers of what the trackers wrote --------------------------------------------------------


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every event file in `folder`, read by TensorBoard's own reader."""
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of a .wandb file (W&B's LevelDB-style log: 32 KiB blocks, 7-byte record
    headers: checksum, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B log"
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position:position + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the rest of the block is padding
            position += left
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run(files: RunFiles) -> tuple[Any, dict[int, dict[str, float]], dict[str, Any]]:
    """(the run record, {step: logged scalars}, config) of the run's only W&B offline run folder."""
    folders = glob.glob(str(files.wandb / "offline-run-*"))
    assert len(folders) == 1, folders  # a resumed run leaves one W&B run, not one per start
    (log_file,) = Path(folders[0]).glob("run-*.wandb")
    run_record, history, config = None, {}, {}
    for record in wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_record = record.run
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            assert record.history.step.num not in history, f"step {record.history.step.num} logged twice"
            history[record.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
    return run_record, history, config


def expected_points(rows: list[dict[str, float]]) -> dict[str, list[tuple[int, float]]]:
    """column -> [(round, value)] of the cells that are not blank (NaN), round excluded (it is the step)."""
    points: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "round" and not math.isnan(value):
                points.setdefault(key, []).append((int(row["round"]), value))
    return points


def assert_trackers_mirror(files: RunFiles, rows: list[dict[str, float]]) -> None:
    """TensorBoard (float32) and W&B (exact) hold every non-blank cell of `rows` once, nothing else."""
    want = expected_points(rows)
    tensorboard = tensorboard_scalars(files.tensorboard)
    assert sorted(tensorboard) == sorted(want)
    for key, points in want.items():
        assert tensorboard[key] == [(step, float(np.float32(value))) for step, value in points], key
    _, history, _ = wandb_run(files)
    assert sorted(history) == [int(row["round"]) for row in rows]
    for step, logged in history.items():
        assert logged == {key: dict(points)[step] for key, points in want.items() if step in dict(points)}


# --- fast: the trackers alone ------------------------------------------------------------------


def _settings(overrides: str = TRACKERS_ON):
    settings, _ = load_settings(overrides)
    return settings


def test_trackers_log_every_non_blank_cell_once_and_wandb_gets_project_group_and_config(tmp_path: Path) -> None:
    settings = _settings()
    files = RunFiles(tmp_path / "sweep-7" / "3")
    config = flatten_settings(settings.to_dict())
    with open_trackers(settings.log, files, config, resume=False) as trackers:
        trackers.log_rows(ROWS[:1])
        trackers.log_rows(ROWS[1:])
    assert_trackers_mirror(files, ROWS)
    run_record, _, logged_config = wandb_run(files)
    assert (run_record.project, run_record.run_group, run_record.display_name) == ("trackers-test", "sweep-7", "3")
    assert {key: logged_config[key] for key in config} == config
    assert config["log.tensorboard"] is True and config["fl.num_rounds"] == settings.fl.num_rounds


def test_a_resumed_run_rebuilds_the_trackers_from_its_rows_and_keeps_the_wandb_id(tmp_path: Path) -> None:
    """The first start logged rounds 0-2 and crashed after round 2 but before its checkpoint; the
    resumed start logs the checkpoint's rows 0-1 again, then round 2 afresh (another elapsed_s)."""
    settings = _settings()
    files = RunFiles(tmp_path / "run")
    with open_trackers(settings.log, files, {}, resume=False) as trackers:
        trackers.log_rows(ROWS)
    first_id = previous_wandb_id(files.wandb)
    assert first_id is not None
    redone = [*ROWS[:2], {**ROWS[2], "elapsed_s": 9.75}]
    with open_trackers(settings.log, files, {}, resume=True) as trackers:
        trackers.log_rows(redone)
    assert_trackers_mirror(files, redone)  # each round once, the resumed values
    assert previous_wandb_id(files.wandb) == first_id == wandb_run(files)[0].run_id
    assert len(list(files.tensorboard.iterdir())) == 1  # one event file: the earlier one is gone


def test_trackers_are_closed_and_flushed_when_the_run_fails(tmp_path: Path) -> None:
    settings = _settings()
    files = RunFiles(tmp_path / "run")
    trackers_of_run = open_trackers(settings.log, files, {}, resume=False)
    with pytest.raises(RuntimeError, match="diverged"), trackers_of_run as trackers:
        trackers.log_rows(ROWS[:2])
        raise RuntimeError("round 2: the global model diverged")
    assert_trackers_mirror(files, ROWS[:2])


def test_no_tracker_on_writes_nothing(tmp_path: Path) -> None:
    settings = _settings("debug=default")
    assert not settings.log.tensorboard and not settings.log.wandb  # the defaults of conf/config.yaml
    files = RunFiles(tmp_path / "run")
    files.root.mkdir()
    with open_trackers(settings.log, files, {}, resume=False) as trackers:
        trackers.log_rows(ROWS)
    assert list(files.root.iterdir()) == []


# --- fast: a missing extra is one line before any start-up --------------------------------------


@pytest.mark.parametrize(("setting", "module"), [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_a_missing_extra_is_one_line_naming_it(tmp_path: Path, monkeypatch, capsys, setting: str,
                                               module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` fails, find_spec finds nothing
    expected = f'log.{setting}=true needs the optional extra: pip install -e ".[{setting}]"'
    settings = _settings(f"debug=default log.{setting}=true")
    with pytest.raises(SettingError) as error:
        check_trackers_installed(settings.log)
    assert str(error.value) == expected
    with pytest.raises(SettingError) as error, open_trackers(settings.log, RunFiles(tmp_path), {}, resume=False):
        pass  # the import itself fails with the same line
    assert str(error.value) == expected
    check_trackers_installed(_settings("debug=default").log)  # off: not needed

    assert run.main(["debug=default", f"log.{setting}=true", "--output-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {expected}"
    assert not (tmp_path / "out").exists()


def test_a_sweep_stops_before_anything_starts_when_the_extra_is_missing(tmp_path: Path) -> None:
    """The launcher checks every job when it prepares them all, before any starts (the import made to fail)."""
    sweep = ("import sys; sys.modules['tensorboard'] = None; from initmatters.sweep import cli; "
             f"sys.argv = ['sweep', '--multirun', 'debug=default', 'seed=0,1', 'log.tensorboard=true', "
             f"'hydra.sweep.dir={tmp_path / 'sweep'}']; cli()")
    completed = subprocess.run([sys.executable, "-c", sweep], cwd=PROJECT_ROOT, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 2, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert completed.stderr.strip().splitlines() == [
        'error: log.tensorboard=true needs the optional extra: pip install -e ".[tensorboard]"']
    assert "[sweep]" not in completed.stdout  # nothing started


@pytest.mark.parametrize("project", ["a/b", "", "what?"])
def test_wandb_project_is_checked(project: str) -> None:
    with pytest.raises(SettingError, match=r"^log.wandb_project=.* is invalid: allowed a non-empty name"):
        load_settings(["debug=default", f"log.wandb_project='{project}'"])


# --- slow: a real run, interrupted and resumed --------------------------------------------------


def simulate(settings, yaml: str, output_dir: Path, client_app, *, resume: bool = False) -> None:
    """One in-process Flower simulation of the run (Ray with one CPU per client)."""
    from flwr.simulation import run_simulation

    from server_app.app import build_server_app

    run_simulation(server_app=build_server_app(settings, yaml, output_dir, resume=resume), client_app=client_app,
                   num_supernodes=settings.fl.num_clients, backend_config={"client_resources": {"num_cpus": 1}})


@pytest.mark.slow
def test_a_real_resumed_run_logs_every_rounds_csv_column_once(tmp_path: Path) -> None:
    """Every client fails in round 2 (test_strategy_resume's client): the run stops after round 1's
    checkpoint; resumed, it runs rounds 2 and 3."""
    from test_strategy_resume import FAIL_ROUND, crashing_client_app

    from client_app.app import app as client_app

    settings, yaml = load_settings(f"{TRACKERS_ON} fl.num_rounds=3")
    files = RunFiles(tmp_path / "multirun" / "run")
    with pytest.raises(RuntimeError, match=f"round {FAIL_ROUND}: none of the"):
        simulate(settings, yaml, files.root, crashing_client_app)
    assert files.interrupted()
    assert_trackers_mirror(files, read_rounds_csv(files.rounds))  # rounds 0 and 1, flushed despite the failure

    simulate(settings, yaml, files.root, client_app, resume=True)
    rows = read_rounds_csv(files.rounds)
    assert files.finished() and [row["round"] for row in rows] == [0, 1, 2, 3]
    assert_trackers_mirror(files, rows)
    run_record, _, config = wandb_run(files)
    assert (run_record.project, run_record.run_group, run_record.display_name) == ("trackers-test", "multirun", "run")
    assert config["fl.num_rounds"] == 3 and config["log.wandb"] is True
