"""Models for the image experiments: torchvision ResNet18 and the multi-class patch CNN.

- `resnet18(num_classes, norm, cifar_stem)`: torchvision's ResNet18; `cifar_stem` replaces the
  7x7 stride-2 stem and its max-pool by a 3x3 stride-1 conv (the usual CIFAR-sized variant);
  `norm="group"` swaps every BatchNorm for GroupNorm (32 groups, fewer where the channel count
  requires), as FL pre-training studies do, since BatchNorm statistics are unreliable under
  non-IID clients.
- `load_imagenet_weights(model, path)`: torchvision's IMAGENET1K_V1 ResNet18 weights from a local
  state-dict file or, without one, from torchvision's download (or its cache); a one-line
  `WeightsUnavailableError` when neither works.
- `PatchCNN`: the paper's two-layer ReLU CNN generalised to C classes over non-overlapping image
  patches (see its docstring); for C = 2 its cross-entropy equals the paper's logistic loss on
  f = F_0 - F_1.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn import functional

from initmatters_core.settings import SettingError
from initmatters_core.tasks.image.settings import NORMS

MAX_GROUPS = 32
IMAGENET_WEIGHTS_URL = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0


class WeightsUnavailableError(SettingError):
    """Pre-trained weights can be neither read from a file nor downloaded; one-line message."""


def group_count(channels: int, max_groups: int = MAX_GROUPS) -> int:
    """The largest number of groups <= max_groups that divides `channels`."""
    return next(groups for groups in range(min(max_groups, channels), 0, -1) if channels % groups == 0)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_count(channels), channels)


def resnet18(
    num_classes: int, norm: str = "batch", cifar_stem: bool = False, *, in_channels: int = 3, seed: int | None = None
) -> torchvision.models.ResNet:
    """torchvision ResNet18 with `num_classes` outputs; see the module docstring.

    `in_channels` != 3 (e.g. 1 for digits) replaces the stem conv accordingly. With `seed`, the
    random initialization is drawn from torch.manual_seed(seed) without touching the global RNG.
    """
    if norm not in NORMS:
        raise SettingError(f"model.norm={norm!r} is invalid: allowed {'|'.join(NORMS)}")
    norm_layer = nn.BatchNorm2d if norm == "batch" else _group_norm
    with _seeded(seed):
        model = torchvision.models.resnet18(weights=None, num_classes=num_classes, norm_layer=norm_layer)
        if cifar_stem:
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if cifar_stem or in_channels != 3:  # torchvision's own init of conv layers
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


@contextmanager
def _seeded(seed: int | None):
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class WeightsReport:
    """What `load_imagenet_weights` did: loaded and skipped tensors of the model."""

    source: str  # the file, or the download URL
    loaded: int  # model tensors taken from the weights
    skipped: tuple[str, ...]  # model tensors kept as initialised (shape differs or absent)
    unused: tuple[str, ...]  # tensors of the weights with no place in the model


def load_imagenet_weights(model: nn.Module, path: str | Path | None = None) -> WeightsReport:
    """Copy ImageNet ResNet18 weights into `model` (a `resnet18(...)`) in place.

    From the state-dict file `path` (torch.save of a torchvision ResNet18 state dict, optionally
    wrapped in {"state_dict": ...}), or without it torchvision's IMAGENET1K_V1 weights (its cache
    or a download). Every tensor whose name and shape match is copied; the others keep their
    initialization: the classifier `fc` when num_classes != 1000, the stem conv with
    `cifar_stem` or in_channels != 3. With norm="group" the BatchNorm affine weights are copied
    into the GroupNorm affine weights and the running statistics are dropped (an approximation:
    torchvision ships no GroupNorm ImageNet weights). Raises `WeightsUnavailableError` (one line)
    when no weights can be had or they are not a ResNet18's.
    """
    if path is not None and str(path) != "":
        state, source = _read_state_dict(Path(path)), str(path)
    else:
        state, source = _download_state_dict(), IMAGENET_WEIGHTS_URL
    own = model.state_dict()
    usable = {key: value for key, value in state.items() if key in own and tuple(value.shape) == tuple(own[key].shape)}
    backbone = [key for key in own if key.startswith("layer") and key.endswith("conv1.weight")]
    if not backbone or any(key not in usable for key in backbone):
        raise WeightsUnavailableError(
            f"init.path={source}: not the state dict of a torchvision ResNet18 ({len(usable)} of its {len(state)} "
            f"tensors fit this model); save one with torch.save(torchvision.models.resnet18(...).state_dict(), path)"
        )
    model.load_state_dict(usable, strict=False)
    return WeightsReport(
        source=source,
        loaded=len(usable),
        skipped=tuple(key for key in own if key not in usable),
        unused=tuple(key for key in state if key not in usable),
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailableError(
            f"init.path={path}: no such file; download {IMAGENET_WEIGHTS_URL} on a machine with internet "
            f"and pass init.path=<file>"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise WeightsUnavailableError(
            f"init.path={path}: not a loadable state dict ({type(error).__name__}: {_one_line(error)})"
        ) from None
    return _unwrap(state, str(path))


def _unwrap(state: object, source: str) -> dict[str, torch.Tensor]:
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise WeightsUnavailableError(f"init.path={source}: not a state dict (a mapping of names to tensors)")
    return {str(key).removeprefix("module."): value for key, value in state.items()}


def _download_state_dict() -> dict[str, torch.Tensor]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)  # torch.hub's urlopen has no timeout of its own
    try:
        state = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # URLError, timeouts, hash mismatch, a corrupt cache
        raise WeightsUnavailableError(
            f"ImageNet weights: no local file (init.path is not set) and the download of {IMAGENET_WEIGHTS_URL} "
            f"failed ({type(error).__name__}: {_one_line(error)}); download it on a machine with internet and "
            f"pass init.path=<file>"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return _unwrap(state, IMAGENET_WEIGHTS_URL)


def _one_line(error: object, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Non-overlapping patches of images [N, C, H, W] as [N, P, C * p * p], P = (H / p) (W / p).

    A patch vector is ordered (channel, row, column), like a flattened conv kernel.
    """
    n, channels, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"model.patch_size={patch_size} must divide the image size {height}x{width}")
    patches = images.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)  # [N, C, h, w, p, p]
    patches = patches.permute(0, 2, 3, 1, 4, 5)
    return patches.reshape(n, -1, channels * patch_size * patch_size)


class PatchCNN(nn.Module):
    """The paper's two-layer ReLU CNN for C classes over non-overlapping image patches.

    F_c(x) = (1/m) sum_{r=1..m} sum_p ReLU(<w_{c,r}, x_p>), logits = [F_0, ..., F_{C-1}], trained
    with cross-entropy. x_p are the P non-overlapping patch_size x patch_size patches of the image
    (all channels, `patchify`); the only parameter is `weight`, shape [C, m, patch_dim] with
    patch_dim = in_channels * patch_size^2, the m filters of class c in row c, shared across
    patches (the "convolution"); the second layer (1/m per class) is fixed. Random init
    w_{c,r} ~ N(0, init_std^2 I) from `generator` (torch's global RNG if None).
    """

    def __init__(
        self, num_classes: int, patch_size: int, in_channels: int, filters_per_class: int, *,
        init_std: float = 0.01, generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        for key, value in (("model.num_classes", num_classes), ("model.patch_size", patch_size),
                           ("model.in_channels", in_channels), ("model.filters_per_class", filters_per_class)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SettingError(f"{key}={value!r} is invalid: allowed a positive integer")
        self.patch_size = patch_size
        dim = in_channels * patch_size * patch_size
        weight = torch.randn(num_classes, filters_per_class, dim, generator=generator) * init_std
        self.weight = nn.Parameter(weight)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def filters_per_class(self) -> int:
        return int(self.weight.shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [N, C] of images [N, in_channels, H, W]."""
        patches = patchify(images, self.patch_size)  # [N, P, D]
        n, num_patches, dim = patches.shape
        filters = self.weight.reshape(-1, dim)  # [C m, D]
        activations = functional.relu(patches.reshape(n * num_patches, dim) @ filters.T)
        per_filter = activations.reshape(n, num_patches, self.num_classes, self.filters_per_class).sum(dim=1)
        return per_filter.mean(dim=2)
