"""Edge: one-command local deployment, a SuperLink and N SuperNodes as separate processes.

    python -m initmatters.deploy --nodes N [--tls] [--auth] [--output-dir DIR | --resume DIR]
                                 [--workdir DIR] [--verbose] [-- HYDRA OVERRIDES ...]

Validates the settings first (a bad one fails in a second, before any start-up), starts a
SuperLink and N SuperNodes (node config `partition-id=K num-partitions=N`) on free loopback
ports, each with its own FLWR_HOME under the work folder, runs the app on them with `flwr run`
(per-round progress is streamed), and exits 0 only if the run wrote its summary.json AND the
SuperLink reports it `finished:completed`. Every process it started is stopped by PID at the
end, also on Ctrl-C, SIGTERM or failure. `--resume DIR` continues an interrupted run from the
checkpoint the ServerApp writes after every round.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from initmatters.flower_log import is_flower_noise
from initmatters.launch import (
    PROJECT_ROOT,
    Interrupted,
    flower_env,
    flwr_run,
    free_port,
    managed_process,
    processes_with_flwr_home,
    stop_signals_raise,
    terminate_pids,
    venv_script,
)
from initmatters.run import load_settings_or_report
from initmatters_core.results import SUMMARY_FILE, RunFiles, default_output_dir

CONNECTION = "deploy"  # the [superlink.deploy] connection written to the SuperLink's FLWR_HOME
CERTIFICATES_DIR = "certificates"  # CA, SuperLink and SuperNode keys of a deployment
MAKE_CERTS = PROJECT_ROOT / "scripts" / "make_certs.sh"
COMPLETED = "finished:completed"
LOOPBACK = "127.0.0.1"
# Probes https?://HOST:PORT/health from another host (argv: URL, CA file or ""); exit code 0 when it answers 200.
HEALTH_PROBE = ("import ssl, sys, urllib.request as u; c = ssl.create_default_context(cafile=sys.argv[2]) "
                "if sys.argv[2] else None; o = u.build_opener(u.ProxyHandler({}), u.HTTPSHandler(context=c)); "
                "sys.exit(o.open(sys.argv[1], timeout=2.0).status != 200)")


class DeployError(RuntimeError):
    """A deployment step failed; the message is one line."""


@dataclass(frozen=True)
class Host:
    """Where a process of a deployment runs: `prefix` is prepended to its command line.

    No prefix: this machine. ("ip", "netns", "exec", NAME): a network namespace, i.e. another
    host on a test network that shares this machine's files. The prefix must exec the command
    (as `ip netns exec` does), so that the PID started is the process itself and stopping it by
    PID stops it.
    """

    prefix: tuple[str, ...] = ()

    def command(self, args: Sequence[str]) -> list[str]:
        return [*self.prefix, *args]


THIS_MACHINE = Host()


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: the SuperLink's run id and status, and whether summary.json exists."""

    run_id: int | None
    status: str
    details: str
    summary_written: bool

    @property
    def ok(self) -> bool:
        return self.summary_written and self.status == COMPLETED


def stop_leftovers(workdir: Path, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, every process processes_with_flwr_home(workdir) finds."""
    terminate_pids(processes_with_flwr_home(workdir), timeout)


def health_answers(url: str, ca_file: Path | None, host: Host = THIS_MACHINE) -> bool:
    """True when `url` (the SuperLink's /health) answers 200, asked from `host`."""
    if host.prefix:
        probe = host.command([sys.executable, "-c", HEALTH_PROBE, url, str(ca_file or "")])
        try:
            return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(url, timeout=2.0) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
        return False


def wait_until_serving(port: int, process: subprocess.Popen, ca_file: Path | None, timeout: float = 60.0,
                       host: Host = THIS_MACHINE) -> None:
    """Block until the SuperLink's /health answers on loopback of its host (HTTPS when `ca_file` is given)."""
    url = f"{'https' if ca_file else 'http'}://{LOOPBACK}:{port}/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DeployError(f"flower-superlink exited with code {process.returncode} during start-up")
        if health_answers(url, ca_file, host):
            return
        time.sleep(0.2)
    raise DeployError(f"flower-superlink did not answer on port {port} within {timeout:g}s")


class LocalDeployment:
    """A SuperLink and SuperNodes, each a process stopped by PID on exit.

    By default every process runs on this machine and the SuperLink listens on loopback. With
    `address` (the SuperLink's IP address or host name as the SuperNodes reach it) the SuperLink
    runs on `server` and listens on all its interfaces, as on a real server (its own ServerApp
    still reaches it on loopback), `flwr` runs there too, each SuperNode on the Host given to
    start_supernode, and the TLS certificate names `address` besides localhost and 127.0.0.1.
    All hosts must see `workdir` (the same file system).

    Layout of `workdir`: superlink/ (its FLWR_HOME: config.toml, state.db), supernode-<K>/
    (FLWR_HOME of SuperNode K), logs/*.log, certificates/ (with tls). Use as a context manager;
    leaving it stops the SuperNodes, then the SuperLink, then anything they left behind.
    """

    def __init__(self, workdir: Path, *, tls: bool = False, auth: bool = False, address: str = LOOPBACK,
                 server: Host = THIS_MACHINE) -> None:
        if auth and not tls:
            raise DeployError("--auth needs --tls: Flower enables SuperNode authentication only over TLS")
        self.workdir = workdir.resolve()
        self.tls, self.auth = tls, auth
        self.host, self.server = address, server
        self.flwr_home = self.workdir / "superlink"
        self.logs = self.workdir / "logs"
        self.certs = self.workdir / CERTIFICATES_DIR
        self.port: int | None = None
        self.superlink: subprocess.Popen | None = None
        self.supernodes: dict[str, subprocess.Popen] = {}
        self._stack = ExitStack()

    def __enter__(self) -> LocalDeployment:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stack.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._stack.close()  # LIFO: SuperNodes first, then the SuperLink
        finally:
            stop_leftovers(self.workdir)

    # -- environment -------------------------------------------------------------------------

    def env(self, flwr_home: Path | None = None) -> dict[str, str]:
        """Flower's environment with this deployment's FLWR_HOME (or the given one)."""
        return flower_env(flwr_home or self.flwr_home)

    @property
    def address(self) -> str:
        """HOST:PORT of the SuperLink as the SuperNodes reach it."""
        if self.port is None:
            raise DeployError("the SuperLink is not started")
        return f"{self.host}:{self.port}"

    @property
    def listen_host(self) -> str:
        """The SuperLink's --host: loopback for a local deployment, all interfaces otherwise."""
        return LOOPBACK if self.host == LOOPBACK else "0.0.0.0"

    def certificate_names(self) -> list[str]:
        """subjectAltNames of the SuperLink's certificate: localhost, 127.0.0.1 and its address."""
        return list(dict.fromkeys(["localhost", LOOPBACK, self.host]))

    def _flwr(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """`flwr ARGS --format json` against this SuperLink; its JSON answer (raises if unsuccessful)."""
        command = self.server.command([venv_script("flwr"), *args, "--format", "json"])
        completed = subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=timeout,
                                   cwd=self.workdir)
        try:
            answer = json.loads(completed.stdout)
        except json.JSONDecodeError:
            answer = {"success": False, "error-message": (completed.stdout + completed.stderr).strip()}
        if not answer.get("success"):
            reason = " ".join(str(answer.get("error-message", "")).split())
            raise DeployError(f"flwr {' '.join(args[:2])} failed: {reason}")
        return answer

    # -- start-up ----------------------------------------------------------------------------

    def make_certificates(self, num_keys: int, names: Sequence[str] | None = None) -> None:
        """CA + SuperLink certificate for `names` (default: certificate_names()), and `num_keys`
        SuperNode key pairs."""
        if self.certs.exists():
            shutil.rmtree(self.certs)
        names = self.certificate_names() if names is None else names
        completed = subprocess.run(["bash", str(MAKE_CERTS), "-o", str(self.certs), "-n", ",".join(names),
                                    "-k", str(num_keys)], capture_output=True, text=True, timeout=120)
        if completed.returncode:
            raise DeployError(f"{MAKE_CERTS.name} failed: {' '.join(completed.stderr.split())}")

    def start_superlink(self) -> None:
        """flower-superlink on a free port, waited for, plus the `deploy` connection in config.toml."""
        self.port = free_port()
        command = [venv_script("flower-superlink"), "--host", self.listen_host, "--port", str(self.port),
                   "--database", str(self.flwr_home / "state.db"), "--disable-runtime-dependency-installation"]
        if self.tls:
            command += ["--ssl-certfile", str(self.certs / "server.pem"),
                        "--ssl-keyfile", str(self.certs / "server.key"),
                        "--ssl-ca-certfile", str(self.certs / "ca.crt")]
        else:
            command.append("--insecure")
        if self.auth:
            command.append("--enable-supernode-auth")
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        for stale in self.flwr_home.glob("state.db*"):  # a private SuperLink starts with no runs
            stale.unlink()
        self._write_connection()
        self.superlink = self._stack.enter_context(
            managed_process(self.server.command(command), self.env(), log_path=self.logs / "superlink.log",
                            cwd=self.workdir))
        wait_until_serving(self.port, self.superlink, self.certs / "ca.crt" if self.tls else None, host=self.server)

    def _write_connection(self) -> None:
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "{self.address}"']
        lines.append(f"root-certificates = {json.dumps(str(self.certs / 'ca.crt'))}" if self.tls else "insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    def register(self, public_key: Path) -> int:
        """`flwr supernode register PUBLIC_KEY deploy`; the node id the SuperLink assigned."""
        return int(self._flwr("supernode", "register", str(public_key), CONNECTION)["node-id"])

    def start_supernode(self, name: str, node_config: str | None, private_key: Path | None = None,
                        host: Host = THIS_MACHINE) -> subprocess.Popen:
        """flower-supernode `name` (its own FLWR_HOME and runtime port) on `host`, connected to this SuperLink."""
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        command = [venv_script("flower-supernode"), "--superlink", self.address, "--port", str(free_port())]
        command += ["--root-certificates", str(self.certs / "ca.crt")] if self.tls else ["--insecure"]
        if private_key is not None:
            command += ["--auth-supernode-private-key", str(private_key)]
        if node_config is not None:
            command += ["--node-config", node_config]
        process = self._stack.enter_context(
            managed_process(host.command(command), self.env(home), log_path=self.logs / f"{name}.log", cwd=home))
        self.supernodes[name] = process
        return process

    def start(self, num_nodes: int, node_hosts: Sequence[Host] | None = None) -> None:
        """Certificates/keys as needed, the SuperLink, and SuperNodes 0..num_nodes-1 (SuperNode K on
        node_hosts[K], default this machine), all connected."""
        hosts = list(node_hosts) if node_hosts is not None else [THIS_MACHINE] * num_nodes
        if len(hosts) != num_nodes:
            raise DeployError(f"{len(hosts)} hosts for {num_nodes} SuperNodes: give one host per SuperNode")
        if self.tls:
            self.make_certificates(num_nodes if self.auth else 0)
        self.start_superlink()
        for k, host in enumerate(hosts):
            self.start_node(k, num_nodes, host)
        self.wait_for_nodes()

    def start_node(self, k: int, num_nodes: int, host: Host = THIS_MACHINE) -> subprocess.Popen:
        """SuperNode `supernode-K` for partition K of `num_nodes` on `host`, registered first with --auth."""
        key = None
        if self.auth:
            self.register(self.certs / f"supernode-{k}.pub")
            key = self.certs / f"supernode-{k}"
        return self.start_supernode(f"supernode-{k}", f"partition-id={k} num-partitions={num_nodes}", key, host)

    def online_nodes(self) -> list[dict[str, Any]]:
        """The SuperNodes the SuperLink lists as online (`flwr supernode list`)."""
        return [node for node in self._flwr("supernode", "list", CONNECTION)["nodes"] if node["status"] == "online"]

    def node_id(self, name: str) -> int | None:
        """The node id SuperNode `name` logged once the SuperLink accepted it (None before)."""
        try:
            text = (self.logs / f"{name}.log").read_text(errors="replace")
        except OSError:
            return None
        match = re.search(r"SuperNode ID: (\d+)", text)
        return int(match.group(1)) if match else None

    def wait_for_nodes(self, timeout: float = 90.0) -> None:
        """Until every started SuperNode is connected; one that exits meanwhile is an error."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = []
            for name, process in self.supernodes.items():
                if process.poll() is not None:
                    raise DeployError(f"{name} exited with code {process.returncode} while connecting "
                                      f"(see {self.logs / (name + '.log')})")
                if self.node_id(name) is None:
                    waiting.append(name)
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise DeployError(f"{', '.join(waiting)} did not connect within {timeout:g}s (logs in {self.logs})")
            time.sleep(0.3)

    # -- runs --------------------------------------------------------------------------------

    def runs(self) -> dict[int, dict[str, Any]]:
        """The SuperLink's runs (`flwr list`), by run id."""
        return {int(run["run-id"]): run for run in self._flwr("list", CONNECTION)["runs"]}

    def run_app(self, overrides: Sequence[str], output_dir: Path, verbose: bool = False) -> RunOutcome:
        """`flwr run <project> deploy --stream` with the given overrides and output-dir; how it ended.

        verbose: Flower's full log (else this project's lines and Flower's warnings and errors).
        """
        run_config = {"overrides": shlex.join(overrides), "output-dir": str(output_dir), "verbose": verbose}
        flwr_run(PROJECT_ROOT, self.env(), run_config, connection=CONNECTION, prefix=self.server.prefix,
                 drop_line=None if verbose else is_flower_noise)
        summary_written = (output_dir / SUMMARY_FILE).exists()
        if self.superlink is None or self.superlink.poll() is not None:
            code = self.superlink.returncode if self.superlink else None
            return RunOutcome(None, f"lost: the SuperLink exited with code {code} during the run", "", summary_written)
        try:
            runs = self.runs()  # a fresh database: the run just started is the only one
        except (DeployError, subprocess.TimeoutExpired) as error:
            return RunOutcome(None, "unknown", f"could not ask the SuperLink: {error}", summary_written)
        if not runs:
            return RunOutcome(None, "not started: flwr run did not start a run", "", summary_written)
        run_id = max(runs, key=lambda rid: str(runs[rid].get("pending-at", "")))
        run = runs[run_id]
        return RunOutcome(run_id, str(run.get("status", "unknown")), str(run.get("status-details", "")),
                          summary_written)


# ---------------------------------------------------------------------------------------------
# the command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m initmatters.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, required=True, help="number of SuperNodes; must equal fl.num_clients")
    parser.add_argument("--tls", action="store_true", help="TLS with a fresh CA and SuperLink certificate")
    parser.add_argument("--auth", action="store_true", help="SuperNode authentication (needs --tls)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output-dir", type=Path, default=None, help="results folder (default: outputs/<date>/<time>)")
    where.add_argument("--resume", type=Path, default=None, metavar="DIR",
                       help="continue the interrupted run whose results folder is DIR (same overrides)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="FLWR_HOMEs, logs and certificates (default: a temporary folder, removed after a "
                             "successful run; its private keys are removed on every exit)")
    parser.add_argument("--verbose", action="store_true",
                        help="show Flower's full log (default: this project's progress and result lines, "
                             "Flower's warnings and errors)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides after --, e.g. -- init=pretrained")
    return parser.parse_args(argv)


def _check_output_dir(output_dir: Path, resume: bool, resolved_yaml: str) -> str | None:
    """The one-line problem with using `output_dir` (None if fine)."""
    files = RunFiles(output_dir)
    checkpoint = files.checkpoint
    if files.finished():
        return f"{output_dir} already holds a finished run: choose another folder"
    if not resume:
        if checkpoint.exists():
            return (f"{output_dir} holds an interrupted run: continue it with --resume {output_dir} "
                    f"or choose another folder")
        return None
    if not checkpoint.exists():
        return f"--resume {output_dir}: no checkpoint there ({checkpoint.relative_to(output_dir)} is missing)"
    config = files.config
    if config.exists() and config.read_text() != resolved_yaml:
        return (f"--resume {output_dir}: the run was made with other settings than these overrides: "
                f"pass the same overrides as the interrupted run (see {config})")
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    loaded = load_settings_or_report(args.overrides)
    if loaded is None:
        return 2
    settings, resolved_yaml, overrides = loaded
    problem = None
    if args.nodes < 1:
        problem = f"--nodes={args.nodes} is invalid: allowed a positive integer (one SuperNode per client)"
    elif args.nodes != settings.fl.num_clients:
        problem = (f"--nodes={args.nodes} but fl.num_clients={settings.fl.num_clients}: they must be equal "
                   f"(one SuperNode per client; add -- fl.num_clients={args.nodes})")
    elif args.auth and not args.tls:
        problem = "--auth needs --tls: Flower enables SuperNode authentication only over TLS"
    output_dir = (args.resume or args.output_dir or default_output_dir(PROJECT_ROOT)).resolve()
    problem = problem or _check_output_dir(output_dir, args.resume is not None, resolved_yaml)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="initmatters-deploy-")) if temporary else args.workdir.resolve()
    security = "TLS + SuperNode authentication" if args.auth else "TLS" if args.tls else "insecure (loopback only)"
    print(f"initmatters.deploy: SuperLink + {args.nodes} SuperNodes, {security}, {settings.fl.num_rounds} "
          f"round{'s' if settings.fl.num_rounds != 1 else ''}; "
          f"{'resuming' if args.resume else 'results ->'} {output_dir}; work folder {workdir}", flush=True)
    try:
        with stop_signals_raise(), LocalDeployment(workdir, tls=args.tls, auth=args.auth) as deployment:
            deployment.start(args.nodes)
            print(f"initmatters.deploy: SuperLink on {deployment.address}, {args.nodes} SuperNodes online; "
                  f"logs in {deployment.logs}", flush=True)
            outcome = deployment.run_app(overrides, output_dir, verbose=args.verbose)
    except Interrupted as stop:
        print(f"initmatters.deploy: stopped by {stop}; every process stopped (logs in {workdir / 'logs'})",
              file=sys.stderr)
        return stop.exit_code
    except (DeployError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if temporary:  # private keys never outlive the deployment; the logs stay until a run succeeds
            shutil.rmtree(workdir / CERTIFICATES_DIR, ignore_errors=True)
    if not outcome.ok:
        why = f"run {outcome.run_id} ended {outcome.status}" if outcome.run_id else outcome.status
        if outcome.details and outcome.details != "N/A":
            why += f" ({outcome.details})"
        missing = "" if outcome.summary_written else f", no {SUMMARY_FILE} in {output_dir}"
        print(f"error: the run did not complete: {why}{missing}; see the log above and {workdir / 'logs'}",
              file=sys.stderr)
        return 1
    if temporary:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"initmatters.deploy: run {outcome.run_id} {outcome.status}; results in {output_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
