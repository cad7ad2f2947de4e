"""How fast a bad setting, --help and --cfg job answer, against importing torch and Flower.

Usage (from the checkout, venv active):

    python benchmarks/validation_time.py            # 5 repetitions of each command
    python benchmarks/validation_time.py --repeat 9

Each command runs as a fresh process (what a user waits for, interpreter start included), in
turns, so a load change hits every command alike. Printed per command: the median and the best
wall time and whether it answered as expected (exit code). For reference, the same for a bare
`import torch, flwr.serverapp` (what answering used to cost). The last line is
`validation time: X s`, the largest median over the project's commands.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

COMMANDS = {
    "run, bad setting": (["-m", "initmatters.run", "heterogeneity.h=1.5"], 2),
    "run --help": (["-m", "initmatters.run", "--help"], 0),
    "run --cfg job": (["-m", "initmatters.run", "--cfg", "job", "strategy=fedadam"], 0),
    "sweep, bad setting": (["-m", "initmatters.sweep", "--multirun", "heterogeneity.h=0,1.5"], 2),
    "deploy, bad setting": (["-m", "initmatters.deploy", "heterogeneity.h=1.5"], 2),
}
REFERENCE = {"import torch, flwr.serverapp": (["-c", "import torch, flwr.serverapp"], 0)}


def timed(arguments: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, *arguments], cwd=REPO, capture_output=True)
    return time.perf_counter() - started, completed.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of each command (default 5)")
    args = parser.parse_args(argv)
    every = {**COMMANDS, **REFERENCE}
    seconds: dict[str, list[float]] = {name: [] for name in every}
    codes: dict[str, set[int]] = {name: set() for name in every}
    for _ in range(args.repeat):
        for name, (arguments, _) in every.items():
            wall, code = timed(arguments)
            seconds[name].append(wall)
            codes[name].add(code)
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {args.repeat} repetitions each")
    for name, (_, expected) in every.items():
        ok = "ok" if codes[name] == {expected} else f"UNEXPECTED exit codes {sorted(codes[name])}"
        print(f"{name:<30} median {statistics.median(seconds[name]):5.2f} s, best {min(seconds[name]):5.2f} s ({ok})")
    print(f"validation time: {max(statistics.median(seconds[name]) for name in COMMANDS):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
