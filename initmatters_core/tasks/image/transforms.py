"""Training augmentation with torchvision.transforms.v2, applied to mini-batches of tensors.

Inputs are the normalised float tensors of `datasets.to_tensors` ([B, C, H, W]); evaluation
uses no transform. CIFAR-sized and larger images get the standard random crop (zero padding of
size/8 pixels, i.e. 4 on CIFAR-10 and 8 on TinyImageNet; zero is the mean pixel after
normalisation) and a horizontal flip; digits get none (a flipped digit is another glyph, and
8x8 images have no room to crop).

v2 transforms draw one set of random parameters per call, so `BatchAugment` applies the
transform to each image of a batch separately. Its randomness comes from a torch.Generator
(e.g. the LOCAL_BATCHES stream): each batch forks torch's CPU RNG, seeds it from the generator
and restores it, so runs are reproducible and the global RNG is untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from torchvision.transforms import v2

from initmatters_core.tasks.image.datasets import DATASETS

BatchTransform = Callable[[torch.Tensor], torch.Tensor]


def train_augmentation(name: str) -> v2.Transform | None:
    """The per-image training augmentation of dataset `name` (None for digits)."""
    size = DATASETS[name].image_size
    if size < 32:
        return None
    return v2.Compose([v2.RandomCrop(size, padding=size // 8), v2.RandomHorizontalFlip(p=0.5)])


class BatchAugment:
    """Apply a per-image v2 transform to every image of a batch [B, C, H, W], reproducibly."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], generator: torch.Generator | None = None):
        self.transform = transform
        self.generator = generator

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[0] == 0:
            return batch
        if self.generator is None:
            return self._apply(batch)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):  # v2 draws its parameters on the CPU RNG
            torch.manual_seed(seed)
            return self._apply(batch)

    def _apply(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in batch])


def make_batch_augment(name: str, generator: torch.Generator | None = None) -> BatchAugment | None:
    """`BatchAugment` of dataset `name`'s training augmentation, or None when it has none."""
    transform = train_augmentation(name)
    return None if transform is None else BatchAugment(transform, generator)


def attach_train_augmentation(model: nn.Module, augment: BatchTransform) -> RemovableHandle:
    """Run `augment` on the input of every forward pass made in training mode.

    A forward pre-hook: the state dict is unchanged, `model.eval()` switches it off, and
    `handle.remove()` detaches it. This lets the project's one loop,
    `initmatters_core.training.train_steps`, train with augmentation as it is (it calls model.train()
    before its steps and evaluates in eval mode); a `transform` argument of train_steps would be
    the explicit alternative.
    """

    def hook(module: nn.Module, args: tuple) -> tuple | None:
        if not module.training:
            return None
        return (augment(args[0]), *args[1:])

    return model.register_forward_pre_hook(hook)
