"""The inline backend (initmatters.inline): Flower's Grid API over long-lived client workers.

Transport only: the replies are the ClientApp's own, late replies never leak into a later round, a
failing client fails alone, a dead worker stops the run with one line, no worker outlives its run,
and a whole experiment gives the same bits on inline workers, in-process and on Flower's Ray engine.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from flower_fakes import task_identity  # noqa: F401 (autouse: instruction messages need run/node ids)
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode

from initmatters.compose import load_settings
from initmatters.inline import (
    CLIENT_APP,
    FIRST_NODE_ID,
    ClientWorkers,
    InlineGrid,
    client_runner,
    default_workers,
    run_inline,
)
from initmatters.launch import PROJECT_ROOT, terminate_pids
from initmatters_core.results import pid_alive

ECHO = "inline_client_apps:echo"  # tests/inline_client_apps.py
WAIT_S = float(os.environ.get("INITMATTERS_TEST_WAIT_S", "120"))  # generous: the machine may be busy


def queries(grid: InlineGrid, sleep_s: float = 0.0, message_type: str = "query") -> list[Message]:
    config = RecordDict({"config": ConfigRecord({"sleep_s": sleep_s})})
    return [Message(config, node_id, message_type, group_id="1") for node_id in grid.get_node_ids()]


def by_partition(replies) -> dict[int, ConfigRecord]:
    return {int(reply.content["reply"]["partition-id"]): reply.content["reply"] for reply in replies}


def test_client_app_reference_is_the_projects_clientapp() -> None:
    import tomllib

    components = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["components"]
    assert components["clientapp"] == CLIENT_APP


@pytest.mark.parametrize("workers", [0, 2])
def test_replies_are_the_client_apps_and_each_node_keeps_its_worker_and_context(workers: int) -> None:
    with client_runner(workers, ECHO) as runner:
        grid = InlineGrid(runner, 5)
        assert list(grid.get_node_ids()) == [FIRST_NODE_ID + k for k in range(5)]
        rounds = []
        for _ in range(2):
            sent = queries(grid)
            replies = list(grid.send_and_receive(sent, timeout=WAIT_S))
            assert len(replies) == 5
            for reply in replies:  # metadata of a reply: from the node the instruction went to
                assert reply.metadata.src_node_id - FIRST_NODE_ID == reply.content["reply"]["partition-id"]
                assert reply.metadata.reply_to_message_id != ""
            assert len({reply.metadata.reply_to_message_id for reply in replies}) == 5
            rounds.append(by_partition(replies))
    first, second = rounds
    assert sorted(first) == [0, 1, 2, 3, 4]
    assert all(first[k]["seen"] == 1 and second[k]["seen"] == 2 for k in range(5))  # one Context per node
    assert all(first[k]["pid"] == second[k]["pid"] for k in range(5))  # a node stays on its worker
    pids = {first[k]["pid"] for k in range(5)}
    assert pids == ({os.getpid()} if workers == 0 else {first[0]["pid"], first[1]["pid"]})
    assert len(pids) == max(workers, 1)


def test_a_failing_client_app_gives_an_error_reply_and_the_others_go_on() -> None:
    with client_runner(2, ECHO) as runner:
        grid = InlineGrid(runner, 4)
        replies = list(grid.send_and_receive(queries(grid, message_type="train"), timeout=WAIT_S))
    assert len(replies) == 4
    errors = {reply.metadata.src_node_id - FIRST_NODE_ID: reply.error for reply in replies if reply.has_error()}
    assert sorted(errors) == [1, 3]
    assert all(error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION for error in errors.values())
    assert errors[1].reason == "ValueError: odd partitions fail across two lines"
    assert sum(reply.has_content() for reply in replies) == 2


def test_late_replies_are_dropped_never_mixed_into_the_next_round() -> None:
    with client_runner(1, ECHO) as runner:
        grid = InlineGrid(runner, 2)
        list(grid.send_and_receive(queries(grid), timeout=WAIT_S))  # workers started
        assert list(grid.send_and_receive(queries(grid, sleep_s=2.0), timeout=0.2)) == []
        sent = queries(grid)
        replies = list(grid.send_and_receive(sent, timeout=WAIT_S))
    assert len(replies) == 2
    assert all(reply["seen"] == 3 for reply in by_partition(replies).values())  # the late batch did run
    answered = {reply.metadata.reply_to_message_id for reply in replies}
    assert len(answered) == 2  # one reply per new message, none from the late batch


def test_a_dead_worker_stops_the_run_with_one_line() -> None:
    with client_runner(2, ECHO) as runner:
        grid = InlineGrid(runner, 2)
        list(grid.send_and_receive(queries(grid), timeout=WAIT_S))
        victim = runner.pids[0]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=rf"^client worker PID {victim} stopped: the run cannot go on$"):
            grid.send_and_receive(queries(grid), timeout=WAIT_S)


def test_closing_stops_every_worker() -> None:
    with client_runner(2, ECHO) as runner:
        pids = runner.pids
        assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
    assert not any(pid_alive(pid) for pid in pids)


def test_bad_worker_counts_are_refused() -> None:
    with pytest.raises(ValueError, match=r"workers=-1 is invalid: allowed an integer >= 1 \(0 = in this process\)"):
        ClientWorkers(-1, ECHO)
    assert default_workers(1) == 1
    assert 1 <= default_workers(1000) <= len(os.sched_getaffinity(0))


def _rows(path: Path) -> list[dict[str, str]]:
    """rounds.csv without the wall-clock column."""
    with open(path, newline="") as handle:
        return [{key: value for key, value in row.items() if key != "elapsed_s"} for row in csv.DictReader(handle)]


def _same_run(first: Path, second: Path) -> None:
    assert _rows(first / "rounds.csv") == _rows(second / "rounds.csv")
    for name in ("model_init.pt", "model_final.pt"):
        a, b = (torch.load(folder / name, weights_only=True) for folder in (first, second))
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


# Sampling, pre-training and label skew: every path of the server and the clients is exercised.
MIXED = ("debug=default fl.num_clients=4 fl.fraction_train=0.5 fl.num_rounds=3 init=pretrained "
         "heterogeneity.h=1.0 log.plots=false")


def test_workers_and_in_process_clients_give_the_same_bits(tmp_path: Path) -> None:
    settings, yaml = load_settings(MIXED)
    run_inline(settings, yaml, tmp_path / "workers", workers=2)
    run_inline(settings, yaml, tmp_path / "in_process", workers=0)
    _same_run(tmp_path / "workers", tmp_path / "in_process")


@pytest.mark.slow
def test_inline_and_flowers_ray_engine_give_the_same_bits(tmp_path: Path) -> None:
    from flwr.simulation import run_simulation

    from client_app.app import app as client_app
    from server_app.app import build_server_app

    settings, yaml = load_settings(MIXED)
    run_inline(settings, yaml, tmp_path / "inline")
    run_simulation(server_app=build_server_app(settings, yaml, tmp_path / "ray"), client_app=client_app,
                   num_supernodes=settings.fl.num_clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    _same_run(tmp_path / "inline", tmp_path / "ray")


@pytest.mark.slow
def test_sweeps_on_both_backends_give_the_same_bits(tmp_path: Path) -> None:
    for backend in ("inline", "ray"):
        command = [sys.executable, "-m", "initmatters.sweep", "--multirun", "debug=default", "seed=0,1",
                   "init=random,pretrained", f"hydra.sweep.dir={tmp_path / backend}",
                   f"hydra.launcher.backend={backend}"]
        completed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=WAIT_S * 5)
        assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    for job in range(4):
        _same_run(tmp_path / "inline" / str(job), tmp_path / "ray" / str(job))


@pytest.mark.slow
def test_workers_stop_when_their_server_process_is_killed(tmp_path: Path) -> None:
    script = ("import sys, time\nsys.path.insert(0, sys.argv[1])\nfrom initmatters.inline import ClientWorkers\n"
              "workers = ClientWorkers(2, 'inline_client_apps:echo')\nprint(*workers.pids, flush=True)\n"
              "time.sleep(600)\n")
    server = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent)], cwd=PROJECT_ROOT,
                              stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        pids = [int(pid) for pid in server.stdout.readline().split()]
        assert len(pids) == 2
        server.kill()
        server.wait(timeout=WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(pid_alive(pid) for pid in pids)
    finally:
        terminate_pids([server.pid, *pids], timeout=5.0)
        server.stdout.close()


@pytest.mark.slow
def test_the_run_command_uses_the_inline_backend_by_default_and_leaves_nothing_behind(tmp_path: Path) -> None:
    from initmatters.launch import processes_with_flwr_home

    out, flwr_home = tmp_path / "out", tmp_path / "flwr-home"
    command = [sys.executable, "-m", "initmatters.run", "debug=default", "--output-dir", str(out),
               "--flwr-home", str(flwr_home)]
    completed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=WAIT_S * 5)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert "backend=inline" in completed.stdout.splitlines()[0]
    assert [int(row["round"]) for row in _rows(out / "rounds.csv")] == [0, 1, 2]
    assert (out / "summary.json").is_file() and (out / "plots" / "test_error.png").is_file()
    assert processes_with_flwr_home(flwr_home) == []
