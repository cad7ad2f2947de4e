"""Edge: Flower processes started and stopped by this project (SuperLink, `flwr run`).

Every process is started in its own session and stopped by PID (SIGTERM to its group, then
SIGKILL), also on Ctrl-C or failure, so nothing is left behind. The Flower environment
variables are set here so that no user has to.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TextIO

from initmatters_core.results import pid_alive

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1
DEFAULT_FLWR_HOME = PROJECT_ROOT / ".flwr"

# Offline, reproducible Flower runs: no `uv sync` per run, no telemetry, no update check.
FLOWER_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment plus FLOWER_ENV (user values win), FLWR_HOME, and this
    interpreter's bin/ first on PATH: Flower starts flower-superexec and friends by bare name,
    which fails when the venv is not activated (e.g. `make test`)."""
    env = {**FLOWER_ENV, **os.environ}
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra or {})
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of `pid` (read from /proc, so Linux only)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        kids = children.get(frontier.pop(), [])
        found += kids
        frontier += kids
    return found


def processes_with_flwr_home(workdir: Path) -> list[int]:
    """PIDs of live processes (other than this one) whose FLWR_HOME lies under `workdir`.

    Flower starts SuperExec and app processes in sessions of their own; when their parent dies
    first (a killed SuperLink), they are re-parented and no longer found through the tree.
    """
    prefix = str(workdir.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            variables = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in variables:
            if item.startswith(b"FLWR_HOME="):
                home = item[len(b"FLWR_HOME="):].decode(errors="replace")
                if home == prefix or home.startswith(prefix + os.sep):
                    found.append(int(entry.name))
                break
    return found


is_alive = pid_alive  # True while a PID exists and is not a zombie


def terminate_pids(pids: list[int], timeout: float = 15.0) -> None:
    """SIGTERM every live pid, wait up to `timeout`, then SIGKILL whatever is left."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        living = [pid for pid in pids if is_alive(pid)]
        if not living:
            return
        for pid in living:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(is_alive(pid) for pid in living):
            time.sleep(0.1)


def stop_process(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop `process` and all its descendants: SIGTERM, then SIGKILL whatever is left.

    Flower's SuperLink starts its SuperExec and app processes in sessions of their own, so
    signalling the process group alone would leave them running for a while. Our own child is
    is a zombie until waited for, so a thread reaps it while we wait.
    """
    tree = [process.pid, *descendants(process.pid)]
    reaper = threading.Thread(target=process.wait, daemon=True)
    reaper.start()
    terminate_pids(tree, timeout)
    reaper.join(timeout=1.0)


def die_with_parent() -> None:
    """SIGTERM this process when its parent dies (Linux prctl PR_SET_PDEATHSIG); called in a child
    before exec, or first thing in a worker.

    A launcher that is SIGKILLed can stop nothing itself; its SuperLink and `flwr run` then stop
    themselves (and, through Flower's own parent monitors, what they started), so nothing listens
    after its run. Where prctl is not available this does nothing. Linux counts the *thread*
    that started the child as its parent: start a process from a thread that outlives it.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP) turned into an exception, so every `with` unwinds."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP."""
        return 128 + self.signum


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block SIGINT, SIGTERM and SIGHUP raise `Interrupted` (in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupted(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, raise_interrupted) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def managed_process(command: Sequence[str], env: Mapping[str, str], log_path: Path | None = None,
                    cwd: Path | None = None, pipe_output: bool = False) -> Iterator[subprocess.Popen]:
    """Start `command` in a new session; always stop it (by PID) when the block exits.

    Output goes to `log_path` when given, to text pipes (process.stdout, process.stderr) with
    pipe_output, else to this process's stdout/stderr.
    """
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    log_handle = open(log_path, "ab") if log_path else None  # noqa: SIM115
    pipe = subprocess.PIPE if pipe_output else None
    try:
        process = subprocess.Popen(list(command), env=dict(env), stdout=log_handle or pipe,
                                   stderr=subprocess.STDOUT if log_handle else pipe, text=pipe_output,
                                   errors="replace" if pipe_output else None,
                                   start_new_session=True, cwd=cwd, preexec_fn=die_with_parent)
        try:
            yield process
        finally:
            stop_process(process)
    finally:
        if log_handle:
            log_handle.close()


def wait_for_health(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Block until http://127.0.0.1:<port>/health answers, or raise if the process died or timed out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {process.returncode} during start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"flower-superlink did not answer on port {port} within {timeout:g}s")


@contextmanager
def simulation_superlink(flwr_home: Path) -> Iterator[dict[str, str]]:
    """A private simulation SuperLink on free ports; yields the env that makes `flwr run` use it.

    `flwr run` with the local connection reuses any SuperLink answering on
    FLWR_LOCAL_SUPERLINK_HTTP_API_PORT, so pointing that variable at ours keeps runs isolated
    from other SuperLinks on this machine and lets us stop exactly the process we started.
    """
    http_port, control_port = free_port(), free_port()
    env = flower_env(flwr_home, {
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
    })
    runtime_dir = flwr_home / "local-superlink"
    command = [
        venv_script("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
        "--control-api-address", f"127.0.0.1:{control_port}", "--host", "127.0.0.1", "--port", str(http_port),
        "--disable-runtime-dependency-installation",
    ]
    with managed_process(command, env, log_path=runtime_dir / "superlink.log") as process:
        wait_for_health(http_port, process)
        yield env


RAY_STARTUP_TIMEOUT = "timed out during startup"  # Ray's node start-up wait (30 s, fixed in Ray) ran out


def ray_startup_timed_out(error: BaseException) -> bool:
    """True when `error` (or an exception it was raised from) is Ray's node start-up timeout.

    On a loaded machine Ray's raylet can miss its fixed 30 s registration window; nothing has run
    then, so starting the simulation once more is safe.
    """
    seen: BaseException | None = error
    while seen is not None:
        if RAY_STARTUP_TIMEOUT in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def venv_script(name: str) -> str:
    """A console script of this interpreter's environment (works without an activated venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def flwr_run(project_dir: Path, env: Mapping[str, str], run_config: Mapping[str, str | bool],
             federation_config: Mapping[str, int | str] | None = None, connection: str | None = None,
             drop_line: Callable[[str], bool] | None = None, prefix: Sequence[str] = ()) -> int:
    """`flwr run <project> [connection] --run-config ... --stream`, output passed through; its exit code.

    drop_line: a line of its stdout or stderr for which this is True is not passed on (the
    others are, to the same stream, as they come).
    `prefix` runs the command elsewhere (e.g. `ip netns exec NAME`, on the SuperLink's host).
    Note: `flwr run --stream` exits 0 even when the run failed; callers check the results.
    """
    command = [*prefix, venv_script("flwr"), "run", str(project_dir)]
    if connection:
        command.append(connection)
    command += ["--run-config", " ".join(f"{key}={json.dumps(value)}" for key, value in run_config.items())]
    if federation_config:
        command += ["--federation-config", " ".join(f"{key}={value}" for key, value in federation_config.items())]
    command.append("--stream")
    if drop_line is None:
        with managed_process(command, env) as process:
            return process.wait()
    return run_filtered(command, env, drop_line)


def run_filtered(command: Sequence[str], env: Mapping[str, str], drop_line: Callable[[str], bool]) -> int:
    """Run `command` (a managed_process) passing on its stdout and stderr lines, as they come and to
    the same streams, except those for which drop_line is True; its exit code."""
    with managed_process(command, env, pipe_output=True) as process:
        assert process.stdout is not None and process.stderr is not None
        copiers = [threading.Thread(target=_copy_lines, args=(source, target, drop_line), daemon=True)
                   for source, target in ((process.stdout, sys.stdout), (process.stderr, sys.stderr))]
        for copier in copiers:
            copier.start()
        code = process.wait()
        for copier in copiers:
            copier.join(timeout=5.0)
        return code


def _copy_lines(source: IO[str], target: TextIO, drop_line: Callable[[str], bool]) -> None:
    """Copy the lines of `source` to `target` as they come, except those `drop_line` drops."""
    for line in source:
        if not drop_line(line):
            target.write(line)
            target.flush()
