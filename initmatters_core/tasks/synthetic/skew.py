"""Client heterogeneity beyond labels on the synthetic task: each client's noise level and signal strength.

heterogeneity.noise_skew = s multiplies client k's sigma_p by exp(s z_k); heterogeneity.signal_skew = s
multiplies its mu by exp(s z_k) [choice]. The z_k are K evenly spaced numbers standardised to mean 0 and
standard deviation 1, so the factors have geometric mean 1 (the clients' average log noise level or
log signal strength stays the task's) and the standard deviation over clients of log(factor) is s
exactly: the setting is the measure. The z_k are handed to the clients in a seeded permutation
(Stream.CLIENT_SKEW, one stream per kind), so the noise and signal factors are independent of each
other and of label_skew's alternating majority labels. s = 0 gives every factor exactly 1 without
drawing a random number: the client data are those of an unskewed run, bit for bit. Only the
clients' training data are skewed; the test set, the population error and pre-training stay at the
task's law.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from initmatters_core.seeding import Stream, numpy_rng
from initmatters_core.settings import HeterogeneitySettings


class SkewKind(IntEnum):
    """What a skew scales; the index of its Stream.CLIENT_SKEW permutation."""

    NOISE = 0  # sigma_p
    SIGNAL = 1  # mu


@dataclass(frozen=True)
class ClientSkew:
    """One client's factors: its sigma_p is noise * sigma_p, its signal is signal * mu."""

    noise: float = 1.0
    signal: float = 1.0


NO_SKEW = ClientSkew()  # the task's own law


def standardised_spacing(count: int) -> np.ndarray:
    """`count` evenly spaced numbers with mean 0 and standard deviation 1 (ddof 0), float64 [count];
    [0.0] for count = 1."""
    if count == 1:
        return np.zeros(1)
    spaced = np.linspace(-1.0, 1.0, count)
    return spaced / spaced.std()


def skew_factors(spread: float, kind: SkewKind, seed: int, num_clients: int) -> np.ndarray:
    """The factors exp(spread * z_k) of all clients, float64 [num_clients] (client k's in position k);
    exactly 1 everywhere, with no random number drawn, when spread = 0."""
    if spread == 0:
        return np.ones(num_clients)
    permuted = numpy_rng(seed, Stream.CLIENT_SKEW, int(kind)).permutation(standardised_spacing(num_clients))
    return np.exp(spread * permuted)


def all_client_skews(heterogeneity: HeterogeneitySettings, seed: int, num_clients: int) -> list[ClientSkew]:
    """Every client's noise and signal factors (client k's in position k)."""
    noise = skew_factors(heterogeneity.noise_skew, SkewKind.NOISE, seed, num_clients)
    signal = skew_factors(heterogeneity.signal_skew, SkewKind.SIGNAL, seed, num_clients)
    return [ClientSkew(noise=float(n), signal=float(s)) for n, s in zip(noise, signal, strict=True)]


def log_spread(scales: np.ndarray) -> float:
    """Standard deviation over clients (ddof 0) of log(scale): the skew measure of measured per-client
    scales (each relative to the task's sigma_p or ||mu||); 0 for one client."""
    return float(np.std(np.log(np.asarray(scales, dtype=np.float64))))
