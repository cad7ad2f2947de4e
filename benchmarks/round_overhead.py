"""Per-round overhead of the Flower simulation against a plain in-process PyTorch FedAvg loop.

Usage (from the checkout, venv active):

    python benchmarks/round_overhead.py                        # 10 clients, 5 local steps, 30 rounds
    python benchmarks/round_overhead.py --rounds 30 --clients 10 --local-steps 5
    python benchmarks/round_overhead.py --clients 1000 --fraction 0.1 --rounds 8   # population test

One process times, on the same settings (conf/ composed with fl.local_steps, fl.num_rounds,
fl.num_clients, fl.fraction_train overridden):

(a) the Flower simulation: `flwr.simulation.run_simulation` with `build_server_app` and the
    project's ClientApp; per-round times are the differences of rounds.csv's elapsed_s, with the
    first --warmup rounds left out (actor start-up, first imports);
(b) a plain loop doing the same work: every scheduled client runs
    `tasks.synthetic.task.local_update` (w(0) passed when log.noise_memorization is on, as the
    strategy does), the client weights are averaged in float32 with weights n_k / sum n_k in
    partition-id order (as Flower's FedAvg), then the server computes the alignment report and
    `central_metrics` on its test set. It runs before and after (a), and its per-round time is the
    median over both passes, so a load change on a shared machine hits both sides.

Printed: per-round medians (and means), the start-up cost of the simulation (its wall time minus
R x the steady round time, plus a breakdown), the peak memory of the whole process tree (sum of
RSS read from /proc, sampled every 50 ms, so Ray's raylet/GCS/workers are included) per phase,
and as the LAST line `flower/plain round-time ratio: X.XX` (median Flower round / median plain
round).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Offline, quiet Flower (as tests/conftest.py); must be set before flwr is imported.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# NumPy's OpenBLAS shuts its thread pool down in a pthread_atfork handler. A threaded BLAS call in
# the ServerApp thread (server_setup draws the test set with `noise @ direction`) that overlaps a
# fork in ray.init (Ray starts its processes with a preexec_fn, i.e. a real fork) then spins
# forever in exec_blas; this hung one 1000-client run. One OpenBLAS thread avoids the pool (same
# numbers: the actors run with OMP_NUM_THREADS=1 anyway). Must be set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------
# memory of the process tree, from /proc (psutil is not installed)


def process_tree(root: int) -> list[int]:
    """root and all its descendants (Ray's GCS, raylet and workers are children of the driver)."""
    from initmatters.launch import descendants

    return [root, *descendants(root)]


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages (torch's libraries in every actor) counted once overall."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def tree_rss(root: int) -> tuple[int, int]:
    """(sum of RSS over the tree, number of processes)."""
    pids = process_tree(root)
    return sum(rss_bytes(pid) for pid in pids), len(pids)


class MemorySampler(threading.Thread):
    """Samples the summed RSS (every interval) and PSS (every pss_every-th sample) of this process
    tree; `phase(name)` starts a new peak."""

    def __init__(self, interval_s: float = 0.1, pss_every: int = 10) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.pss_every = pss_every
        self.peaks: dict[str, tuple[int, int]] = {}
        self.pss_peaks: dict[str, int] = {}
        self._phase = "start"
        self._count = 0
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def phase(self, name: str) -> None:
        with self._lock:
            self._phase = name
        self._sample(with_pss=True)

    def _sample(self, with_pss: bool = False) -> None:
        pids = process_tree(os.getpid())
        total = sum(rss_bytes(pid) for pid in pids)
        pss = sum(pss_bytes(pid) for pid in pids) if with_pss else 0
        with self._lock:
            best = self.peaks.get(self._phase, (0, 0))
            if total > best[0]:
                self.peaks[self._phase] = (total, len(pids))
            self.pss_peaks[self._phase] = max(pss, self.pss_peaks.get(self._phase, 0))

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self._count += 1
            self._sample(with_pss=self._count % self.pss_every == 0)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self._sample(with_pss=True)


# ---------------------------------------------------------------------------------------------
# the two sides


def check_client_data(settings, setup, how_many: int = 3) -> None:
    """The clients trained by local_update hold the synthetic task's partition.client_dataset data.

    local_update memoizes the data per process (tasks.synthetic.task.cached_client_dataset); this
    checks the first scheduled clients against the reference function, outside the timing.
    """
    from initmatters_core.tasks.synthetic.partition import client_dataset
    from initmatters_core.tasks.synthetic.task import cached_client_dataset as cached

    num_clients = settings.fl.num_clients
    signal = setup.artifacts["signal.pt"]
    for k in setup.schedule[0][:how_many]:
        expected = client_dataset(settings.data, settings.heterogeneity, settings.seed, k, num_clients, signal)
        got = cached(settings.data, settings.heterogeneity, settings.seed, k, num_clients)
        if not (torch.equal(expected.features, got.features) and torch.equal(expected.labels, got.labels)):
            raise RuntimeError(f"client {k}: cached data differ from partition.client_dataset's")


def plain_fedavg(settings, setup, num_rounds: int) -> tuple[list[float], torch.Tensor]:
    """The plain in-process FedAvg loop; returns (seconds per round, final global weight)."""
    from initmatters_core.tasks.synthetic.task import local_update

    num_clients = settings.fl.num_clients
    check_client_data(settings, setup)
    init_state = setup.init_state if settings.log.noise_memorization else None
    weight = setup.init_state["weight"].clone()
    times = []
    for server_round in range(1, num_rounds + 1):
        started = time.perf_counter()
        updates = [
            local_update(settings, k, num_clients, {"weight": weight}, init_state, server_round)
            for k in setup.schedule[server_round - 1]
        ]
        total = sum(update.num_examples for update in updates)
        average = None
        for update in updates:
            term = update.state["weight"].to(torch.float32) * (update.num_examples / total)
            average = term if average is None else average.add_(term)
        weight = average
        setup.central_metrics({"weight": weight})  # test error and alignment, as the server does
        times.append(time.perf_counter() - started)
    return times, weight


def flower_simulation(backend: str, settings, resolved_yaml: str, output_dir: Path, backend_config: dict,
                      pull_interval: float | None, workers: int | None) -> dict:
    """One run on `backend` (inline: initmatters.inline; ray: Flower's run_simulation); returns wall
    time, per-round elapsed_s and file timestamps."""
    called = time.time()
    if backend == "inline":
        from initmatters.inline import run_inline

        run_inline(settings, resolved_yaml, output_dir, workers)
    else:
        ray_simulation(settings, resolved_yaml, output_dir, backend_config, pull_interval)
    returned = time.time()
    if not (output_dir / "summary.json").exists():
        raise RuntimeError(f"the simulation did not complete: {output_dir}")
    with open(output_dir / "rounds.csv", newline="") as handle:
        elapsed = [float(row["elapsed_s"]) for row in csv.DictReader(handle)]
    summary = json.loads((output_dir / "summary.json").read_text())
    return {
        "called": called,
        "returned": returned,
        "elapsed": elapsed,  # round 0 .. R, seconds since the RoundLog started
        "server_started": (output_dir / "config.yaml").stat().st_mtime,
        "rounds_done": (output_dir / "model_final.pt").stat().st_mtime,
        "summary_written": (output_dir / "summary.json").stat().st_mtime,
        "server_wall_s": summary["wall_time_s"],
    }


def ray_simulation(settings, resolved_yaml: str, output_dir: Path, backend_config: dict,
                   pull_interval: float | None) -> None:
    """Flower's simulation engine: run_simulation with the project's ServerApp and ClientApp."""
    from flwr.simulation import run_simulation

    from client_app.app import app as client_app
    from server_app.app import build_server_app

    if pull_interval is None:
        server_app = build_server_app(settings, resolved_yaml, output_dir)
    else:  # what-if: the same run_federated with a shorter Grid polling interval (InMemoryGrid)
        from flwr.serverapp import Grid, ServerApp

        from server_app.experiment import run_federated

        server_app = ServerApp()

        @server_app.main()
        def main(grid: Grid, context) -> None:
            if hasattr(grid, "pull_interval"):
                grid.pull_interval = pull_interval
            run_federated(grid, settings, resolved_yaml, output_dir)

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=settings.fl.num_clients,
                   backend_config=backend_config)


# ---------------------------------------------------------------------------------------------


def steady(values: list[float], warmup: int) -> list[float]:
    kept = values[warmup:]
    return kept if kept else values


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.1f} ms"


def fmt_mb(value: int) -> str:
    return f"{value / 2**20:7.0f} MiB"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="fl.num_rounds (default 30)")
    parser.add_argument("--clients", type=int, default=10, help="fl.num_clients, K (default 10)")
    parser.add_argument("--local-steps", type=int, default=10, help="fl.local_steps, tau (default 10)")
    parser.add_argument("--backends", default="ray,inline",
                        help="comma-separated backends to time, in this order (default ray,inline: the last one's "
                             "ratio is the last line)")
    parser.add_argument("--workers", type=int, default=None,
                        help="inline backend: client worker processes (default: one per CPU, at most one per client)")
    parser.add_argument("--fraction", type=float, default=1.0, help="fl.fraction_train (default 1.0)")
    parser.add_argument("--warmup", type=int, default=3, help="first rounds left out of the steady state")
    parser.add_argument("--num-cpus", type=float, default=1.0,
                        help="backend_config client_resources num_cpus (default 1: one actor per core)")
    parser.add_argument("--inline-bytes", type=int, default=0,
                        help="Ray objects up to this size travel inline with the call instead of through the "
                             "object store (backend_config init_args _system_config "
                             "max_direct_call_object_size); 0 = Ray's default (100 KiB)")
    parser.add_argument("--pull-interval", type=float, default=None,
                        help="what-if: set the InMemoryGrid pull interval (Flower default 0.1 s)")
    parser.add_argument("--driver-threads", type=int, default=1,
                        help="torch.set_num_threads in this process (the ServerApp's central evaluation and the "
                             "plain loop); default 1, as every client actor; 0 = torch's default (one per core)")
    parser.add_argument("--overrides", default="", help="extra Hydra overrides, e.g. 'init=pretrained'")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where the simulation writes its results (default: a temporary folder)")
    parser.add_argument("--skip-plain", action="store_true", help="time only the Flower simulation")
    parser.add_argument("--plain-rounds", type=int, default=None,
                        help="rounds of each plain pass (default: --rounds)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from initmatters.compose import load_settings, split_overrides
    from initmatters_core.tasks.synthetic.task import server_setup

    if args.driver_threads > 0:
        torch.set_num_threads(args.driver_threads)
    overrides = [
        f"fl.local_steps={args.local_steps}",
        f"fl.num_rounds={args.rounds}",
        f"fl.num_clients={args.clients}",
        f"fl.fraction_train={args.fraction}",
        "log.plots=false",
        *split_overrides(args.overrides),
    ]
    settings, resolved_yaml = load_settings(overrides)
    setup = server_setup(settings)
    sampled = [len(clients) for clients in setup.schedule]
    backend_config: dict = {"client_resources": {"num_cpus": args.num_cpus, "num_gpus": 0.0}}
    if args.inline_bytes > 0:
        backend_config["init_args"] = {"_system_config": {
            "max_direct_call_object_size": args.inline_bytes,
            "task_rpc_inlined_bytes_limit": max(args.inline_bytes, 10 * 2**20),
        }}

    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = [name for name in backends if name not in ("inline", "ray")]
    if unknown or not backends:
        raise SystemExit(f"error: --backends={args.backends} is invalid: allowed a comma-separated list of inline, ray")

    sampler = MemorySampler()
    sampler.start()
    baseline_rss, _ = tree_rss(os.getpid())

    plain_times: list[float] = []
    plain_rounds = args.plain_rounds or args.rounds
    if not args.skip_plain:
        sampler.phase("plain")
        times, plain_final = plain_fedavg(settings, setup, plain_rounds)
        plain_times += steady(times, args.warmup)

    runs = {}
    for backend in backends:
        sampler.phase(backend)
        with tempfile.TemporaryDirectory(prefix="round_overhead_") as scratch:
            output_dir = (args.output_dir / backend if args.output_dir else Path(scratch) / "run").resolve()
            runs[backend] = flower_simulation(backend, settings, resolved_yaml, output_dir, backend_config,
                                              args.pull_interval, args.workers)
            runs[backend]["final"] = torch.load(output_dir / "model_final.pt", weights_only=True)["weight"]

    if not args.skip_plain:
        sampler.phase("plain-after")  # Ray's processes may still be exiting: not the plain loop's peak
        times, _ = plain_fedavg(settings, setup, plain_rounds)
        plain_times += steady(times, args.warmup)
    sampler.stop()

    print()
    print(f"settings: K={settings.fl.num_clients} clients, {statistics.mean(sampled):g} sampled per round, "
          f"tau={settings.fl.local_steps}, d={settings.data.dim}, m={settings.model.filters_per_class}, "
          f"n={settings.data.samples_per_client}, rounds={settings.fl.num_rounds}, "
          f"noise_memorization={settings.log.noise_memorization}")
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads in driver); ray backend_config={backend_config}"
          + (f", grid pull_interval={args.pull_interval}" if args.pull_interval is not None else ""))
    plain_median = statistics.median(plain_times) if plain_times else None
    if plain_median is not None:
        print(f"plain round (steady, 2 x {plain_rounds - args.warmup} rounds): median {fmt_ms(plain_median)}, "
              f"mean {fmt_ms(statistics.mean(plain_times))}, min {fmt_ms(min(plain_times))}, "
              f"max {fmt_ms(max(plain_times))}; peak RSS {fmt_mb(sampler.peaks.get('plain', (0, 0))[0])}, "
              f"PSS {fmt_mb(sampler.pss_peaks.get('plain', 0))}")
    ratios = {}
    for backend, run in runs.items():
        elapsed = run["elapsed"]
        round_times = [b - a for a, b in zip(elapsed, elapsed[1:], strict=False)]
        flower_steady = steady(round_times, args.warmup)
        median = statistics.median(flower_steady)
        total_s = run["returned"] - run["called"]
        round0_at = run["rounds_done"] - (elapsed[-1] - elapsed[0])
        peak, processes = sampler.peaks.get(backend, (0, 0))
        print(f"[{backend}] round (steady, rounds {args.warmup + 1}..{len(round_times)}): median {fmt_ms(median)}, "
              f"mean {fmt_ms(statistics.mean(flower_steady))}, min {fmt_ms(min(flower_steady))}, "
              f"max {fmt_ms(max(flower_steady))}; per sampled client {fmt_ms(median / statistics.mean(sampled))}")
        print(f"[{backend}] start-up and teardown: {total_s - median * settings.fl.num_rounds:.2f} s "
              f"(wall {total_s:.2f} s - {settings.fl.num_rounds} x steady round); "
              f"call -> round 0 evaluated {round0_at - run['called']:.2f} s, "
              f"results written -> return {run['returned'] - run['summary_written']:.2f} s")
        print(f"[{backend}] peak memory: RSS sum {fmt_mb(peak)} over {processes} processes, "
              f"PSS {fmt_mb(sampler.pss_peaks.get(backend, 0))} (before both: RSS {fmt_mb(baseline_rss)})")
        if plain_median is not None and plain_rounds == settings.fl.num_rounds:
            difference = float((run["final"] - plain_final).abs().max())
            print(f"[{backend}] final model vs plain: max |difference| {difference:.3g}"
                  f"{' (bit-identical)' if torch.equal(run['final'], plain_final) else ''}")
        if plain_median is not None:
            ratios[backend] = median / plain_median
    if len(runs) > 1:
        first, *others = list(runs)
        for other in others:
            same = torch.equal(runs[first]["final"], runs[other]["final"])
            print(f"final model, {first} vs {other}: {'bit-identical' if same else 'DIFFERENT'}")
    for backend, ratio in ratios.items():
        print(f"round-time ratio ({backend} / plain): {ratio:.2f}")
    if ratios:
        last = list(ratios)[-1]
        print(f"round-time ratio: {ratios[last]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
