"""Deployment between distinct hosts: the SuperLink and each SuperNode in its own network namespace.

Every host has one private, non-loopback address on a test switch (tests/netns.py), so the
SuperNodes reach the SuperLink over a network as on real devices, and a host's cable can be
unplugged (its link set down) while its processes keep running. Each test is one small TLS
deployment (2 SuperNodes, `debug=default` settings); the SuperLink, its ServerApp and `flwr`
run on host `server`, SuperNode K on host `node-K`. Waits are generous and configurable
(INITMATTERS_NETNS_TIMEOUT_S); nothing asserts on timing. Run them with `pytest -m netns`
(as root; they skip with the reason where namespaces cannot be made).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from netns import TestNetwork, namespaces, namespaces_unavailable, remove_stale_networks

from initmatters.deploy import LOOPBACK, DeployError, LocalDeployment, RunOutcome, health_answers
from initmatters.launch import stop_process
from initmatters_core.results import RunFiles, read_rounds_csv

pytestmark = [pytest.mark.slow, pytest.mark.netns]

TIMEOUT_S = float(os.environ.get("INITMATTERS_NETNS_TIMEOUT_S", "900"))  # longest wait for any one step
HOSTS = ("server", "node-0", "node-1")
NODE_HOSTS = ("node-0", "node-1")
OVERRIDES = ["debug=default"]  # 2 clients, d = 100, m = 4
HEARTBEAT_EXPIRY_S = 60  # Flower 1.41: a SuperNode is offline after 2 missed 30 s heartbeats
SUPERLINK_OUTAGE_S = 10.0  # "a few seconds": well under the heartbeat expiry


# ---------------------------------------------------------------------------------------------
# helpers


def wait_for(condition: Callable[[], bool], what: str, run: Future | None = None) -> None:
    """Until `condition()`; fails after TIMEOUT_S, or at once if `run` ended first."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if run is not None and run.done():
            raise AssertionError(f"the run ended before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {TIMEOUT_S:g}s waiting for {what}")
        time.sleep(0.3)


@pytest.fixture
def network() -> Iterator[TestNetwork]:
    """Hosts server, node-0, node-1 on one switch; removed (processes killed by PID) afterwards."""
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    remove_stale_networks()
    with TestNetwork.create(HOSTS) as created:
        yield created
        leftover = created.processes()  # the deployment stopped everything it started
    assert leftover == []


def deployment_on(network: TestNetwork, workdir: Path) -> LocalDeployment:
    """A TLS deployment whose SuperLink runs on host `server` at its network address."""
    return LocalDeployment(workdir, tls=True, address=network.address("server"), server=network.host("server"))


def rounds_clients(out: Path) -> list[int]:
    """The `clients` column of rounds.csv (rounds 1..R): how many clients replied in each round."""
    return [int(row["clients"]) for row in read_rounds_csv(out / "rounds.csv")[1:]]


def rounds_done(out: Path) -> int:
    """Rounds logged in rounds.csv so far (round 0 excluded); 0 before the first."""
    try:
        return max(len(read_rounds_csv(out / "rounds.csv")) - 1, 0)
    except (OSError, ValueError, KeyError):
        return 0


def run_with(deployment: LocalDeployment, overrides: list[str], out: Path,
             meanwhile: Callable[[Future], None]) -> RunOutcome:
    """deployment.run_app in a thread while `meanwhile(run)` acts on the network in this one.

    Processes are started from this (long-lived) thread: a managed process gets SIGTERM when
    the thread that started it ends. If `meanwhile` fails, the SuperLink is stopped so the run ends.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        run = pool.submit(deployment.run_app, overrides, out)
        try:
            meanwhile(run)
        except BaseException:
            if deployment.superlink is not None:
                stop_process(deployment.superlink)
            raise
        return run.result(timeout=TIMEOUT_S)


def summary_of(out: Path) -> dict:
    return json.loads(RunFiles(out).summary.read_text())


def explain(deployment: LocalDeployment) -> str:
    """The tails of the deployment's logs, for an assertion message."""
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}"
                     for log in sorted(deployment.logs.glob("*.log")))


# ---------------------------------------------------------------------------------------------
# the test network itself

LISTEN = "import socket, sys; s = socket.create_server(('0.0.0.0', int(sys.argv[1])))\nwhile True: s.accept()"
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()"


def test_the_test_network_joins_hosts_unplugs_them_and_leaves_nothing() -> None:
    """Host b reaches a server on host a at a's address (not at 127.0.0.1), not while b is
    unplugged, again once plugged back; closing kills the server by PID and deletes the namespaces."""
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    port = 45211

    def b_reaches(address: str) -> bool:
        command = network.host("b").command([sys.executable, "-c", CONNECT, address, str(port)])
        return subprocess.run(command, capture_output=True, timeout=60).returncode == 0

    with TestNetwork.create(["a", "b"]) as network:
        server = subprocess.Popen(network.host("a").command([sys.executable, "-c", LISTEN, str(port)]))
        wait_for(lambda: b_reaches(network.address("a")), "host b to reach host a")
        assert not b_reaches(LOOPBACK)  # b's own loopback: a is another host
        network.link_down("b")
        assert not b_reaches(network.address("a"))
        network.link_up("b")
        wait_for(lambda: b_reaches(network.address("a")), "host b to reach host a again")
        assert network.processes() == [server.pid]
        names = list(network.created)
    assert server.wait(timeout=60) == -signal.SIGTERM
    assert len(names) == 3 and not set(names) & set(namespaces())  # a, b and the switch


# ---------------------------------------------------------------------------------------------
# TLS across hosts


def test_tls_deployment_across_hosts_completes(network: TestNetwork, tmp_path: Path) -> None:
    """SuperNodes on two other hosts reach the SuperLink only through its network address; the
    certificate names that address; a 2-round run completes with both clients in every round."""
    out = tmp_path / "out"
    with deployment_on(network, tmp_path / "work") as deployment:
        deployment.start(2, [network.host(name) for name in NODE_HOSTS])
        ca = deployment.certs / "ca.crt"
        node = network.host("node-0")
        assert health_answers(f"https://{deployment.address}/health", ca, node)
        assert not health_answers(f"https://{LOOPBACK}:{deployment.port}/health", ca, node)  # another host
        outcome = deployment.run_app(OVERRIDES, out)
        assert outcome.ok, (outcome, explain(deployment))
    assert rounds_clients(out) == [2, 2]
    assert summary_of(out)["rounds_with_missing_clients"] == []


def test_certificate_without_the_servers_address_is_refused(network: TestNetwork, tmp_path: Path) -> None:
    """A server certificate for localhost/127.0.0.1 only: a SuperNode that reaches the SuperLink
    at its network address refuses the TLS handshake and exits without joining."""
    with deployment_on(network, tmp_path / "work") as deployment:
        deployment.make_certificates(0, names=["localhost", LOOPBACK])
        deployment.start_superlink()
        node = deployment.start_node(0, 2, network.host("node-0"))
        code = node.wait(timeout=TIMEOUT_S)
        log = (deployment.logs / "supernode-0.log").read_text(errors="replace")
        assert code != 0, log
        assert "SSL/TLS handshake error" in log and "Exit Code: 305" in log, log
        assert f"certificate is not valid for '{network.address('server')}'" in log, log
        assert deployment.node_id("supernode-0") is None  # never joined
        with pytest.raises(DeployError, match="unavailable"):  # flwr, on the server host, refuses it too
            deployment.online_nodes()


# ---------------------------------------------------------------------------------------------
# links going down


def test_supernode_link_down_longer_than_the_heartbeat(network: TestNetwork, tmp_path: Path, capfd) -> None:
    """node-1 is unplugged after round 1 and plugged back once a round missed it (so for longer
    than the heartbeat expiry): the run completes, reports the rounds it missed, and node-1 (the
    same SuperNode process, the same node id) replies again in the later rounds."""
    rounds, out = 8, tmp_path / "out"
    overrides = [*OVERRIDES, f"fl.num_rounds={rounds}"]
    unplugged: dict[str, float] = {}

    def unplug_node_1_until_a_round_missed_it(run: Future) -> None:
        wait_for(lambda: rounds_done(out) >= 1, "round 1", run)
        network.link_down("node-1")
        unplugged["at"] = time.monotonic()
        wait_for(lambda: 1 in rounds_clients(out), "a round without node-1", run)
        unplugged["for_s"] = time.monotonic() - unplugged["at"]
        network.link_up("node-1")

    with deployment_on(network, tmp_path / "work") as deployment:
        deployment.start(2, [network.host(name) for name in NODE_HOSTS])
        node_1 = deployment.supernodes["supernode-1"]
        outcome = run_with(deployment, overrides, out, unplug_node_1_until_a_round_missed_it)
        assert outcome.ok, (outcome, explain(deployment))
        assert node_1.poll() is None  # the SuperNode process lived through the outage
    clients = rounds_clients(out)
    missed = summary_of(out)["rounds_with_missing_clients"]
    assert missed == [r for r, n in enumerate(clients, start=1) if n == 1] and missed, clients
    assert clients[0] == 2 and missed == list(range(missed[0], missed[-1] + 1)), clients  # one outage
    assert unplugged["for_s"] > HEARTBEAT_EXPIRY_S / 2, unplugged  # a miss needs the heartbeat to expire
    assert missed[-1] < rounds and set(clients[missed[-1]:]) == {2}, clients  # used again once back
    output = capfd.readouterr().out
    for r in missed:
        assert f"round {r}: 1 of 2 scheduled clients replied, none from partition-id [1]" in output


def test_superlink_link_down_for_seconds(network: TestNetwork, tmp_path: Path) -> None:
    """The server is unplugged for a few seconds after round 1: both SuperNodes reconnect and
    every round has both clients (the outage is shorter than the heartbeat expiry)."""
    rounds, out = 3, tmp_path / "out"
    log_sizes: dict[str, int] = {}

    def unplug_server_briefly(run: Future) -> None:
        wait_for(lambda: rounds_done(out) >= 1, "round 1", run)
        log_sizes.update({log.name: log.stat().st_size for log in deployment.logs.glob("supernode-*.log")})
        network.link_down("server")
        time.sleep(SUPERLINK_OUTAGE_S)
        network.link_up("server")

    with deployment_on(network, tmp_path / "work") as deployment:
        deployment.start(2, [network.host(name) for name in NODE_HOSTS])
        outcome = run_with(deployment, [*OVERRIDES, f"fl.num_rounds={rounds}"], out, unplug_server_briefly)
        assert outcome.ok, (outcome, explain(deployment))
        assert len(log_sizes) == 2
        for name, size in log_sizes.items():  # each SuperNode failed to reach it, then reconnected
            after = (deployment.logs / name).read_bytes()[size:].decode(errors="replace")
            assert "Connection attempt failed" in after and "Connection successful after" in after, after
    assert rounds_clients(out) == [2] * rounds
    assert summary_of(out)["rounds_with_missing_clients"] == []


# ---------------------------------------------------------------------------------------------
# a late SuperNode


def test_supernode_joining_after_the_run_started(network: TestNetwork, tmp_path: Path) -> None:
    """The run starts with node-0 alone; node-1 starts once the ServerApp is running (it waits up
    to fl.wait_for_nodes_s for all fl.num_clients SuperNodes): every round has both clients."""
    out = tmp_path / "out"
    started_late: list[bool] = []

    def start_node_1_once_the_run_started(run: Future) -> None:
        wait_for(lambda: RunFiles(out).config.exists(), "the ServerApp to start", run)
        started_late.append(not RunFiles(out).rounds.exists())
        deployment.start_node(1, 2, network.host("node-1"))

    with deployment_on(network, tmp_path / "work") as deployment:
        deployment.make_certificates(0)
        deployment.start_superlink()
        deployment.start_node(0, 2, network.host("node-0"))
        deployment.wait_for_nodes()
        outcome = run_with(deployment, OVERRIDES, out, start_node_1_once_the_run_started)
        assert outcome.ok, (outcome, explain(deployment))
        assert "Start `flwr-clientapp` process" in (deployment.logs / "supernode-1.log").read_text()
    assert started_late == [True]
    assert rounds_clients(out) == [2, 2]
