"""Named, independent random streams derived from one experiment seed.

Each consumer (a client's data, the test set, the initial weights, ...) gets its own stream
keyed by (seed, stream, index), so changing one part of an experiment (say the initialization)
never shifts the random numbers of another (the client data): runs that differ only in init
see the same data, which makes paired comparisons exact.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch


class Stream(IntEnum):
    """Identifiers of the independent random streams of one experiment."""

    CLIENT_DATA = 1
    TEST = 2
    INIT = 3
    SOURCE = 4
    LABEL_POOL = 5
    PARTITIONER = 6
    LOCAL_BATCHES = 7
    CLIENT_SAMPLING = 8
    PROXY_SPLIT = 9  # image task: the server's proxy share of the train split
    TEST_SUBSET = 10  # image task: data.test_samples > 0
    AUGMENT = 11  # image task: training augmentation of a client's round
    ALIGNMENT_BASIS = 12  # image task: patches of the ResNet first-layer proxy
    POPULATION = 13  # synthetic task: Gaussian draws of the population test error
    CLIENT_SKEW = 14  # synthetic task: which client gets which noise / signal factor


def _entropy(seed: int, stream: Stream, index: tuple[int, ...]) -> list[int]:
    # The index count is part of the key: SeedSequence pads with zeros, so [s, t] and [s, t, 0]
    # would otherwise be the same stream.
    return [seed, int(stream), len(index), *index]


def numpy_rng(seed: int, stream: Stream, *index: int) -> np.random.Generator:
    """A NumPy generator for (seed, stream, index...)."""
    return np.random.default_rng(_entropy(seed, stream, index))


def int_seed(seed: int, stream: Stream, *index: int) -> int:
    """A 63-bit integer seed for (seed, stream, index...), for APIs that take an int."""
    words = np.random.SeedSequence(_entropy(seed, stream, index)).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


def torch_generator(seed: int, stream: Stream, *index: int) -> torch.Generator:
    """A CPU torch.Generator for (seed, stream, index...)."""
    return torch.Generator().manual_seed(int_seed(seed, stream, *index))
