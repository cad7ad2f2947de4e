"""A whole sweep against the same jobs as plain in-process loops, start-up included.

Usage (from the checkout, venv active):

    python benchmarks/sweep_overhead.py                     # 8 jobs, tau = 10, 50 rounds, inline backend
    python benchmarks/sweep_overhead.py --backend ray       # the same on Flower's Ray engine
    python benchmarks/sweep_overhead.py --rounds 10         # a quicker look

One run times, interleaved on the same machine:
(a) the sweep command a user types, `python -m initmatters.sweep --multirun init=random,pretrained
    heterogeneity.h=0,1 seed=0,1 fl.local_steps=10 fl.num_rounds=50` into a temporary folder, as a
    subprocess: wall time from start to exit (imports, composing, workers or Ray, every round, the
    results files and plots), and the peak memory of its process tree (RSS sum and PSS);
(b) the same 8 jobs as plain loops (benchmarks/round_overhead.py's `plain_fedavg`: the same local
    updates, float32 FedAvg in partition order and central metrics every round) in one fresh
    Python process, also timed from start to exit.
The plain side runs before and after the sweep and its mean is used. The last line is
`sweep-time ratio: X` (sweep wall time / plain wall time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from round_overhead import pss_bytes, rss_bytes  # noqa: E402

GRID = {"init": "random,pretrained", "heterogeneity.h": "0,1", "seed": "0,1"}

PLAIN_JOBS = """
import itertools, sys, time
sys.path.insert(0, {benchmarks!r})
import torch
torch.set_num_threads(1)
from round_overhead import plain_fedavg
from initmatters.compose import load_settings
from initmatters_core.tasks import load_task
grid = {grid!r}
for values in itertools.product(*(choices.split(",") for choices in grid.values())):
    overrides = [f"{{key}}={{value}}" for key, value in zip(grid, values)] + {extra!r}
    settings, _ = load_settings(overrides)
    setup = load_task(settings).server_setup(settings)
    plain_fedavg(settings, setup, settings.fl.num_rounds)
"""


def descendants_of(pid: int) -> list[int]:
    from initmatters.launch import descendants

    return [pid, *descendants(pid)]


def run_measured(command: list[str], interval_s: float = 0.2) -> tuple[float, int, int, int]:
    """(wall seconds, peak RSS sum, peak PSS sum, most processes) of `command` and its children."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks = {"rss": 0, "pss": 0, "processes": 0}
    done = threading.Event()

    def sample() -> None:
        count = 0
        while not done.wait(interval_s):
            pids = descendants_of(process.pid)
            peaks["rss"] = max(peaks["rss"], sum(rss_bytes(pid) for pid in pids))
            peaks["processes"] = max(peaks["processes"], len(pids))
            count += 1
            if count % 5 == 0:  # PSS is slower to read
                peaks["pss"] = max(peaks["pss"], sum(pss_bytes(pid) for pid in pids))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, errors = process.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {process.returncode}: {errors[-2000:]}")
    return seconds, peaks["rss"], peaks["pss"], peaks["processes"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("inline", "ray"), default="inline", help="the sweep's backend")
    parser.add_argument("--rounds", type=int, default=50, help="fl.num_rounds (default 50)")
    parser.add_argument("--local-steps", type=int, default=10, help="fl.local_steps, tau (default 10)")
    args = parser.parse_args(argv)
    extra = [f"fl.local_steps={args.local_steps}", f"fl.num_rounds={args.rounds}"]
    plain_command = [sys.executable, "-c", PLAIN_JOBS.format(benchmarks=str(REPO / "benchmarks"), grid=GRID,
                                                             extra=extra)]
    plain = [run_measured(plain_command)]
    with tempfile.TemporaryDirectory(prefix="sweep_overhead_") as scratch:
        sweep_command = [sys.executable, "-m", "initmatters.sweep", "--multirun",
                         *(f"{key}={value}" for key, value in GRID.items()), *extra,
                         f"hydra.sweep.dir={Path(scratch) / 'sweep'}", f"hydra.launcher.backend={args.backend}"]
        sweep = run_measured(sweep_command)
        jobs = len(list(Path(scratch, "sweep").glob("*/summary.json")))
    plain.append(run_measured(plain_command))
    plain_s = statistics.mean(seconds for seconds, *_ in plain)
    mib = 2**20
    print(f"jobs: {jobs} ({' x '.join(f'{key}={value}' for key, value in GRID.items())}), "
          f"tau={args.local_steps}, {args.rounds} rounds; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"plain loops, one process: {plain[0][0]:.1f} s before, {plain[1][0]:.1f} s after; "
          f"peak RSS {max(p[1] for p in plain) / mib:.0f} MiB, PSS {max(p[2] for p in plain) / mib:.0f} MiB")
    print(f"sweep ({args.backend} backend): {sweep[0]:.1f} s; peak RSS sum {sweep[1] / mib:.0f} MiB, "
          f"PSS {sweep[2] / mib:.0f} MiB over up to {sweep[3]} processes")
    print(f"sweep-time ratio: {sweep[0] / plain_s:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
