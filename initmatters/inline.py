"""Edge: the inline backend, Flower's Grid API served by long-lived client workers (no Ray, no polling).

The ServerApp, the ClientApp, the Message API and the strategy are Flower's own; only the transport
differs from Flower's simulation engine. `InlineGrid.send_and_receive` hands each worker its share of
the round's messages in one batch and returns the replies as soon as the last worker answers, so a
round costs the clients' work plus one round trip per worker (Flower's engine: a 100 ms tick and a
Ray call per message). A client stays on one worker (partition-id modulo the number of workers), so
its data stay cached there for the whole run. Clients are stateless, so one set of workers can serve
every job of a sweep. `workers=0` runs the ClientApp in this process (no child process at all).

Replies are the ClientApp's replies, bit for bit: results equal those of Flower's simulation engine
(tests/test_inline_backend.py checks rounds.csv and the final model).
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from logging import ERROR
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol

from flwr.app import Context, Error, Message, Metadata, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from initmatters.launch import die_with_parent, terminate_pids
from initmatters.protocol import NUM_PARTITIONS_KEY, PARTITION_ID_KEY
from initmatters_core.results import RoundProgress, RunFiles
from initmatters_core.settings import ExperimentSettings
from initmatters_core.tasks import task_module_name

CLIENT_APP = "client_app.app:app"  # as [tool.flwr.app.components] clientapp in pyproject.toml
RUN_ID = 1
FIRST_NODE_ID = 1_000  # node ids of the simulated clients: FIRST_NODE_ID + partition-id (the SuperLink is 1)
WORKER_START_TIMEOUT_S = 600.0  # a worker imports torch and Flower before it is ready; generous for a busy machine

# One request to a client runner: (node id, node config, message).
Item = tuple[int, dict[str, Any], Message]


def load_client_app(reference: str) -> ClientApp:
    """The ClientApp named by "module:attribute"."""
    module_name, _, attribute = reference.partition(":")
    app = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(app, ClientApp):
        raise TypeError(f"{reference} is a {type(app).__name__}, not a flwr ClientApp")
    return app


def default_workers(num_clients: int) -> int:
    """One worker per CPU this process may use, at most one per client."""
    return max(1, min(len(os.sched_getaffinity(0)), num_clients))


class ClientRunner(Protocol):
    """Runs the ClientApp on a batch of messages and returns one reply per message, in order."""

    def run(self, items: Sequence[Item], timeout: float | None) -> list[Message | None]: ...

    def close(self) -> None: ...


class _ClientHost:
    """The ClientApp plus one Context per node (as a SuperNode keeps it across rounds)."""

    def __init__(self, reference: str) -> None:
        self.app = load_client_app(reference)
        self.contexts: dict[int, Context] = {}

    def handle(self, node_id: int, node_config: dict[str, Any], message: Message) -> Message:
        """The ClientApp's reply, or an error reply naming the exception (the strategy skips it)."""
        context = self.contexts.get(node_id)
        if context is None:
            context = Context(RUN_ID, node_id, dict(node_config), RecordDict(), {})
            self.contexts[node_id] = context
        try:
            return self.app(message, context)
        except Exception as error:  # a failing client fails alone, as in Flower's engines
            reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
            log(ERROR, "ClientApp of partition-id %s raised %s", node_config.get(PARTITION_ID_KEY), reason)
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)


class InProcessClients:
    """workers=0: the ClientApp runs in this process, one message after the other (timeout not applied)."""

    def __init__(self, reference: str = CLIENT_APP) -> None:
        self.host = _ClientHost(reference)

    def run(self, items: Sequence[Item], timeout: float | None) -> list[Message | None]:
        return [self.host.handle(node_id, node_config, message) for node_id, node_config, message in items]

    def close(self) -> None:
        self.host.contexts.clear()


def serve(requests: Connection, answers: Connection, host: _ClientHost) -> None:
    """A worker's loop: answer batches of (node id, node config, message) until the server closes its end."""
    answers.send(os.getpid())  # ready
    while True:
        try:
            request = requests.recv()
        except (EOFError, OSError):  # the server closed its end: the run is over
            return
        batch_id, items = request
        answers.send((batch_id, [host.handle(*item) for item in items]))


def zygote_main(reference: str, preload: Sequence[str], fds: Sequence[tuple[int, int]]) -> None:
    """The process the workers are forked from: it imports the ClientApp (torch, Flower) and the
    task modules once, then forks one worker per pipe pair and waits for them.

    A forked worker shares those imports' memory with its siblings (copy on write) instead of
    holding its own copy (about 300 MB each with torch), and starts in milliseconds. The zygote
    holds no thread besides the main one (initmatters sets OPENBLAS_NUM_THREADS=1, and torch
    starts its pools lazily), so forking it is safe.
    """
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the launcher stops us
    host = _ClientHost(reference)
    for module in preload:
        importlib.import_module(module)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # a forked child cannot use a CUDA context
        raise RuntimeError("importing the client app initialized CUDA before the workers were forked: "
                           "move that CUDA call into the ClientApp's functions")
    zygote = os.getpid()
    children = []
    for index, (receive_fd, send_fd) in enumerate(fds):
        child = os.fork()
        if child == 0:  # a worker
            die_with_parent()
            if os.getppid() != zygote:  # the zygote died before the line above
                os._exit(1)
            for other, (other_receive, other_send) in enumerate(fds):
                if other != index:
                    os.close(other_receive)
                    os.close(other_send)
            try:
                serve(Connection(receive_fd, writable=False), Connection(send_fd, readable=False), host)
            finally:
                os._exit(0)
        children.append(child)
    for receive_fd, send_fd in fds:  # the workers' ends: a worker that dies then shows as EOF to the server
        os.close(receive_fd)
        os.close(send_fd)
    for child in children:
        os.waitpid(child, 0)


class ClientWorkers:
    """`count` long-lived worker processes, each running the ClientApp for its share of the clients.

    One `python -m initmatters.inline` process (the zygote, see `zygote_main`; no multiprocessing
    start method re-importing the caller's script) imports everything once and forks the workers;
    each talks to the server over two pipes. A batch goes to every worker that has messages in it;
    a worker that has not answered within the timeout keeps its batch, and its late replies are
    dropped before its next batch (the strategy treats those clients as failed for that round, as
    Flower's engines do). `preload`: modules to import before forking (the task's).
    """

    def __init__(self, count: int, reference: str = CLIENT_APP, env: Mapping[str, str] | None = None,
                 preload: Sequence[str] = ()) -> None:
        if count < 1:
            raise ValueError(f"workers={count} is invalid: allowed an integer >= 1 (0 = in this process)")
        self.requests: list[Connection] = []
        self.answers: list[Connection] = []
        self.worker_pids: list[int] = []
        self.late: list[int] = [0] * count  # per worker: batches sent whose replies are still to be dropped
        self.next_batch = 0
        self.zygote: subprocess.Popen | None = None
        env = {**(os.environ if env is None else env), "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        worker_fds: list[tuple[int, int]] = []
        try:
            for _ in range(count):
                worker_reads, we_write = os.pipe()
                we_read, worker_writes = os.pipe()
                worker_fds.append((worker_reads, worker_writes))
                self.requests.append(Connection(we_write, readable=False))
                self.answers.append(Connection(we_read, writable=False))
            fds_text = ",".join(f"{receive}:{send}" for receive, send in worker_fds)
            self.zygote = subprocess.Popen(
                [sys.executable, "-m", "initmatters.inline", reference, ",".join(preload), fds_text],
                pass_fds=[fd for pair in worker_fds for fd in pair], env=env, stdin=subprocess.DEVNULL)
        except BaseException:
            self.close()
            raise
        finally:
            for pair in worker_fds:
                for fd in pair:
                    os.close(fd)

    @property
    def pids(self) -> list[int]:
        """The workers' PIDs (waits for their start-up)."""
        if not self.worker_pids:
            self._wait_until_ready()
        return list(self.worker_pids)

    def _receive(self, worker: int) -> Any:
        try:
            return self.answers[worker].recv()
        except (EOFError, OSError):
            who = f"PID {self.worker_pids[worker]}" if len(self.worker_pids) > worker else f"#{worker} (starting)"
            raise RuntimeError(f"client worker {who} stopped: the run cannot go on") from None

    def _wait_until_ready(self) -> None:
        """Wait for every worker's start-up (imports), which no message timeout should count."""
        starting = {connection: worker for worker, connection in enumerate(self.answers)}
        pids = [0] * len(self.answers)
        while starting:
            ready = wait(list(starting), timeout=WORKER_START_TIMEOUT_S)
            if not ready:
                raise RuntimeError(f"{len(starting)} client worker(s) did not start within "
                                   f"{WORKER_START_TIMEOUT_S:g}s")
            for connection in ready:
                worker = starting.pop(connection)
                pids[worker] = self._receive(worker)
        self.worker_pids = pids

    def run(self, items: Sequence[Item], timeout: float | None) -> list[Message | None]:
        if not self.worker_pids:
            self._wait_until_ready()
        count = len(self.answers)
        shares: dict[int, list[int]] = {}
        for position, (_, node_config, _) in enumerate(items):
            shares.setdefault(int(node_config[PARTITION_ID_KEY]) % count, []).append(position)
        for worker in shares:
            while self.late[worker]:  # a batch that timed out earlier: its replies are stale
                self._receive(worker)
                self.late[worker] -= 1
        self.next_batch += 1
        batch_id = self.next_batch
        for worker, positions in shares.items():
            self.requests[worker].send((batch_id, [items[position] for position in positions]))
        replies: list[Message | None] = [None] * len(items)
        waiting = {self.answers[worker]: worker for worker in shares}
        while waiting:
            ready = wait(list(waiting), timeout=timeout)
            if not ready:  # out of time: these workers' replies are dropped when they come
                for worker in waiting.values():
                    self.late[worker] += 1
                break
            for connection in ready:
                worker = waiting.pop(connection)
                answered_batch, answers = self._receive(worker)
                if answered_batch != batch_id:
                    raise RuntimeError(f"client worker PID {self.worker_pids[worker]} answered batch "
                                       f"{answered_batch} instead of {batch_id}")
                for position, reply in zip(shares[worker], answers, strict=True):
                    replies[position] = reply
        return replies

    def close(self) -> None:
        """Stop the zygote and every worker by PID (SIGTERM, then SIGKILL): a worker holds nothing to
        save, and its interpreter's shutdown (torch's) would cost seconds."""
        zygote = [self.zygote.pid] if self.zygote is not None else []
        terminate_pids([*self.worker_pids, *zygote], timeout=5.0)
        if self.zygote is not None:
            self.zygote.poll()  # reap it
        for connection in (*self.requests, *self.answers):
            connection.close()
        self.requests, self.answers, self.worker_pids, self.late, self.zygote = [], [], [], [], None


@contextmanager
def client_runner(workers: int, reference: str = CLIENT_APP, env: Mapping[str, str] | None = None,
                  preload: Sequence[str] = ()) -> Iterator[ClientRunner]:
    """Worker processes (workers >= 1, environment `env`, default this one's; `preload`: modules
    they import before they are forked) or this process (workers = 0); always stopped at the end."""
    runner: ClientRunner = (InProcessClients(reference) if workers == 0
                            else ClientWorkers(workers, reference, env, preload))
    try:
        yield runner
    finally:
        runner.close()


class InlineGrid(Grid):
    """Flower's Grid interface over a ClientRunner: `num_nodes` simulated SuperNodes whose node config
    holds partition-id and num-partitions, as in Flower's simulation."""

    def __init__(self, runner: ClientRunner, num_nodes: int) -> None:
        self.runner = runner
        self.node_config = {FIRST_NODE_ID + partition: {PARTITION_ID_KEY: partition, NUM_PARTITIONS_KEY: num_nodes}
                            for partition in range(num_nodes)}
        self._run = Run.create_empty(RUN_ID)
        self._pushed: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return Run(**vars(self._run))

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_config)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Give each message an ID (as a SuperLink does) and keep it until its replies are pulled."""
        message_ids = []
        for message in messages:
            if message.metadata.dst_node_id not in self.node_config:
                raise ValueError(f"no simulated SuperNode has node id {message.metadata.dst_node_id}")
            stamped = _with_message_id(message, uuid.uuid4().hex)
            self._pushed[stamped.metadata.message_id] = stamped
            message_ids.append(stamped.metadata.message_id)
        return message_ids

    def pull_messages(self, message_ids: Iterable[str], timeout: float | None = None) -> Iterable[Message]:
        """Run the pushed messages among `message_ids` on the clients and return their replies."""
        messages = [self._pushed.pop(message_id) for message_id in message_ids if message_id in self._pushed]
        items = [(message.metadata.dst_node_id, self.node_config[message.metadata.dst_node_id], message)
                 for message in messages]
        return [reply for reply in self.runner.run(items, timeout) if reply is not None]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages), timeout=timeout)


def _with_message_id(message: Message, message_id: str) -> Message:
    """The instruction message with its ID set (Message IDs are given by whoever delivers them)."""
    meta = message.metadata
    metadata = Metadata(run_id=meta.run_id, message_id=message_id, src_node_id=meta.src_node_id,
                        dst_node_id=meta.dst_node_id, reply_to_message_id=meta.reply_to_message_id,
                        group_id=meta.group_id, created_at=meta.created_at, ttl=meta.ttl,
                        message_type=meta.message_type, src_task_id=meta.src_task_id, dst_task_id=meta.dst_task_id)
    return Message(content=message.content, metadata=metadata)


def take_server_identity() -> None:
    """Give this process the identity Flower's runtimes give a ServerApp process (instruction
    messages carry its run and node ids)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, SUPERLINK_NODE_ID, 1


def run_server_app(server_app: ServerApp, grid: Grid) -> None:
    """Call the ServerApp on `grid`, as Flower's runtimes do."""
    take_server_identity()
    server_app(grid, Context(RUN_ID, SUPERLINK_NODE_ID, {}, RecordDict(), {}))


def run_inline(settings: ExperimentSettings, resolved_config_yaml: str, output_dir: Path,
               workers: int | None = None, env: Mapping[str, str] | None = None,
               on_round: Callable[[RoundProgress], None] | None = None) -> None:
    """One experiment on the inline backend (an interrupted run in output_dir is resumed);
    workers=None: one per CPU, at most one per client; env: the workers' environment; on_round:
    receives each round's progress instead of the progress line (a live bar)."""
    from server_app.app import build_server_app

    num_clients = settings.fl.num_clients
    server_app = build_server_app(settings, resolved_config_yaml, output_dir,
                                  resume=RunFiles(output_dir).interrupted(), on_round=on_round)
    count = default_workers(num_clients) if workers is None else workers
    with client_runner(count, env=env, preload=[task_module_name(settings)]) as runner:
        run_server_app(server_app, InlineGrid(runner, num_clients))


if __name__ == "__main__":  # the zygote started by ClientWorkers: CLIENT_APP PRELOAD,... RECEIVE:SEND,...
    zygote_main(sys.argv[1], [name for name in sys.argv[2].split(",") if name],
                [tuple(int(fd) for fd in pair.split(":")) for pair in sys.argv[3].split(",")])
