"""Deployment: a SuperLink and SuperNodes as separate processes (initmatters.deploy), on loopback.

Fast tests check the pieces without Flower processes (certificate script, argument checks,
node-config validation, checkpoint and round numbering of a resumed strategy). Slow tests
start real processes on free ports, each in its own work folder, and assert that no process
with a FLWR_HOME under that folder is left afterwards. Every deployed message starts a fresh
ClientApp process (seconds each), so the runs are `debug=default` (2 clients, 2 rounds) or
1 round, and one uninterrupted run is the reference for both the simulation and the resume.
The deployments of the selected slow tests run side by side (see `scenarios`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, Metadata, RecordDict
from flwr.cli.supernode.register import try_load_public_key
from flwr.simulation import run_simulation
from flwr.supercore.task_identity import TaskIdentity

from client_app.app import app as client_app
from client_app.app import node_partition
from initmatters import deploy
from initmatters.compose import load_settings
from initmatters.deploy import LocalDeployment
from initmatters.launch import (
    PROJECT_ROOT,
    descendants,
    flower_env,
    processes_with_flwr_home,
    stop_process,
    terminate_pids,
)
from initmatters.protocol import error_reason, state_to_arrays
from initmatters_core.results import RunFiles, read_rounds_csv
from initmatters_core.settings import StrategySettings
from initmatters_core.tasks.synthetic.task import local_update, server_setup
from server_app.app import build_server_app
from server_app.checkpoint import load_checkpoint, save_checkpoint
from strategies import build_strategy

ATOL = 1e-6
OVERRIDES = ["debug=default"]  # 2 clients, 2 rounds, d = 100, m = 4
# A SIGKILL loses the rounds since the last checkpoint (log.checkpoint_every): one per round here.
EVERY_ROUND = [*OVERRIDES, "log.checkpoint_every=1"]
CONTRACT_FILES = ("config.yaml", "rounds.csv", "summary.json", "model_init.pt", "model_final.pt", "signal.pt")


# ---------------------------------------------------------------------------------------------
# helpers


def deploy_cli(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "initmatters.deploy", "--workdir", str(workdir), *args]


def run_cli(workdir: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(deploy_cli(workdir, *args), cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout)


def explain(completed: subprocess.CompletedProcess) -> str:
    return completed.stdout[-4000:] + "\n--- stderr ---\n" + completed.stderr[-4000:]


def process_of(home: Path, program: str) -> int:
    """The PID of the live `program` process whose FLWR_HOME is `home`."""
    marker = f"FLWR_HOME={home}".encode()
    for pid in processes_with_flwr_home(home):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") and any(
                    program.encode() in part for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")):
                return pid
        except OSError:
            continue
    raise AssertionError(f"no {program} process with FLWR_HOME={home}")


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants: a device that loses power."""
    for victim in [pid, *descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(condition, timeout: float, what: str, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def checkpoint_round(output_dir: Path) -> int:
    try:
        return int(torch.load(RunFiles(output_dir).checkpoint, weights_only=True)["round"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return -1


def load_weight(path: Path) -> torch.Tensor:
    return torch.load(path, weights_only=True)["weight"]


def assert_same_rows(path: Path, reference: Path) -> None:
    """rounds.csv of two runs agree (to ATOL) in every column but the wall time."""
    rows, expected = read_rounds_csv(path), read_rounds_csv(reference)
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        assert row.keys() == want.keys()
        for key in row.keys() - {"elapsed_s"}:
            assert row[key] == pytest.approx(want[key], abs=ATOL, nan_ok=True), (row["round"], key)


def assert_valid_results(out: Path, rounds: int) -> dict:
    """The results contract of a completed run, with finite models and one row per round."""
    for name in CONTRACT_FILES:
        assert (out / name).is_file(), name
    assert not (out / "checkpoint").exists()  # removed once summary.json is written
    assert not list(out.rglob("*.tmp"))  # no half-written file
    rows = read_rounds_csv(out / "rounds.csv")
    assert [int(row["round"]) for row in rows] == list(range(rounds + 1))
    assert torch.isfinite(load_weight(out / "model_final.pt")).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == rounds
    return summary


# ---------------------------------------------------------------------------------------------
# fast: the certificate script


def test_make_certs_creates_a_ca_a_server_certificate_and_supernode_keys(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    script = PROJECT_ROOT / "scripts" / "make_certs.sh"
    done = subprocess.run(["bash", str(script), "-o", str(out), "-n", "localhost,127.0.0.1,server.lan,10.0.0.7",
                           "-k", "2"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "server.pem")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(out / "server.pem"), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True).stdout
    for name in ("DNS:localhost", "IP Address:127.0.0.1", "DNS:server.lan", "IP Address:10.0.0.7"):
        assert name in text
    for k in range(2):  # keys as flower-supernode and `flwr supernode register` load them
        private = load_ssh_private_key((out / f"supernode-{k}").read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert try_load_public_key(out / f"supernode-{k}.pub")
        assert (out / f"supernode-{k}").stat().st_mode & 0o077 == 0  # private keys: owner only
    assert (out / "server.key").stat().st_mode & 0o077 == 0
    again = subprocess.run(["bash", str(script), "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr  # never overwrites


# ---------------------------------------------------------------------------------------------
# fast: the launcher refuses bad arguments before starting anything


@pytest.mark.parametrize(("args", "message"), [
    (["--nodes", "3", "--", "debug=default"],
     "error: --nodes=3 but fl.num_clients=2: they must be equal (one SuperNode per client; "
     "add -- fl.num_clients=3)"),
    (["--nodes", "2", "--auth", "--", "debug=default"],
     "error: --auth needs --tls: Flower enables SuperNode authentication only over TLS"),
    (["--nodes", "2", "--", "debug=default", "heterogeneity.h=1.5"],
     "error: heterogeneity.h=1.5 is invalid: allowed a number in [0, 1]"),
])
def test_deploy_rejects_bad_arguments_in_one_line(tmp_path: Path, capsys, args, message) -> None:
    workdir = tmp_path / "work"
    assert deploy.main(["--workdir", str(workdir), "--output-dir", str(tmp_path / "out"), *args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]
    assert not workdir.exists()  # nothing was started


def test_deploy_resume_needs_a_checkpoint_and_the_same_settings(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert deploy.main(["--nodes", "2", "--resume", str(out), "--", "debug=default"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --resume {out}: no checkpoint there (checkpoint/checkpoint.pt is missing)")
    settings, yaml = load_settings("debug=default")
    setup = server_setup(settings)
    (out / "config.yaml").write_text(yaml)
    init = setup.init_state
    save_checkpoint(RunFiles(out), 1, init, init, [{"round": 0}], yaml, {})
    assert deploy.main(["--nodes", "2", "--output-dir", str(out), "--", "debug=default"]) == 2
    assert "holds an interrupted run: continue it with --resume" in capsys.readouterr().err
    assert deploy.main(["--nodes", "2", "--resume", str(out), "--", "debug=default", "seed=1"]) == 2
    assert "the run was made with other settings" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# fast: node config and checkpoints


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=2, node_config=node_config, state=RecordDict(), run_config={})


@pytest.mark.parametrize(("node_config", "message"), [
    ({"num-partitions": 2}, "node config partition-id=None is invalid: allowed an integer"),
    ({"partition-id": 2, "num-partitions": 2}, "node config partition-id=2 is out of range: allowed 0..1"),
    ({"partition-id": -1, "num-partitions": 2}, "node config partition-id=-1 is out of range: allowed 0..1"),
    ({"partition-id": "one", "num-partitions": 2}, "node config partition-id='one' is invalid: allowed an integer"),
    ({"partition-id": 0, "num-partitions": 0}, "node config num-partitions=0 is invalid: allowed an integer >= 1"),
    ({"partition-id": 0}, "node config num-partitions=None is invalid: allowed an integer"),
])
def test_bad_node_config_is_a_one_line_error(node_config, message) -> None:
    with pytest.raises(ValueError) as error:
        node_partition(_context(node_config))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_node_config_as_strings_is_accepted() -> None:
    assert node_partition(_context({"partition-id": "1", "num-partitions": "3"})) == (1, 3)


def test_error_reason_drops_flowers_wrapping() -> None:
    reply = Message(error=Error(code=0, reason="<class 'ValueError'>:<'node config partition-id=2 is out of range: "
                                                  "allowed 0..1 (use --node-config 'partition-id=K')'>"),
                    metadata=Metadata(run_id=1, message_id="m", src_node_id=5, dst_node_id=0, reply_to_message_id="i",
                                      group_id="1", created_at=time.time(), ttl=60.0, message_type=MessageType.QUERY))
    assert error_reason(reply) == "node config partition-id=2 is out of range: allowed 0..1 (use --node-config " \
                                  "'partition-id=K')"


def test_checkpoint_round_trip_and_refusals(tmp_path: Path) -> None:
    settings, yaml = load_settings("debug=default")
    init = server_setup(settings).init_state
    weight = init["weight"] * 2
    rows = [{"round": 0, "test_error": 0.5, "clients": None}, {"round": 1, "test_error": 0.25, "clients": 2}]
    server_state = {"m_t": {"weight": torch.ones(2)}, "momentum_vector": [torch.zeros(3)]}
    files = RunFiles(tmp_path)
    save_checkpoint(files, 1, {"weight": weight}, init, rows, yaml, server_state)
    state = load_checkpoint(files, yaml, init)
    assert state["round"] == 1 and state["rows"] == rows and torch.equal(state["state"]["weight"], weight)
    assert torch.equal(state["server_state"]["m_t"]["weight"], torch.ones(2))
    with pytest.raises(RuntimeError, match="made with other settings"):
        load_checkpoint(files, yaml + "# other\n", init)
    with pytest.raises(RuntimeError, match="initial model differs"):
        load_checkpoint(files, yaml, {"weight": init["weight"] + 1})
    with pytest.raises(RuntimeError, match="initial model differs"):
        load_checkpoint(files, yaml, {**init, "bias": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="no checkpoint"):
        load_checkpoint(RunFiles(tmp_path / "elsewhere"), yaml, init)


class _FakeGrid:
    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self):
        return list(self.node_ids)


def test_resumed_strategy_uses_the_true_round_numbers() -> None:
    """After a resume at round 1, the strategy's round 1 is round 2: its schedule entry and the
    clients' server-round (their batch streams) must be those of round 2."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 77, 1, 5
    try:
        init = torch.zeros(2, 3, 5)
        strategy = build_strategy(StrategySettings(name="fedavg"), round_offset=1,
                                  node_of_partition={0: 11, 1: 22, 2: 33}, schedule=[[0], [2], [1]],
                                  report=lambda message: None)
        messages = list(strategy.configure_train(1, state_to_arrays({"weight": init}), ConfigRecord(),
                                                 _FakeGrid([11, 22, 33])))
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    assert [m.metadata.dst_node_id for m in messages] == [33]
    assert messages[0].metadata.message_type == MessageType.TRAIN
    assert messages[0].content["config"]["server-round"] == 2


# ---------------------------------------------------------------------------------------------
# slow: deployment scenarios on loopback, started side by side
#
# A deployed round mostly waits (SuperNodes and the ServerApp poll every 3 s, every message
# starts a ClientApp process, a crashed node is noticed when its heartbeat expires after up to
# 60 s), so the selected scenarios run concurrently, each in its own work folder, and a test
# takes its scenario's observations and checks them. Each scenario stops what it started.


def scenario_insecure(tmp: Path) -> dict:
    """2 SuperNodes, insecure, through the command line: the reference run."""
    workdir, out = tmp / "work", tmp / "out"
    completed = run_cli(workdir, "--nodes", "2", "--output-dir", str(out), "--", *OVERRIDES)
    return {"completed": completed, "workdir": workdir, "out": out}


def scenario_beside_cpu_burner(tmp: Path) -> dict:
    """The reference run while two processes keep both cores of this machine busy (a shared
    workstation or CI runner): every timeout of the deployment must hold under load."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        workdir, out = tmp / "work", tmp / "out"
        completed = run_cli(workdir, "--nodes", "2", "--output-dir", str(out), "--", *OVERRIDES, timeout=900)
    finally:
        terminate_pids([burner.pid for burner in burners], timeout=5.0)
        for burner in burners:
            burner.wait(timeout=10)
    return {"completed": completed, "workdir": workdir, "out": out}


def scenario_tls_auth(tmp: Path) -> dict:
    """--tls --auth, 1 round; meanwhile a SuperNode with an unregistered key tries to join."""
    workdir, out = tmp / "work", tmp / "out"
    rogue_key, rogue_log, rogue_home = tmp / "rogue", tmp / "rogue.log", tmp / "rogue-home"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(rogue_key)], check=True)
    launcher = subprocess.Popen(deploy_cli(workdir, "--nodes", "2", "--tls", "--auth", "--output-dir", str(out),
                                           "--", *OVERRIDES, "fl.num_rounds=1"),
                                cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rogue = None
    try:
        node_log = workdir / "logs" / "supernode-1.log"
        wait_for(lambda: node_log.exists() and "SuperNode ID" in node_log.read_text(), 300, "the registered nodes")
        address = tomllib.loads((workdir / "superlink" / "config.toml").read_text())["superlink"]["deploy"]["address"]
        with open(rogue_log, "wb") as log:
            rogue = subprocess.Popen(
                [str(Path(sys.executable).parent / "flower-supernode"), "--superlink", address,
                 "--root-certificates", str(workdir / "certificates" / "ca.crt"),
                 "--auth-supernode-private-key", str(rogue_key), "--port", str(deploy.free_port()),
                 "--node-config", "partition-id=1 num-partitions=2"],
                env=flower_env(rogue_home), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        rogue_code = rogue.wait(timeout=120)
        stdout, stderr = launcher.communicate(timeout=500)
    finally:
        for process in (rogue, launcher):
            if process is not None and process.poll() is None:
                kill_tree(process.pid)
    return {"code": launcher.returncode, "stdout": stdout, "stderr": stderr, "rogue_code": rogue_code,
            "rogue_log": rogue_log.read_text(), "rogue_home": rogue_home, "workdir": workdir, "out": out}


def scenario_killed_node(tmp: Path) -> dict:
    """2 SuperNodes; SuperNode 1 loses power (SIGKILL of its process tree) once round 0 is done."""
    workdir, out = tmp / "work", tmp / "out"
    launcher = subprocess.Popen(deploy_cli(workdir, "--nodes", "2", "--output-dir", str(out), "--", *OVERRIDES),
                                cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = threading.Event()

    def kill_node_one() -> None:
        wait_for(lambda: checkpoint_round(out) >= 0 or launcher.poll() is not None, 400, "round 0")
        if launcher.poll() is None:
            kill_tree(process_of(workdir / "supernode-1", "flower-supernode"))
            killed.set()

    killer = threading.Thread(target=kill_node_one, daemon=True)
    killer.start()
    try:
        stdout, stderr = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            kill_tree(launcher.pid)
    killer.join(timeout=10)
    return {"code": launcher.returncode, "stdout": stdout, "stderr": stderr, "killed": killed.is_set(),
            "workdir": workdir, "out": out}


def scenario_resume(tmp: Path) -> dict:
    """SIGKILL the SuperLink (its ServerApp dies with it) after round 1, then --resume."""
    first, second, out = tmp / "work-1", tmp / "work-2", tmp / "out"
    launcher = subprocess.Popen(deploy_cli(first, "--nodes", "2", "--output-dir", str(out), "--", *EVERY_ROUND),
                                cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: checkpoint_round(out) >= 1 or launcher.poll() is not None, 400, "round 1")
        interrupted = launcher.poll() is None
        if interrupted:
            os.kill(process_of(first / "superlink", "flower-superlink"), signal.SIGKILL)
        stdout, stderr = launcher.communicate(timeout=180)
    finally:
        if launcher.poll() is None:
            kill_tree(launcher.pid)
    after_crash = {"summary": (out / "summary.json").exists(), "checkpoint_round": checkpoint_round(out),
                   "rounds": [int(row["round"]) for row in read_rounds_csv(out / "rounds.csv")],
                   "leftovers": wait_for_no_process(first)}
    resumed = run_cli(second, "--nodes", "2", "--resume", str(out), "--", *EVERY_ROUND, timeout=500)
    return {"interrupted": interrupted, "code": launcher.returncode, "stdout": stdout, "stderr": stderr,
            "after_crash": after_crash, "resumed": resumed, "workdir": second, "out": out}


def scenario_bad_node_config(tmp: Path) -> dict:
    """One SuperLink, SuperNode 0 fine; SuperNode 1 joins with a bad node config, one case per run."""
    workdir = tmp / "work"
    outcomes = []
    with LocalDeployment(workdir) as deployment:
        deployment.start_superlink()
        deployment.start_supernode("supernode-0", "partition-id=0 num-partitions=2")
        for index, node_config in enumerate(BAD_NODE_CONFIGS):
            name = f"bad-{index}"
            node = deployment.start_supernode(name, node_config)
            deployment.wait_for_nodes()
            out = tmp / f"out-{index}"
            outcomes.append((deployment.run_app(OVERRIDES, out), out))
            deployment.supernodes.pop(name)
            stop_process(node)  # SIGTERM: the SuperNode leaves the federation before the next case
    return {"outcomes": outcomes, "workdir": workdir}


BAD_NODE_CONFIGS = ("num-partitions=2", "partition-id=1 num-partitions=3")  # node config of SuperNode 1
BAD_NODE_REASONS = ("node config partition-id=None is invalid: allowed an integer",
                    "has num-partitions=3, but fl.num_clients=2")

SCENARIOS = {  # name: (function, the tests that use it)
    "insecure": (scenario_insecure, {"test_insecure_deployment_end_to_end", "test_deployment_equals_simulation",
                                     "test_resume_after_a_killed_superlink_reaches_the_uninterrupted_model",
                                     "test_a_deployment_completes_beside_a_cpu_burner"}),
    "beside_cpu_burner": (scenario_beside_cpu_burner, {"test_a_deployment_completes_beside_a_cpu_burner"}),
    "tls_auth": (scenario_tls_auth, {"test_tls_with_authentication_refuses_an_unregistered_supernode"}),
    "killed_node": (scenario_killed_node, {"test_killed_supernode_run_goes_on_with_the_others"}),
    "resume": (scenario_resume, {"test_resume_after_a_killed_superlink_reaches_the_uninterrupted_model"}),
    "bad_node_config": (scenario_bad_node_config, {"test_bad_node_config_fails_the_run_with_the_reason"}),
}


def wait_for_no_process(workdir: Path, timeout: float = 15) -> list[int]:
    """The processes of `workdir` still alive after up to `timeout` s (should be none)."""
    deadline = time.monotonic() + timeout
    while processes_with_flwr_home(workdir) and time.monotonic() < deadline:
        time.sleep(0.3)
    return processes_with_flwr_home(workdir)


@pytest.fixture(scope="module")
def scenarios(request, tmp_path_factory):
    """Start every scenario some selected test needs, all at once; {name: Future}."""
    selected = {item.name for item in request.session.items}
    names = [name for name, (_, users) in SCENARIOS.items() if users & selected]
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        yield {name: pool.submit(SCENARIOS[name][0], tmp_path_factory.mktemp(name)) for name in names}


@pytest.mark.slow
def test_insecure_deployment_end_to_end(scenarios) -> None:
    run = scenarios["insecure"].result()
    completed, workdir, out = run["completed"], run["workdir"], run["out"]
    assert completed.returncode == 0, explain(completed)
    assert re.search(r"run \d+ finished:completed; results in", completed.stdout)
    assert "[initmatters] round 2/2" in completed.stdout  # progress streamed
    summary = assert_valid_results(out, rounds=2)
    assert summary["rounds_with_missing_clients"] == [] and summary["resumed_from_round"] is None
    assert [int(row["clients"]) for row in read_rounds_csv(out / "rounds.csv")[1:]] == [2, 2]
    for k in range(2):  # every SuperNode ran ClientApps
        assert "Start `flwr-clientapp` process" in (workdir / "logs" / f"supernode-{k}.log").read_text()
    assert wait_for_no_process(workdir) == []


@pytest.mark.slow
def test_a_deployment_completes_beside_a_cpu_burner(scenarios) -> None:
    run = scenarios["beside_cpu_burner"].result()
    completed, workdir, out = run["completed"], run["workdir"], run["out"]
    assert completed.returncode == 0, explain(completed)
    summary = assert_valid_results(out, rounds=2)
    assert summary["rounds_with_missing_clients"] == []
    assert_same_rows(out / "rounds.csv", scenarios["insecure"].result()["out"] / "rounds.csv")
    assert wait_for_no_process(workdir) == []


@pytest.mark.slow
def test_deployment_equals_simulation(scenarios, tmp_path: Path) -> None:
    """Same config and seed: Flower's in-process simulation gives the deployment's model."""
    settings, yaml = load_settings(OVERRIDES)
    simulated = tmp_path / "simulated"
    run_simulation(server_app=build_server_app(settings, yaml, simulated), client_app=client_app,
                   num_supernodes=settings.fl.num_clients, backend_config={"client_resources": {"num_cpus": 1}})
    run = scenarios["insecure"].result()
    assert run["completed"].returncode == 0, explain(run["completed"])
    deployed = run["out"]
    torch.testing.assert_close(load_weight(simulated / "model_final.pt"), load_weight(deployed / "model_final.pt"),
                               rtol=0, atol=ATOL)
    torch.testing.assert_close(load_weight(simulated / "model_init.pt"), load_weight(deployed / "model_init.pt"),
                               rtol=0, atol=0)
    assert_same_rows(deployed / "rounds.csv", simulated / "rounds.csv")


@pytest.mark.slow
def test_tls_with_authentication_refuses_an_unregistered_supernode(scenarios) -> None:
    run = scenarios["tls_auth"].result()
    assert run["rogue_code"] != 0  # refused: the unregistered SuperNode gives up and exits
    assert "Failed to activate SuperNode" in run["rogue_log"]
    assert run["code"] == 0, run["stdout"][-4000:] + run["stderr"][-4000:]
    assert "TLS + SuperNode authentication" in run["stdout"]
    assert_valid_results(run["out"], rounds=1)
    assert wait_for_no_process(run["workdir"]) == []
    assert processes_with_flwr_home(run["rogue_home"]) == []


@pytest.mark.slow
def test_killed_supernode_run_goes_on_with_the_others(scenarios) -> None:
    """Full participation, SuperNode 1 killed after start-up: once its heartbeat expires its
    messages come back as errors and every round aggregates SuperNode 0's reply alone; the
    results are a valid, complete contract that records the missing replies."""
    run = scenarios["killed_node"].result()
    assert run["killed"], "the run ended before SuperNode 1 could be killed"
    assert run["code"] == 0, run["stdout"][-4000:] + run["stderr"][-4000:]
    assert "1 of 2 scheduled clients replied" in run["stdout"]
    out = run["out"]
    summary = assert_valid_results(out, rounds=2)
    assert summary["rounds_with_missing_clients"] == [1, 2]
    assert [int(row["clients"]) for row in read_rounds_csv(out / "rounds.csv")[1:]] == [1, 1]
    # not corrupt: each round's model is exactly SuperNode 0's local update of the previous one
    settings, _ = load_settings(OVERRIDES)
    state = server_setup(settings).init_state
    for server_round in (1, 2):
        state = local_update(settings, 0, 2, state, None, server_round).state
    weight = state["weight"]
    torch.testing.assert_close(load_weight(out / "model_final.pt"), weight, rtol=0, atol=ATOL)
    assert wait_for_no_process(run["workdir"]) == []


@pytest.mark.slow
def test_resume_after_a_killed_superlink_reaches_the_uninterrupted_model(scenarios) -> None:
    run = scenarios["resume"].result()
    assert run["interrupted"], "the run ended before the SuperLink could be killed"
    assert run["code"] == 1, run["stdout"][-3000:] + run["stderr"][-3000:]
    assert "the SuperLink exited with code -9 during the run" in run["stderr"]
    crash = run["after_crash"]
    assert not crash["summary"] and crash["checkpoint_round"] == 1 and crash["rounds"][:2] == [0, 1]
    assert crash["leftovers"] == []

    resumed, out = run["resumed"], run["out"]
    assert resumed.returncode == 0, explain(resumed)
    assert "resuming after round 1/2" in resumed.stdout
    summary = assert_valid_results(out, rounds=2)
    assert summary["resumed_from_round"] == 1
    reference = scenarios["insecure"].result()["out"]
    torch.testing.assert_close(load_weight(out / "model_final.pt"), load_weight(reference / "model_final.pt"),
                               rtol=0, atol=ATOL)
    assert_same_rows(out / "rounds.csv", reference / "rounds.csv")
    assert wait_for_no_process(run["workdir"]) == []


@pytest.mark.slow
def test_bad_node_config_fails_the_run_with_the_reason(scenarios) -> None:
    run = scenarios["bad_node_config"].result()
    assert len(run["outcomes"]) == len(BAD_NODE_REASONS)
    for (outcome, out), reason in zip(run["outcomes"], BAD_NODE_REASONS, strict=True):
        assert outcome.status == "finished:failed" and not outcome.ok
        assert reason in outcome.details and "\n" not in outcome.details
        assert not outcome.summary_written and not (out / "checkpoint").exists()
        assert not list(out.rglob("*.tmp"))
    assert wait_for_no_process(run["workdir"]) == []
