"""The signal-plus-noise data model (Kou et al. 2023; Jhunjhunwala et al. 2025).

An example is x = [x1, x2] with two patches in R^d: x1 = y_hat * mu (the signal) and
x2 = xi ~ N(0, sigma_p^2 (I - mu mu^T / ||mu||^2)) (noise orthogonal to mu). The observed label y
is y_hat flipped with probability p. Every array is a pure function of its seed and settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from initmatters_core.seeding import Stream, numpy_rng

SIGNAL_PATCH, NOISE_PATCH = 0, 1


@dataclass(frozen=True)
class SignalNoiseData:
    """A labelled sample of the data model; tensors are float32."""

    features: torch.Tensor  # [n, 2, d]: patch 0 = y_hat * mu, patch 1 = xi
    labels: torch.Tensor  # [n], observed labels y in {-1, +1} (after label noise)
    true_labels: torch.Tensor  # [n], y_hat in {-1, +1}

    @property
    def noise(self) -> torch.Tensor:
        """The noise patches xi, [n, d]."""
        return self.features[:, NOISE_PATCH, :]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def signal_vector(dim: int, signal_norm: float) -> torch.Tensor:
    """mu = ||mu|| e_1, the paper's default signal direction, shape [d]."""
    mu = torch.zeros(dim, dtype=torch.float32)
    mu[0] = signal_norm
    return mu


def sample_examples(
    true_labels: np.ndarray,
    signal: torch.Tensor,
    noise_std: float,
    label_noise: float,
    rng: np.random.Generator,
) -> SignalNoiseData:
    """Draw features and observed labels for the given true labels y_hat in {-1, +1}.

    The noise is projected onto the orthogonal complement of mu, so <xi, mu> = 0 (up to
    float rounding; exactly 0 for mu on a coordinate axis).
    """
    y_hat = np.asarray(true_labels, dtype=np.int64)
    n, dim = y_hat.shape[0], signal.shape[0]
    mu = signal.double().numpy()
    direction = mu / np.linalg.norm(mu)
    noise = rng.normal(0.0, noise_std, size=(n, dim))
    noise -= np.outer(noise @ direction, direction)
    flips = rng.random(n) < label_noise
    features = np.empty((n, 2, dim))
    features[:, SIGNAL_PATCH, :] = y_hat[:, None] * mu[None, :]
    features[:, NOISE_PATCH, :] = noise
    return SignalNoiseData(
        features=torch.from_numpy(features.astype(np.float32)),
        labels=torch.from_numpy(np.where(flips, -y_hat, y_hat).astype(np.float32)),
        true_labels=torch.from_numpy(y_hat.astype(np.float32)),
    )


def balanced_labels(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly num_samples/2 labels of each sign, in a random order."""
    labels = np.repeat(np.array([1, -1]), [num_samples - num_samples // 2, num_samples // 2])
    return rng.permutation(labels)


def fresh_test_set(
    seed: int, signal: torch.Tensor, noise_std: float, label_noise: float, num_samples: int
) -> SignalNoiseData:
    """The server's fresh balanced test sample; same law as training, own random stream."""
    rng = numpy_rng(seed, Stream.TEST)
    return sample_examples(balanced_labels(num_samples, rng), signal, noise_std, label_noise, rng)


def rotated_signal(signal: torch.Tensor, angle_deg: float, norm: float) -> torch.Tensor:
    """`signal` rotated by angle_deg in the plane of e_1 and e_2 (towards e_2), rescaled to `norm`.

    For the default mu = ||mu|| e_1 this is norm (cos a e_1 + sin a e_2): the angle between the
    result and mu is angle_deg. Angle 0 and norm ||mu|| give mu itself, bit for bit.
    """
    theta = math.radians(angle_deg)
    mu = signal.double()
    rotated = mu.clone()
    rotated[0] = math.cos(theta) * mu[0] - math.sin(theta) * mu[1]
    rotated[1] = math.sin(theta) * mu[0] + math.cos(theta) * mu[1]
    return (rotated * (norm / rotated.norm())).to(signal.dtype)


def source_set(
    seed: int, signal: torch.Tensor, noise_std: float, label_noise: float, num_samples: int
) -> SignalNoiseData:
    """The server's balanced pre-training sample: the data model with the source's own mu (`signal`;
    the noise is orthogonal to it), sigma_p and p, from its own SOURCE stream."""
    rng = numpy_rng(seed, Stream.SOURCE)
    return sample_examples(balanced_labels(num_samples, rng), signal, noise_std, label_noise, rng)
