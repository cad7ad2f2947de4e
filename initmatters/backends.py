"""Edge: where a run's or a sweep's clients run, and the options that choose it (one source for
`initmatters-run`, the sweep's single runs and the shared_simulation launcher).

Engines: inline (initmatters.inline, the default), ray (Flower's simulation engine, a private Ray
or a running cluster) and, for `--connection` / hydra.launcher.connection, a Flower connection
(e.g. a deployment). Validation imports neither Flower nor Ray.

(No `from __future__ import annotations` here: the launcher's Hydra config node inherits
LauncherOptions, and OmegaConf needs real annotations, Optional included.)
"""

import math
from dataclasses import dataclass, fields
from typing import Any, Optional

BACKENDS = ("inline", "ray")
LAUNCHER_TARGET = "hydra_plugins.initmatters_launcher.shared_simulation_launcher.SharedSimulationLauncher"

# Measured in benchmarks/round_overhead.py: together these halve a K = 10 round on the Ray engine
# (210 -> 104 ms); neither helps alone. Results are unchanged (transport only).
REPLY_POLL_S = 0.01
RAY_INLINE_BYTES = 1 << 20


@dataclass
class LauncherOptions:
    """hydra.launcher.* options that say where the clients run (defaults: inline, one worker per CPU)."""

    backend: Optional[str] = None  # noqa: UP045  inline|ray; null = inline (or the connection)
    workers: Optional[int] = None  # noqa: UP045  inline: client worker processes; null = one per CPU, 0 = in-process
    connection: Optional[str] = None  # noqa: UP045  a Flower connection name: run each job with `flwr run` there
    client_num_cpus: int = 1  # ray: Ray CPUs per simulated client (1 = one actor per core)
    client_num_gpus: float = 0.0  # ray: per-client GPU resources for simulation (Ray GPU share; 0 = none)
    ray_address: Optional[str] = None  # noqa: UP045  ray: null = a private Ray; auto|HOST:PORT = a running cluster


OPTIONS = tuple(option.name for option in fields(LauncherOptions))


def launcher_options(launcher: Any) -> dict[str, Any]:
    """The options from hydra.launcher when it is the shared_simulation launcher, else (another
    launcher, e.g. submitit's, which runs the task function once per job and declares none of them)
    their defaults."""
    defaults = LauncherOptions()
    ours = launcher.get("_target_") == LAUNCHER_TARGET
    return {name: launcher.get(name, getattr(defaults, name)) if ours else getattr(defaults, name) for name in OPTIONS}


def ray_address_valid(ray_address: Any) -> bool:
    """null, auto, or HOST:PORT (what `ray start --head` prints as the cluster's address)."""
    if ray_address is None or ray_address == "auto":
        return True
    if not isinstance(ray_address, str) or "://" in ray_address or any(char.isspace() for char in ray_address):
        return False
    host, _, port = ray_address.rpartition(":")
    return bool(host) and port.isdigit() and 1 <= int(port) <= 65535


def engine(connection: Any, backend: Any) -> str:
    """What runs the clients: "connection" (a Flower connection), else the backend (null = inline)."""
    return "connection" if connection is not None else backend or "inline"


def launcher_option_problem(connection: Any, client_num_cpus: Any, client_num_gpus: Any, backend: Any = None,
                            workers: Any = None, ray_address: Any = None) -> str | None:
    """The one-line problem with the launcher options (None if they are fine): each value in its
    range, and each option applying to the engine that runs the jobs."""
    if backend is not None and backend not in BACKENDS:
        return f"hydra.launcher.backend={backend!r} is invalid: allowed {'|'.join(BACKENDS)} or null"
    if workers is not None and not (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0):
        return (f"hydra.launcher.workers={workers!r} is invalid: allowed an integer >= 0 (0 = clients in the sweep "
                f"process) or null (one per CPU)")
    if not (isinstance(client_num_cpus, int) and not isinstance(client_num_cpus, bool) and client_num_cpus >= 1):
        return f"hydra.launcher.client_num_cpus={client_num_cpus} is invalid: allowed a positive integer"
    if not (isinstance(client_num_gpus, int | float) and not isinstance(client_num_gpus, bool)
            and math.isfinite(client_num_gpus) and client_num_gpus >= 0):
        return (f"hydra.launcher.client_num_gpus={client_num_gpus} is invalid: allowed a number >= 0 "
                f"(Ray's GPU share per simulated client)")
    if not (connection is None or (isinstance(connection, str) and connection.strip())):
        return (f"hydra.launcher.connection={connection!r} is invalid: allowed null (the shared simulation) "
                f"or the name of a Flower connection")
    if not ray_address_valid(ray_address):
        return (f"hydra.launcher.ray_address={ray_address!r} is invalid: allowed null (a private Ray), auto "
                f"(the cluster RAY_ADDRESS or the last `ray start` here names) or HOST:PORT of a Ray cluster's head")
    if connection is not None and backend is not None:
        return (f"hydra.launcher.backend={backend} does not apply with hydra.launcher.connection={connection} "
                f"(the connection's SuperLink runs the clients): set one of them")
    runs_on = engine(connection, backend)
    if workers is not None and runs_on != "inline":
        return f"hydra.launcher.workers={workers} applies to hydra.launcher.backend=inline only"
    if runs_on == "inline" and client_num_cpus != 1:
        return f"hydra.launcher.client_num_cpus={client_num_cpus} applies to hydra.launcher.backend=ray only"
    if ray_address is not None and runs_on != "ray":
        return f"hydra.launcher.ray_address={ray_address} applies to hydra.launcher.backend=ray only"
    if runs_on == "inline" and client_num_gpus != 0:
        return (f"hydra.launcher.client_num_gpus={client_num_gpus:g} applies to hydra.launcher.backend=ray only "
                f"(inline workers use a GPU directly when fl.device asks for one)")
    return None


def ray_backend_config(client_num_cpus: int, client_num_gpus: float, ray_address: str | None) -> dict[str, Any]:
    """run_simulation's backend_config: Ray resources per simulated client, and which Ray to use.

    Flower's Ray backend calls ray.init(**init_args) and, at the end, ray.shutdown(): that stops a
    Ray it started, and only disconnects from a cluster it joined (the cluster keeps running).
    """
    if ray_address is None:  # a private Ray, even when RAY_ADDRESS is set or a `ray start` cluster runs here
        # Messages (w and w(0), 160 KB each by default) travel inline, not via Ray's object store;
        # no dashboard (its processes cost memory and start-up, and nothing here reads it).
        init_args: dict[str, Any] = {"address": "local", "include_dashboard": False,
                                     "_system_config": {"max_direct_call_object_size": RAY_INLINE_BYTES}}
    else:  # a running cluster's system settings are its own (Ray refuses them from a joining driver)
        init_args = {"address": ray_address}
    return {"client_resources": {"num_cpus": client_num_cpus, "num_gpus": float(client_num_gpus)},
            "init_args": init_args}
